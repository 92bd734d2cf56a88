"""The Lua script registry: loads `lua/*.lua` once, checks key counts, calls by EVALSHA.

A script file is named `<name>-<number of keys>.lua`; files starting with `_` are includes,
pulled into a script where it says `--!include _file.lua`. The loader derives each script's
name and key count from its file name, so no hand-kept table can drift, and checks the count
on every call. Scripts are loaded at start-up (a syntax error fails the boot) and reloaded
when Redis answers NOSCRIPT (after a SCRIPT FLUSH or a failover).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from hiredis import pack_command as _c_pack
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate import metrics
from gate.store import circuit
from gate.store.cluster_circuit import GuardedCluster

_FILE = re.compile(r"^(?P<name>[a-z_]+)-(?P<keys>\d+)\.lua$")
_INCLUDE = re.compile(r"^--!include (?P<file>_[a-z_]+\.lua)\s*$", re.MULTILINE)

Arg = str | int | bytes


class Code(IntEnum):
    """Reply codes shared by every script: 0 success, >0 benign repeats, <0 refusals."""

    OK = 0
    REPEAT = 1
    ENDED = 2
    NO_WORKSPACE = -1
    IDEMPOTENCY_KEY_REUSED = -2
    IN_PROGRESS = -3
    INSUFFICIENT = -4
    NOT_FOUND = -5
    CONCURRENCY_LIMIT = -6
    SUSPENDED = -7
    INVALID_STATE = -8
    BALANCE_LIMIT = -9
    DEADLINE = -10
    HELD = -20  # the platform suspended or closed the workspace (lua/workspace_hold-5.lua)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    num_keys: int
    source: str
    sha: str


class ScriptError(RuntimeError):
    """A script file is malformed or a call does not match its declared key count."""


def lua_dir() -> Path:
    """Where the scripts are: gate/lua in an installed wheel, lua/ beside gate/ in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "lua", here.parent.parent / "lua"):
        if candidate.is_dir():
            return candidate
    raise ScriptError(f"no lua/ directory next to {here}; reinstall the gate package")


def _read_sources() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(lua_dir().glob("*.lua"))}


def compile_scripts(sources: dict[str, str] | None = None) -> dict[str, Script]:
    """Parse file names and resolve includes; raise ScriptError on any malformed file."""
    sources = _read_sources() if sources is None else sources
    scripts: dict[str, Script] = {}
    for filename, text in sorted(sources.items()):
        if filename.startswith("_"):
            continue
        match = _FILE.match(filename)
        if match is None:
            raise ScriptError(f"lua/{filename}: name must be <name>-<number of keys>.lua")

        def include(m: re.Match[str], filename: str = filename) -> str:
            try:
                return sources[m["file"]]
            except KeyError as err:
                raise ScriptError(f"lua/{filename}: include {m['file']} not found") from err

        source = _INCLUDE.sub(include, text)
        for _ in range(8):  # includes may include others (lua/_post.lua pulls in _watch.lua)
            if not _INCLUDE.search(source):
                break
            source = _INCLUDE.sub(include, source)
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[match["name"]] = Script(match["name"], int(match["keys"]), source, sha)
    return scripts


class _Head(tuple[Arg, ...]):
    """EVALSHA, sha, key count and keys, with their RESP encoding made once."""

    packed: bytes


@lru_cache(maxsize=65536)
def _head(sha: str, num_keys: int, keys: tuple[str, ...]) -> _Head:
    head = _Head(("EVALSHA", sha, num_keys, *keys))
    head.packed = b"".join(_bulk(a) for a in head)
    return head


def _bulk(arg: Arg) -> bytes:
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack(head: _Head, args: Sequence[Arg]) -> bytes:
    """One EVALSHA in RESP: hiredis's C packer (half the time of the Python one on a call
    start's 33 arguments), or for what it does not take (a bool, an enum) the Python one,
    which spells those as str() does."""
    try:
        packed: bytes = _c_pack((*head, *args))
    except TypeError:
        return b"".join([b"*%d\r\n" % (len(head) + len(args)), head.packed, *map(_bulk, args)])
    return packed


