"""The Lua script registry: loads `lua/*.lua` once, checks key counts, calls by EVALSHA.

A script file is named `<name>-<number of keys>.lua`; files starting with `_` are includes,
pulled into a script where it says `--!include _file.lua`. The loader derives each script's
name and key count from its file name, so no hand-kept table can drift, and checks the count
on every call. Scripts are loaded at start-up (a syntax error fails the boot) and reloaded
when Redis answers NOSCRIPT (after a SCRIPT FLUSH or a failover).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from gate import metrics

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
    for candidate in (here / "lua", here.parent / "lua"):
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
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[match["name"]] = Script(match["name"], int(match["keys"]), source, sha)
    return scripts


class Scripts:
    """Calls scripts by name on one Redis or Redis Cluster client."""

    def __init__(self, client: Redis | RedisCluster, scripts: dict[str, Script] | None = None):
        self.client = client
        self.scripts = compile_scripts() if scripts is None else scripts

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

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        """Run one script; returns its reply list, whose first item is a Code."""
        script = self.scripts[name]
        if len(keys) != script.num_keys:
            raise ScriptError(f"{name} takes {script.num_keys} keys, got {len(keys)}")
        try:
            reply = await self.client.execute_command(
                "EVALSHA", script.sha, script.num_keys, *keys, *args
            )
        except NoScriptError:
            await self.load()
            reply = await self.client.execute_command(
                "EVALSHA", script.sha, script.num_keys, *keys, *args
            )
        metrics.LUA_CALLS.labels(name, str(reply[0])).inc()
        return list(reply)
