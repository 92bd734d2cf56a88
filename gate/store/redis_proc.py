"""Start and stop private redis-server processes (single node or a small cluster) as children."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "RedisClusterProcs",
    "RedisServer",
    "RedisServerError",
    "RedisServerMissing",
    "find_redis_cli",
    "find_redis_server",
    "free_port",
]

_MACHINE_REDIS_PORT = 6379
# Redis Cluster listens on port + 10000 for its bus, so a node port must leave room for it.
_CLUSTER_BUS_OFFSET = 10000
_MAX_CLUSTER_PORT = 65535 - _CLUSTER_BUS_OFFSET
_LOG_TAIL_LINES = 30


class RedisServerMissing(RuntimeError):
    """redis-server (or redis-cli) is not installed."""


class RedisServerError(RuntimeError):
    """A private redis-server did not start, or a cluster did not form."""


class _PortTaken(RedisServerError):
    """The chosen port was taken by someone else between choosing and binding it."""


def _find_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RedisServerMissing(
            f"{name} not found on PATH; install it: apt-get install -y redis-server, "
            "or set GATE_REDIS_URL to an existing Redis"
        )
    return found


def find_redis_server() -> str:
    """Return the path of redis-server, or raise RedisServerMissing saying what to do."""
    return _find_binary("redis-server")


def find_redis_cli() -> str:
    """Return the path of redis-cli (needed only to create a cluster)."""
    return _find_binary("redis-cli")


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """Return a currently free TCP port on 127.0.0.1, never 6379 or its cluster bus port.

    With cluster_bus=True the port is low enough that port + 10000 exists, and that bus port
    is free too. The port is only free *now*: RedisServer.start retries on a lost race.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port in (_MACHINE_REDIS_PORT, _MACHINE_REDIS_PORT + _CLUSTER_BUS_OFFSET):
            continue
        if cluster_bus and (
            port > _MAX_CLUSTER_PORT or not _port_bindable(port + _CLUSTER_BUS_OFFSET)
        ):
            continue
        return port
    raise RedisServerError("could not find a free TCP port on 127.0.0.1")


def _death_signal_preexec() -> Callable[[], None] | None:
    """Build a preexec_fn that makes the child get SIGTERM when its parent dies (Linux only).

    libc is loaded here, in the parent, because loading libraries between fork and exec is
    unsafe. SIGTERM lets redis-server flush its AOF before exiting.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        # The parent may have died before prctl took effect; then nobody would stop us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _tail(path: Path, start: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """Last lines of path written after byte offset start (the log is shared across restarts)."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command to 127.0.0.1:port and return the raw reply payload.

    Status, error and bulk replies only (all this module needs); an error reply is returned
    with its leading '-' so callers can tell LOADING from PONG without a client library.
    """
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as f:
            line = f.readline()
            if not line.endswith(b"\r\n"):
                raise ConnectionError("connection closed before a reply")
            kind, rest = line[:1], line[1:-2]
            if kind in (b"+", b"-", b":"):
                return line[:-2] if kind == b"-" else rest
            if kind == b"$":
                size = int(rest)
                if size < 0:
                    return b""
                data = f.read(size + 2)
                if len(data) != size + 2:
                    raise ConnectionError("connection closed inside a bulk reply")
                return data[:-2]
            raise ConnectionError(f"unexpected reply type {line!r}")


def _info_field(info: bytes, field: str) -> str | None:
    prefix = field.encode() + b":"
    for raw in info.splitlines():
        if raw.startswith(prefix):
            return raw[len(prefix) :].decode().strip()
    return None


class RedisServer:
    """A redis-server running in the foreground as a child of this process, on 127.0.0.1."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, data_dir: Path, log_start: int = 0
    ) -> None:
        self._proc: subprocess.Popen[bytes] | None = proc
        self._log_start = log_start
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self.pid = proc.pid
        self.data_dir = data_dir
        self.log_path = data_dir / "redis.log"

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        cluster: bool = False,
        extra: list[str] | None = None,
        timeout: float = 10.0,
    ) -> RedisServer:
        """Start redis-server with its data and log in data_dir and wait until it answers PING.

        Without an explicit port a free one is picked, and picked again if another process
        grabs it first. The child gets SIGTERM if the thread that started it exits (that is
        how PR_SET_PDEATHSIG works), so call this from a long-lived thread such as the main one.
        timeout bounds the wait for PING; raise it when a large AOF must be loaded first.
        """
        binary = find_redis_server()
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if port is not None else 5
        last_error: RedisServerError | None = None
        for _ in range(attempts):
            chosen = port if port is not None else free_port(cluster_bus=cluster)
            try:
                return cls._start_once(
                    binary,
                    data_dir,
                    chosen,
                    appendonly=appendonly,
                    appendfsync=appendfsync,
                    cluster=cluster,
                    extra=extra or [],
                    timeout=timeout,
                )
            except _PortTaken as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    @classmethod
    def _start_once(
        cls,
        binary: str,
        data_dir: Path,
        port: int,
        *,
        appendonly: bool,
        appendfsync: str,
        cluster: bool,
        extra: list[str],
        timeout: float,
    ) -> RedisServer:
        log_path = data_dir / "redis.log"
        argv = [
            binary,
            "--daemonize", "no",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data_dir),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", appendfsync,
            "--logfile", str(log_path),
            "--protected-mode", "yes",
        ]  # fmt: skip
        if cluster:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
        argv += extra
        # Config errors are printed to stderr before the logfile is opened, so stdout and
        # stderr go to the same log (append mode, as redis-server itself writes it).
        with open(log_path, "ab") as log:
            log_start = log.tell()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=data_dir,
                preexec_fn=_death_signal_preexec(),
                # Own session: a Ctrl-C meant for the parent must not stop Redis before the
                # parent has finished its own graceful shutdown.
                start_new_session=True,
            )
        server = cls(proc, port, data_dir, log_start)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                tail = _tail(self.log_path, self._log_start)
                exc_type = _PortTaken if "Address already in use" in tail else RedisServerError
                raise exc_type(
                    f"redis-server on port {self.port} exited with code {code} during startup; "
                    f"last lines of {self.log_path}:\n{tail}"
                )
            try:
                reply = _command(self.port, "PING", timeout=1.0)
                # Something else may own the port (a race with another test); make sure the
                # server that answers is the one we started.
                info = _command(self.port, "INFO", "server") if reply == b"PONG" else b""
            except OSError as exc:
                last = str(exc)
            else:
                if reply == b"PONG":
                    if _info_field(info, "process_id") == str(proc.pid):
                        return
                    raise _PortTaken(f"port {self.port} is answered by another redis-server")
                if reply.startswith(b"-NOAUTH") and proc.poll() is None:
                    # A requirepass from `extra` hides INFO; the server is up, trust the pid.
                    return
                last = reply.decode(errors="replace")  # e.g. -LOADING while reading the AOF
            time.sleep(0.02)
        tail = _tail(self.log_path, self._log_start)
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within {timeout:g} s "
            f"(last: {last}); last lines of {self.log_path}:\n{tail}"
        )

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: Redis flushes the AOF and exits), then SIGKILL if it hangs.

        Safe to call more than once. SIGTERM rather than SHUTDOWN NOSAVE: same effect with
        `--save ""`, and it still works when `extra` set a password or renamed commands.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} pid={self.pid} {state}>"