_Command = tuple[_Head, Sequence[Arg]]
READ_TIMEOUT_S = 10.0  # the longest wait for each reply of a batch; then its connection drops
# Scripts whose callers answer at a deadline of their own, carried in the script's arguments:
# call_start (GATE_START_TIMEOUT_MS). The per-command deadline must not answer for them
# earlier, or the script could still commit after the 503 (a phantom call).
OWN_DEADLINE = frozenset({"call_start", "call_abort"})  # an undo must not give up early


class _AutoPipeline:
    """Sends every script call made in one event-loop iteration as one pipelined write.

    Like ioredis's enableAutoPipelining: a request handler awaits its own reply as usual,
    but the commands of all handlers that ran in the same loop iteration share one write
    and one read pass on one pooled connection, so the cost per call of the Python client
    (connection checkout, syscalls, parsing setup) is paid once per batch. Built on
    redis-py's own connection pool, command packing and hiredis parser.
    """

    MAX_INFLIGHT = 4  # batches on the wire at once; later calls gather into the next one

    def __init__(self, client: Redis) -> None:
        self.pool = client.connection_pool
        self.pending: list[tuple[_Command, asyncio.Future[Any]]] = []
        self.inflight = 0
        self.scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the app's loop, found on first use

    def submit(self, command: _Command) -> asyncio.Future[Any]:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((command, future))
        self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pending and not self.scheduled and self.inflight < self.MAX_INFLIGHT:
            self.scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        if not self.pending or self.inflight >= self.MAX_INFLIGHT:
            return
        batch, self.pending = self.pending, []
        self.inflight += 1
        task = asyncio.ensure_future(self._send(batch))
        _inflight.add(task)
        task.add_done_callback(_inflight.discard)

    async def _send(self, batch: list[tuple[_Command, asyncio.Future[Any]]]) -> None:
        try:
            await self._exchange(batch)
        finally:
            self.inflight -= 1
            self._schedule(asyncio.get_running_loop())

    async def _exchange(self, batch: list[tuple[_Command, asyncio.Future[Any]]]) -> None:
        try:
            conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        except BaseException as err:
            _fail(batch, err)
            return
        # The batch's own deadline restarts at every reply, so a big batch on a busy Redis is
        # not cut but a silent one is. Each caller also waits at most its own deadline
        # (Scripts._evalsha), which is shorter: this one only keeps the stream in sync.
        wait_s = READ_TIMEOUT_S
        try:
            await conn.send_packed_command(b"".join([_pack(*command) for command, _ in batch]))
            # Read straight from the connection's (hiredis) parser under one deadline for the
            # whole batch: error replies come back as exception values, the stream stays in
            # sync, and the per-read timeout scaffolding of read_response() is paid once.
            parser = conn._parser
            last = len(batch) - 1
            async with asyncio.timeout(wait_s) as deadline:
                for i, (_, future) in enumerate(batch):
                    reply = await parser.read_response()
                    if i < last:  # a timer moved per reply is a tenth of a batch's cost
                        deadline.reschedule(asyncio.get_running_loop().time() + wait_s)
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
            circuit.report(conn, None)
        except BaseException as err:
            await conn.disconnect()  # a half-read stream must never be reused
            if isinstance(err, TimeoutError):  # the error any other command gives
                err = RedisTimeoutError(f"no reply from Redis within {wait_s:g} s")
            elif isinstance(err, OSError):
                # A reset socket (Redis killed with our command unread): read_response()
                # would have wrapped it, the parser read directly does not, and a bare
                # OSError is no outage to the circuit and a 500 to the API.
                lost = RedisConnectionError(f"connection to Redis lost: {err}")
                lost.__cause__ = err
                err = lost
            circuit.report(conn, err)
            _fail(batch, err)
            if not isinstance(err, Exception):
                raise
        finally:
            await self.pool.release(conn)


_inflight: set[asyncio.Future[None]] = set()  # keeps batch tasks alive until they finish


