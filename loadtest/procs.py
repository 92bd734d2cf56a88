"""Child processes of a run: a private Gate (`gate serve`) and the bare aiohttp baseline."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from gate.store.redis_proc import free_port
from loadtest.wire import Client, WireError


class ProcessError(RuntimeError):
    """A child did not start or did not become ready; the message carries its log tail."""


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn giving the child SIGTERM when the harness dies (Linux), so none is left."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cpu_seconds(root: int | None, name: str = "gate") -> dict[str, float]:
    """CPU seconds so far of Gate's process tree, its redis-server, postgres and this harness.

    Gate (or what `name` says) is `root` and its descendants, a redis-server among them
    counted apart; postgres is every process of that name on the machine.
    """
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)
    tree = set() if root is None else {root}
    grew = bool(tree)
    while grew:
        found = {pid for pid, (ppid, _, _) in table.items() if ppid in tree} - tree
        tree |= found
        grew = bool(found)
    out = {name: 0.0, "redis": 0.0, "postgres": 0.0}
    for pid, (_, comm, cpu) in table.items():
        if pid in tree:
            out["redis" if comm.startswith("redis-server") else name] += cpu
        elif comm.startswith("postgres"):
            out["postgres"] += cpu
    times = os.times()
    out["harness"] = times.user + times.system
    return out


class Child:
    """A subprocess with its log in a file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent(),
                start_new_session=True,  # a Ctrl-C reaches the harness, which stops it in order
            )

    async def wait_ready(self, port: int, path: str, timeout_s: float) -> None:
        """Poll GET `path` until it answers 200, the child exits, or time runs out."""
        client = Client("127.0.0.1", port, limit=1, timeout_s=2.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer yet"
        try:
            while loop.time() < deadline:
                if self.proc.poll() is not None:
                    raise ProcessError(
                        f"{self.proc.args!r} exited with code {self.proc.returncode}; "
                        f"last lines of {self.log}:\n{_tail(self.log)}"
                    )
                try:
                    resp = await client.request("GET", path)
                except (WireError, TimeoutError) as err:
                    last = str(err)
                else:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}: {resp.body[:200]!r}"
                await asyncio.sleep(0.05)
        finally:
            await client.close()
        self.stop()
        raise ProcessError(
            f"not ready within {timeout_s:g} s ({last}); last lines of {self.log}:\n"
            f"{_tail(self.log)}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()


class GateServer:
    """`python -m gate serve` on a free port with its own private redis-server."""

    def __init__(self, child: Child, port: int, platform_key: str, data_dir: Path) -> None:
        self.child = child
        self.pid = child.proc.pid
        self.port = port
        self.platform_key = platform_key
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(
        cls,
        *,
        tick_s: int,
        buffer_s: int,
        grace_s: int,
        workers: int,
        rates: str | None,
        log: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> GateServer:
        for attempt in range(3):  # a free port can be taken before Gate binds it: pick again
            try:
                return await cls._start_once(
                    tick_s, buffer_s, grace_s, workers, rates, log, extra_env or {}
                )
            except ProcessError as err:
                if attempt == 2 or "in use" not in str(err):
                    raise
        raise AssertionError("unreachable")

    @classmethod
    async def _start_once(
        cls,
        tick_s: int,
        buffer_s: int,
        grace_s: int,
        workers: int,
        rates: str | None,
        log: Path,
        extra_env: Mapping[str, str],
    ) -> GateServer:
        # Nothing of the caller's GATE_* may leak in: above all not a GATE_REDIS_URL.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_")}
        data_dir = Path(tempfile.mkdtemp(prefix="gate-loadtest-"))
        platform_key = "lt_" + secrets.token_urlsafe(24)
        port = free_port()
        env.update(
            GATE_HOST="127.0.0.1",
            GATE_PORT=str(port),
            GATE_PLATFORM_KEY=platform_key,
            GATE_WEBHOOK_ALLOW_PRIVATE="1",  # the harness's receiver is on 127.0.0.1
            GATE_DEFAULT_PLAN="none",  # plans only with --plan, assigned by the harness
            GATE_TICK_S=str(tick_s),
            GATE_BUFFER_S=str(buffer_s),
            GATE_INBOUND_GRACE_S=str(grace_s),
            GATE_WORKERS=str(workers),
            GATE_DATA_DIR=str(data_dir),
            GATE_LOG_LEVEL="WARNING",
        )
        if rates:
            env["GATE_RATES"] = rates
        env.update(extra_env)
        child = Child([sys.executable, "-m", "gate", "serve"], env, data_dir, log)
        server = cls(child, port, platform_key, data_dir)
        try:
            await child.wait_ready(port, "/readyz", 60.0)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def redis_url(self) -> str | None:
        """The URL of the private redis-server `gate serve` started (it writes it down)."""
        path = self.data_dir / "redis" / "url"
        return path.read_text().strip() if path.exists() else None

    def stop(self) -> None:
        self.child.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class BareServer:
    """The baseline: `python -m loadtest.bare`, a constant JSON answer on aiohttp + uvloop."""

    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.port = port

    @classmethod
    async def start(cls, log: Path) -> BareServer:
        port = free_port()
        child = Child(
            [sys.executable, "-m", "loadtest.bare", "--port", str(port)],
            os.environ,
            Path.cwd(),
            log,
        )
        await child.wait_ready(port, "/healthz", 30.0)
        return cls(child, port)

    def stop(self) -> None:
        self.child.stop()
