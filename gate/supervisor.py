"""The processes of `gate serve`: one owner per port, workers restarted, workers never orphaned.

With GATE_WORKERS=N the main process serves too and runs N-1 worker processes sharing the
port (SO_REUSEPORT). This module makes that safe to operate:

- `claim_port`: the main process holds an abstract unix socket named after host:port for its
  lifetime, so a second `gate serve` on the same port refuses to start (SO_REUSEPORT would
  otherwise let it bind beside the first and share its traffic with another config). The
  kernel frees the name when the process dies, however it dies: no stale lock file.
- `Supervisor`: a worker that dies is started again after a back-off that doubles while
  workers keep dying (0.5 s up to 30 s) and resets once one has lived a minute; each death
  and restart is one log line.
- `die_with_parent`: a worker asks the kernel (PR_SET_PDEATHSIG) for SIGTERM when the main
  process dies, so a `kill -9` of the main never leaves a worker serving the port alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger("gate.supervisor")


class PortTaken(RuntimeError):
    """Another gate owns this host:port."""


def claim_port(host: str, port: int) -> socket.socket:
    """Hold the name of host:port for this process; raise PortTaken if another gate holds it."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0gate-serve:{host}:{port}")
    except OSError as err:
        lock.close()
        raise PortTaken(
            f"another gate is serving {host}:{port} already; stop it first, or give this one "
            "another GATE_PORT"
        ) from err
    return lock


def die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the process that started this one dies (Linux); exit if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


class Supervisor:
    """Starts `count` workers and starts again any that dies, with back-off."""

    def __init__(
        self,
        start_worker: Callable[[], BaseProcess],
        count: int,
        *,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
        poll_s: float = 0.2,
    ) -> None:
        self.start_worker = start_worker
        self.count = count
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self.poll_s = poll_s
        self.children: list[BaseProcess] = []  # the live list: SIGHUP forwarding reads it
        self.restarts = 0
        self._started: dict[int, float] = {}  # id(process) -> monotonic start
        self._backoff_s = first_backoff_s
        self._stopping = False

    def start(self) -> None:
        for _ in range(self.count):
            self._spawn()

    def _spawn(self) -> BaseProcess:
        child = self.start_worker()
        self.children.append(child)
        self._started[id(child)] = time.monotonic()
        return child

    async def watch(self) -> None:
        """Run until cancelled: replace every worker that exits."""
        while not self._stopping:
            await asyncio.sleep(self.poll_s)
            for child in list(self.children):
                if child.is_alive() or self._stopping:
                    continue
                self.children.remove(child)
                lived_s = time.monotonic() - self._started.pop(id(child), time.monotonic())
                if lived_s >= self.healthy_after_s:
                    self._backoff_s = self.first_backoff_s
                delay = self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
                log.error(
                    "worker pid %s exited with code %s after %.1f s; starting another in %.1f s",
                    child.pid,
                    child.exitcode,
                    lived_s,
                    delay,
                )
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                new = self._spawn()
                self.restarts += 1
                log.info("worker pid %s started in place of pid %s", new.pid, child.pid)

    def terminate(self) -> None:
        """Restart nothing more; SIGTERM every worker (each drains like the main process)."""
        self._stopping = True
        for child in self.children:
            if child.pid is not None and child.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0) -> None:
        """terminate(), then wait for the workers."""
        self.terminate()
        for child in self.children:
            child.join(timeout_s)