class RedisClusterProcs:
    """A Redis Cluster of N masters (no replicas) made of private redis-server children."""

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers
        self.ports = [s.port for s in servers]
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}"

    @classmethod
    def start(cls, base_dir: Path, masters: int = 3, *, timeout: float = 30.0) -> RedisClusterProcs:
        """Start `masters` nodes in base_dir/node<i>, join them into one cluster, wait until ok."""
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        cli = find_redis_cli()
        base_dir = Path(base_dir).resolve()
        servers: list[RedisServer] = []
        try:
            for i in range(masters):
                servers.append(
                    RedisServer.start(base_dir / f"node{i}", appendonly=False, cluster=True)
                )
            self = cls(servers)
            self._create(cli, timeout)
            self._wait_ok(timeout)
        except BaseException:
            for server in servers:
                server.stop()
            raise
        return self

    def _create(self, cli: str, timeout: float) -> None:
        argv = [cli, "--cluster", "create"]
        argv += [f"127.0.0.1:{p}" for p in self.ports]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(
                f"redis-cli --cluster create timed out after {timeout:g} s"
            ) from exc
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")
            raise RedisServerError(f"redis-cli --cluster create failed:\n{out[-3000:]}")

    def _wait_ok(self, timeout: float) -> None:
        # cluster_state:ok on one node is not enough: every node must see all slots and all
        # peers, or a client that starts from another node gets MOVED loops or CLUSTERDOWN.
        deadline = time.monotonic() + timeout
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            for port in self.ports:
                try:
                    info = _command(port, "CLUSTER", "INFO")
                except OSError as exc:
                    states[port] = str(exc)
                    continue
                state = _info_field(info, "cluster_state")
                known = _info_field(info, "cluster_known_nodes")
                slots = _info_field(info, "cluster_slots_ok")
                states[port] = f"state={state} known_nodes={known} slots_ok={slots}"
            if all(
                s == f"state=ok known_nodes={len(self.ports)} slots_ok=16384"
                for s in states.values()
            ) and len(states) == len(self.ports):
                return
            time.sleep(0.05)
        raise RedisServerError(f"cluster did not become ok within {timeout:g} s: {states}")

    def stop(self) -> None:
        """Stop every node; safe to call more than once."""
        for server in self.servers:
            server.stop()

    @property
    def running(self) -> bool:
        """True while every node is alive."""
        return all(s.running for s in self.servers)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisClusterProcs {self.url} ports={self.ports}>"