def _fail(batch: list[tuple[_Command, asyncio.Future[Any]]], err: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(
                err if isinstance(err, Exception) else ConnectionError("batch cancelled")
            )


class Scripts:
    """Calls scripts by name on one Redis or Redis Cluster client.

    On a single Redis, concurrent calls are pipelined automatically (_AutoPipeline); on a
    cluster each call goes to its slot's node on its own.
    """

    def __init__(self, client: Redis | RedisCluster, scripts: dict[str, Script] | None = None):
        self.client = client
        self.scripts = compile_scripts() if scripts is None else scripts
        self._batch = _AutoPipeline(client) if isinstance(client, Redis) else None
        self._counters: dict[tuple[str, int], Any] = {}
        # The per-command deadline (GATE_REDIS_TIMEOUT_MS) of a pool that has one.
        pool = client.connection_pool if isinstance(client, Redis) else None
        self._wait_s: float | None = pool.connection_kwargs.get("socket_timeout") if pool else None
        self._circuit = pool.circuit if isinstance(pool, circuit.GuardedPool) else None

    async def load(self) -> None:
        """SCRIPT LOAD every script (on every primary of a cluster); fails on syntax errors."""
        for script in self.scripts.values():
            if isinstance(self.client, RedisCluster):
                await self.client.script_load(script.source)  # sent to every primary
            else:
                sha = await self.client.script_load(script.source)
                if sha != script.sha:
                    raise ScriptError(f"{script.name}: Redis returned sha {sha}")

    async def loaded(self) -> bool:
        """True when Redis has every script (for /readyz)."""
        shas = [s.sha for s in self.scripts.values()]
        exists = await self.client.script_exists(*shas)
        return all(exists)

    async def _evalsha(self, command: _Command, name: str = "") -> Any:
        if self._batch is None:
            if isinstance(self.client, GuardedCluster) and name in OWN_DEADLINE:
                return await self.client.execute_command(
                    *command[0], *command[1], own_deadline=True
                )
            return await self.client.execute_command(*command[0], *command[1])
        future = self._batch.submit(command)
        if self._wait_s is None or name in OWN_DEADLINE:
            return await future
        try:
            async with asyncio.timeout(self._wait_s):
                return await future  # on timeout the reply is read and dropped by the batch
        except TimeoutError as err:
            timeout = RedisTimeoutError(f"no reply from Redis within {self._wait_s:g} s")
            if self._circuit is not None:
                self._circuit.failed(timeout)
            raise timeout from err

    def _command(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> _Command:
        script = self.scripts[name]
        if len(keys) != script.num_keys:
            raise ScriptError(f"{name} takes {script.num_keys} keys, got {len(keys)}")
        return (_head(script.sha, script.num_keys, tuple(keys)), args)

    def _counted(self, name: str, reply: Any) -> list[Any]:
        code = int(reply[0])
        counter = self._counters.get((name, code))
        if counter is None:
            counter = self._counters[(name, code)] = metrics.LUA_CALLS.labels(name, str(code))
        counter.inc()
        return list(reply)

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        """Run one script; returns its reply list, whose first item is a Code."""
        command = self._command(name, keys, args)
        try:
            reply = await self._evalsha(command, name)
        except NoScriptError:
            await self.load()  # after SCRIPT FLUSH or a failover to a fresh replica
            reply = await self._evalsha(command, name)
        return self._counted(name, reply)

    def submit(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> asyncio.Future[Any]:
        """`call` as a future that runs on whether or not anyone waits for it (a start that
        gives up waiting still needs its reply). A script with a deadline of its own (see
        OWN_DEADLINE) rides the auto-pipeline's future directly, without a task of its own
        (about 5 µs of a call start); the others, and every cluster call, run `call`."""
        if self._batch is None or name not in OWN_DEADLINE:
            return asyncio.ensure_future(self.call(name, keys, args))
        raw = self._batch.submit(self._command(name, keys, args))
        out: asyncio.Future[Any] = raw.get_loop().create_future()

        def settle(done: asyncio.Future[Any]) -> None:
            if out.done():
                return
            err = asyncio.CancelledError() if done.cancelled() else done.exception()
            if isinstance(err, NoScriptError):  # reload and run again, as call() does
                again = asyncio.ensure_future(self.call(name, keys, args))
                again.add_done_callback(lambda f: _chain(f, out))
            elif err is not None:
                out.set_exception(err)
            else:
                try:
                    out.set_result(self._counted(name, done.result()))
                except Exception as bad:  # a malformed reply: the waiter gets it, as in call()
                    out.set_exception(bad)

        raw.add_done_callback(settle)
        return out


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """Pass a finished future's outcome on to another, unless that one is already done."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (err := source.exception()) is not None:
        target.set_exception(err)
    else:
        target.set_result(source.result())
