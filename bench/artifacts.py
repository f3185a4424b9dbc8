"""Artifact store: a large file streamed in and out with flat memory (`python -m bench.artifacts`).

Phases (pick with --phases):
  store-local  LocalArtifactStore: put then get SIZE bytes; MiB/s, Python peak (tracemalloc)
               and growth of this process's max RSS
  store-s3     S3ArtifactStore against moto in server mode (real HTTP): the same, plus the
               dedup put of the same bytes (multipart aborted). moto keeps every byte in its
               own memory (≈3x the blob while completing and copying) and is slow, hence
               the separate --s3-size-mib
  api-local    the real embedded stack (`runledger up`'s Supervisor): PUT through MLflow's
               artifact proxy, then GET, streamed by httpx; RSS of the services process
               (API + projector) sampled every 50 ms
  api-s3       the same with RUNLEDGER_ARTIFACT_URI=s3://... on moto

The body is generated (every MiB different) and never held whole, by the client either.
Prints a JSON summary (for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import tempfile
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from runledger.artifacts import ArtifactStore, LocalArtifactStore
from runledger.config import Settings
from runledger.embedded.ports import free_port
from runledger.embedded.supervisor import Supervisor
from tests.support.moto import MotoServer

MIB = 1 << 20
PIECE = 64 * 1024  # what uvicorn hands a request body in


def _body(size: int) -> Iterator[bytes]:
    block = random.Random(size).randbytes(MIB)  # the same bytes on every call: dedup is measured
    sent = 0
    index = 0
    while sent < size:
        mib = (index.to_bytes(8, "big") + block[8:])[: size - sent]
        for start in range(0, len(mib), PIECE):
            yield mib[start : start + PIECE]
        sent += len(mib)
        index += 1


async def _abody(size: int, hasher: Any = None) -> AsyncIterator[bytes]:
    for piece in _body(size):
        if hasher is not None:
            hasher.update(piece)  # what was sent, to check what comes back
        yield piece


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _store_phase(store: ArtifactStore, size: int, *, dedup: bool) -> dict[str, Any]:
    rss_before = _max_rss_mib()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        digest, stored = await store.put_stream(_abody(size))
        put_s = time.perf_counter() - start
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        hasher = hashlib.sha256()
        start = time.perf_counter()
        async for chunk in await store.open(digest):
            hasher.update(chunk)
        get_s = time.perf_counter() - start
        _, get_peak = tracemalloc.get_traced_memory()
        result: dict[str, Any] = {}
        if dedup:
            tracemalloc.reset_peak()
            start = time.perf_counter()
            again = await store.put_stream(_abody(size))
            result["dedup_put_s"] = round(time.perf_counter() - start, 2)
            result["dedup_same_digest"] = again.digest == digest
            result["dedup_put_python_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / MIB, 1)
    finally:
        tracemalloc.stop()
    assert stored == size and "sha256:" + hasher.hexdigest() == digest, "read back differs"
    return {
        "size_mib": size // MIB,
        "put_s": round(put_s, 2),
        "put_mib_s": round(size / MIB / put_s, 1),
        "put_python_peak_mib": round(put_peak / MIB, 1),
        "get_s": round(get_s, 2),
        "get_mib_s": round(size / MIB / get_s, 1),
        "get_python_peak_mib": round(get_peak / MIB, 1),
        "max_rss_growth_mib": round(_max_rss_mib() - rss_before, 1),
        **result,
    }


class RssSampler:
    """Peak RSS of a process (and its children), sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.NoSuchProcess:
                return

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _state_dir() -> Path:
    state = Path(tempfile.mkdtemp(prefix="runledger-bench-artifacts-"))
    state.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    return state


async def _api_phase(size: int, artifact_uri: str) -> dict[str, Any]:
    state = _state_dir()
    supervisor = Supervisor(Settings(state_dir=state, api_port=free_port(), artifact_uri=artifact_uri))
    supervisor.start()
    try:
        key = json.loads(supervisor.connection_file.read_text())["api_key"]
        async with httpx.AsyncClient(
            base_url=supervisor.api_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=600,
            trust_env=False,
        ) as client:
            created = await client.post("/api/v1/runs", json={"experiment_name": "bench-artifacts"})
            created.raise_for_status()
            run = created.json()["run"]["info"]
            url = f"/api/2.0/mlflow-artifacts/artifacts/{run['experiment_id']}/{run['run_id']}/artifacts/big.bin"
            pid = supervisor.services_pid
            assert pid is not None
            sampler = RssSampler(pid)
            baseline = sampler.rss()
            sent = hashlib.sha256()
            with sampler:
                start = time.perf_counter()
                put = await client.put(url, content=_abody(size, sent), headers={"Content-Length": str(size)})
                put_s = time.perf_counter() - start
            put.raise_for_status()
            put_peak = sampler.peak
            sampler = RssSampler(pid)
            hasher = hashlib.sha256()
            with sampler:
                start = time.perf_counter()
                async with client.stream("GET", url) as got:
                    got.raise_for_status()
                    async for chunk in got.aiter_bytes():
                        hasher.update(chunk)
                get_s = time.perf_counter() - start
            assert hasher.digest() == sent.digest(), "downloaded bytes differ from the upload"
            assert got.headers["x-artifact-digest"] == "sha256:" + sent.hexdigest()
    finally:
        supervisor.stop()
        shutil.rmtree(state, ignore_errors=True)
    return {
        "size_mib": size // MIB,
        "put_s": round(put_s, 2),
        "put_mib_s": round(size / MIB / put_s, 1),
        "get_s": round(get_s, 2),
        "get_mib_s": round(size / MIB / get_s, 1),
        "services_rss_before_mib": round(baseline / MIB, 1),
        "services_rss_peak_put_mib": round(put_peak / MIB, 1),
        "services_rss_peak_get_mib": round(sampler.peak / MIB, 1),
    }


async def _main(phases: list[str], size: int, s3_size: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="runledger-bench-blobs-"))
    try:
        if "store-local" in phases:
            results["store-local"] = await _store_phase(LocalArtifactStore(scratch), size, dedup=True)
        if any(p.endswith("s3") for p in phases):
            with MotoServer(scratch / "moto.log") as moto:
                os.environ.update(moto.env)
                from runledger.artifacts.s3 import S3ArtifactStore, s3_client

                s3_client().create_bucket(Bucket="bench-artifacts")
                if "store-s3" in phases:
                    store = S3ArtifactStore("bench-artifacts", "store/", part_size=8 * MIB)
                    results["store-s3"] = await _store_phase(store, s3_size, dedup=True)
                if "api-s3" in phases:
                    results["api-s3"] = await _api_phase(s3_size, "s3://bench-artifacts/api")
        if "api-local" in phases:
            results["api-local"] = await _api_phase(size, "")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", default="store-local,store-s3,api-local,api-s3")
    parser.add_argument("--size-mib", type=int, default=2048, help="local store and API (default 2 GiB)")
    parser.add_argument("--s3-size-mib", type=int, default=512, help="moto phases (moto holds it all in RAM)")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    print(json.dumps(asyncio.run(_main(phases, args.size_mib * MIB, args.s3_size_mib * MIB)), indent=2))


if __name__ == "__main__":
    main()
