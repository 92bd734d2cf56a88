"""The `gate` command: serve, workspace and key admin, wallet view, invariant check."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from gate import settings as settings_mod
from gate.settings import Settings, SettingsError

log = logging.getLogger("gate")


def _url_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / "redis" / "url"


def _redis_url(settings: Settings) -> str:
    """The configured Redis, or the private one a running `gate serve` started."""
    if settings.redis_url:
        return settings.redis_url
    path = _url_file(settings)
    if path.exists():
        return path.read_text().strip()
    raise SystemExit(
        "gate: no Redis to talk to: set GATE_REDIS_URL, or start `gate serve` first "
        f"(it writes the URL of its private redis-server to {path})"
    )


def _reload_rates(app: Any, children: list[Any]) -> None:
    """SIGHUP: reload the rate card here and in every worker; a bad card keeps the old one."""
    from gate.api.http import RATES
    from gate.calls.service import RateCardError

    try:
        app[RATES].reload()
    except RateCardError as err:
        log.error("rate card not reloaded, the old one stays: %s", err)
    for child in children:
        if child.pid is not None and child.is_alive():
            os.kill(child.pid, signal.SIGHUP)


async def _serve_process(
    settings: Settings,
    stop: asyncio.Event | None = None,
    children: list[Any] | None = None,
    supervisor: Any = None,
) -> None:
    from aiohttp import web

    from gate.api.protocol import make_runner
    from gate.app import create_app

    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.host,
        settings.port,
        reuse_port=settings.workers > 1,
        backlog=settings.listen_backlog,  # a reconnect storm's SYNs are not dropped at 128
    )
    await site.start()
    log.info("gate listening on http://%s:%d (pid %d)", settings.host, settings.port, os.getpid())
    done = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_rates, app, children or [])
    watch = asyncio.create_task(supervisor.watch()) if supervisor is not None else None
    await done.wait()
    log.info("gate stopping (pid %d)", os.getpid())
    if watch is not None:
        watch.cancel()
        supervisor.terminate()  # the workers drain at the same time as this process
    await runner.cleanup()


def _worker(settings: Settings, parent_pid: int | None = None) -> None:
    import uvloop

    from gate.supervisor import die_with_parent

    if parent_pid is not None:
        die_with_parent(parent_pid)  # never serve the port on after the main process died

    # A SIGHUP forwarded before this worker's loop handles it must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _setup_logging(settings)
    uvloop.run(_serve_process(settings))


def serve(settings: Settings) -> None:
    """Run Gate; with no GATE_REDIS_URL, start and stop a private redis-server (AOF on)."""
    import uvloop

    from gate.store.redis_proc import RedisServer, RedisServerMissing
    from gate.supervisor import PortTaken, Supervisor, claim_port

    try:
        port_lock = claim_port(settings.host, settings.port)
    except PortTaken as err:
        raise SystemExit(f"gate: {err}") from err
    embedded = None
    if not settings.redis_url:
        data = Path(settings.data_dir) / "redis"
        try:
            embedded = RedisServer.start(data, appendonly=True)
        except RedisServerMissing as err:
            raise SystemExit(f"gate: {err}") from err
        log.info(
            "GATE_REDIS_URL is unset: started a private redis-server at %s (AOF in %s); "
            "it stops with gate",
            embedded.url,
            data.resolve(),
        )
        _url_file(settings).write_text(embedded.url + "\n")
        settings = replace(settings, redis_url=embedded.url)
    if not settings.database_url:
        from gate.history.archive import sqlite_url

        embedded_db = sqlite_url(settings.data_dir)
        settings = replace(settings, database_url=embedded_db)
        log.info(
            "GATE_DATABASE_URL is unset: the ledger archive is the SQLite file %s",
            embedded_db[len("sqlite:///") :],
        )
    spawn = multiprocessing.get_context("spawn")

    def start_worker() -> Any:
        child = spawn.Process(target=_worker, args=(settings, os.getpid()), daemon=True)
        child.start()
        return child

    supervisor = Supervisor(start_worker, settings.workers - 1)
    try:
        supervisor.start()
        uvloop.run(_serve_process(settings, children=supervisor.children, supervisor=supervisor))
    finally:
        supervisor.stop()
        port_lock.close()
        if embedded is not None:
            _url_file(settings).unlink(missing_ok=True)
            embedded.stop()
            log.info("private redis-server stopped")


async def _with_services(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    from gate.clock import SystemClock
    from gate.context import Context
    from gate.history.archive import Archive
    from gate.store import redis_client
    from gate.store.scripts import Scripts

    client = await redis_client.connect(_redis_url(settings))
    archive = None
    try:
        scripts = Scripts(client)
        await scripts.load()
        database_url = _database_url(settings)
        if database_url:
            archive = await Archive.open(database_url)
        return await work(
            Context(client, scripts, SystemClock(settings.clock_skew_ms), settings, archive=archive)
        )
    finally:
        if archive is not None:
            await archive.close()
        await client.aclose()


def _database_url(settings: Settings) -> str | None:
    """The configured archive, or the embedded SQLite file `gate serve` keeps, if any."""
    from gate.history.archive import sqlite_url

    if settings.database_url:
        return settings.database_url
    embedded = sqlite_url(settings.data_dir)
    return embedded if Path(embedded[len("sqlite:///") :]).exists() else None


def _print(body: Any) -> None:
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")


async def _workspace_create(ctx: Any, name: str, org: str | None) -> int:
    from gate.tenancy.organizations import Organizations
    from gate.tenancy.workspaces import Workspaces

    if org is not None:
        await Organizations(ctx).get(org)  # "no such organization" before anything is made
    from gate.calls.rating import load_rate_card
    from gate.wallet.plans import Plans

    card = load_rate_card(ctx.settings.rates)
    plans = Plans(ctx, lambda: card)
    default_plan = plans.default_plan()  # checked before anything is made
    if default_plan is not None:
        plans.resolve(default_plan)
    created = await Workspaces(ctx).create(name, org)
    if org is not None:
        await Organizations(ctx).add_workspace(org, created.id)
    if default_plan is not None:  # as POST /v1/workspaces does
        await plans.assign(created.id, default_plan, None)
    _print({"id": created.id, "name": created.name, "key": created.key, "role": "admin"})
    return 0


async def _organization_create(ctx: Any, name: str) -> int:
    from gate.tenancy.organizations import Organizations

    org = await Organizations(ctx).create(name)
    _print({"id": org.id, "name": org.name})
    return 0


async def _key_create(ctx: Any, workspace_id: str, role: str) -> int:
    from gate.tenancy.auth import Role
    from gate.tenancy.workspaces import Workspaces

    key, key_id = await Workspaces(ctx).create_key(workspace_id, Role.parse(role))
    _print({"key": key, "role": role, "id": key_id})
    return 0


async def _wallet_show(ctx: Any, workspace_id: str) -> int:
    from gate.tenancy.workspaces import Workspaces
    from gate.wallet.payments import SandboxProvider
    from gate.wallet.service import Wallet

    workspaces = Workspaces(ctx)
    view = await Wallet(ctx, workspaces, SandboxProvider()).view(workspace_id)
    _print({"workspace_id": workspace_id, **view.to_json(None)})
    return 0


async def _check(ctx: Any, workspace_id: str | None) -> int:
    from gate.history.check import check_all

    problems, checked = await check_all(
        ctx.client, [workspace_id] if workspace_id else None, ctx.archive
    )
    for problem in problems:
        sys.stdout.write(f"MISMATCH {problem}\n")
    sys.stdout.write(
        f"checked {checked} workspace(s): "
        + ("all invariants hold\n" if not problems else f"{len(problems)} problem(s)\n")
    )
    return 1 if problems else 0


async def _export(ctx: Any, workspace_id: str, out: str, filters: list[str]) -> int:
    from multidict import MultiDict

    from gate.history import ledger, query
    from gate.tenancy.workspaces import Workspaces

    params: MultiDict[str] = MultiDict()
    for item in filters:
        name, sep, value = item.partition("=")
        if not sep:
            sys.stderr.write(f"gate: --filter {item!r}: write it as NAME=VALUE, like type=call\n")
            return 2
        params.add(name, value)
    allowed = tuple(p for p in query.FILTER_PARAMS if p != "workspace_id")
    query.check_params(params, allowed)
    chosen = query.filters(params)
    await Workspaces(ctx).get(workspace_id)
    written = 0
    sink = _open_out(out)
    try:
        async for chunk in ledger.csv_chunks(ctx.client, workspace_id, chosen, ctx.archive):
            written += sink.write(chunk)
    finally:
        if sink is not sys.stdout:
            sink.close()
    sys.stderr.write(f"exported {workspace_id} to {out} ({written} characters)\n")
    return 0


def _open_out(out: str) -> Any:
    """stdout for "-", else the file (newline="" so the CSV's own line ends are kept)."""
    return sys.stdout if out == "-" else open(out, "w", encoding="utf-8", newline="")


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates each of its plugins at INFO as it is imported.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gate", description="Real-time prepaid balance gate for live calls."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the HTTP service")
    for name, var in settings_mod.ENV.items():
        flag = "--" + name.replace("_", "-").replace("-micros", "-usd")
        serve_p.add_argument(flag, dest=name, metavar=var, help=f"overrides ${var}")
    ws = sub.add_parser("workspace", help="workspace admin").add_subparsers(
        dest="verb", required=True
    )
    create = ws.add_parser("create", help="create a workspace; prints its id and admin key")
    create.add_argument("name")
    create.add_argument("--organization-id")
    orgs = sub.add_parser("organization", help="organizations").add_subparsers(
        dest="verb", required=True
    )
    orgs.add_parser("create", help="create an organization; prints its id").add_argument("name")
    key = sub.add_parser("key", help="API keys").add_subparsers(dest="verb", required=True)
    key_create = key.add_parser("create", help="create a key; prints it once")
    key_create.add_argument("workspace")
    key_create.add_argument("role", choices=["org_admin", "admin", "switch", "agent"])
    wallet = sub.add_parser("wallet", help="wallet view").add_subparsers(dest="verb", required=True)
    wallet.add_parser("show", help="balance, reserved, settings").add_argument("workspace")
    export = sub.add_parser(
        "export", help="write a workspace's usage history as CSV (the API's export, to a file)"
    )
    export.add_argument("workspace")
    export.add_argument("-o", "--out", default="-", help="file to write (default: stdout)")
    export.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a filter of GET /v1/usage/export, e.g. --filter type=call --filter month=2026-11",
    )
    check = sub.add_parser(
        "check", help="verify the ledger/balance invariants across Redis and the archive"
    )
    check.add_argument("workspace", nargs="?", help="one workspace id (default: all)")
    sub.add_parser(
        "switch-config", help="print the Kamailio config for this Gate (--help)", add_help=False
    )
    sub.add_parser(
        "loadtest", help="run the load-test harness (see python -m loadtest --help)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["switch-config"]:
        from gate.switch.config import main as switch_config_main

        return switch_config_main(argv[1:])
    if argv[:1] == ["loadtest"]:
        from loadtest.__main__ import main as loadtest_main

        return loadtest_main(argv[1:])
    args = build_parser().parse_args(argv)
    overrides = {n: getattr(args, n, None) for n in settings_mod.ENV}
    try:
        settings = settings_mod.load(**overrides)
    except SettingsError as err:
        sys.stderr.write(f"gate: invalid setting: {err}\n")
        return 2
    _setup_logging(settings)
    if args.command == "serve":
        from gate.calls.rating import RateCardError, load_rate_card

        try:  # before any process starts: a bad card is a bad setting, not a traceback
            load_rate_card(settings.rates)
        except RateCardError as err:
            sys.stderr.write(f"gate: invalid setting: GATE_RATES={settings.rates!r}: {err}\n")
            return 2
        serve(settings)
        return 0
    work: Callable[[Any], Awaitable[int]]
    if args.command == "workspace":
        work = lambda ctx: _workspace_create(ctx, args.name, args.organization_id)  # noqa: E731
    elif args.command == "organization":
        work = lambda ctx: _organization_create(ctx, args.name)  # noqa: E731
    elif args.command == "key":
        work = lambda ctx: _key_create(ctx, args.workspace, args.role)  # noqa: E731
    elif args.command == "wallet":
        work = lambda ctx: _wallet_show(ctx, args.workspace)  # noqa: E731
    elif args.command == "export":
        work = lambda ctx: _export(ctx, args.workspace, args.out, args.filter)  # noqa: E731
    else:
        work = lambda ctx: _check(ctx, args.workspace)  # noqa: E731
    from redis.exceptions import RedisError

    from gate.errors import GateError

    try:
        return asyncio.run(_with_services(settings, work))
    except GateError as err:  # e.g. no such workspace: one line, not a traceback
        sys.stderr.write(f"gate: {err.message}\n")
        return 1
    except RedisError as err:  # the message names host and port, never a password
        sys.stderr.write(f"gate: Redis error: {err}\n")
        return 1
