"""The `gate` command: serve, workspace and key admin, wallet view, invariant check."""

from __future__ import annotations

import argparse
import asyncio
import gc
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

from gate import __version__
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
    _settle_heap()
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


# Young objects a collection of the youngest generation waits for (CPython's default: 700).
# A call start makes a few dozen container objects that refcounting frees; at 700 the
# collector ran ~40 times a second under load, each pass walking every request in flight.
GC_YOUNG_THRESHOLD = 20_000


def _settle_heap() -> None:
    """Move what the boot made (modules, the app, scripts, the rate card: ~120,000 objects)
    out of the collector's sight, and let the youngest generation grow before it is
    collected. Measured under wrk (issue 22): each full collection walked the boot's objects
    again, 0.3-0.45 s each on the loaded 2-core machine, a stall every request then in flight
    waited out (the p99)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


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
        assert settings.database_url is not None
        _check_archive(settings.database_url)  # before any worker: one line, not N tracebacks
        supervisor.start()
        uvloop.run(_serve_process(settings, children=supervisor.children, supervisor=supervisor))
    finally:
        supervisor.stop()
        port_lock.close()
        if embedded is not None:
            _url_file(settings).unlink(missing_ok=True)
            embedded.stop()
            log.info("private redis-server stopped")


def _check_archive(url: str) -> None:
    """Open (and migrate) the archive once; an unreachable one is one ERROR line and exit 1."""
    import uvloop

    from gate.history.archive import Archive, ArchiveUnreachable

    async def probe() -> None:
        await (await Archive.open(url)).close()

    try:
        uvloop.run(probe())
    except ArchiveUnreachable as err:
        log.error("%s", err)
        raise SystemExit(1) from None


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


def _holds(ctx: Any) -> Any:
    """The operator's holds with the services a close needs, as `gate serve` builds them."""
    from gate.calls.service import Calls, RateBook
    from gate.operator.holds import Holds
    from gate.wallet.numbers import Numbers

    rates = RateBook(ctx.settings.rates)
    return Holds(ctx, Calls(ctx, rates), Numbers(ctx, rates))


async def _workspace_list(ctx: Any, filters: dict[str, str], limit: int, cursor: str | None) -> int:
    from gate.tenancy.directory import Directory

    rows, next_cursor = await Directory(ctx).page(filters, cursor, limit)
    _print({"data": [r.to_json() for r in rows], "next_cursor": next_cursor})
    return 0


async def _workspace_show(ctx: Any, workspace_id: str) -> int:
    from gate.errors import NotFound
    from gate.store import keys
    from gate.tenancy.directory import Directory

    rows = await Directory(ctx).summaries([workspace_id])
    if not rows:
        raise NotFound("no such workspace")
    raw = await ctx.client.hget(keys.for_workspace(workspace_id).ws, "closed_statement")
    _print({**rows[0].to_json(), "statement": orjson.loads(raw) if raw else None})
    return 0


async def _workspace_hold(ctx: Any, verb: str, workspace_id: str, reason: str | None,
                          live_calls: str) -> int:  # fmt: skip
    from gate.tenancy.audit import Actor

    who = Actor("cli", os.environ.get("USER", ""), "")
    holds = _holds(ctx)
    if verb == "suspend":
        _print(await holds.suspend(workspace_id, reason or "", who, live_calls))
    elif verb == "resume":
        _print(await holds.resume(workspace_id, who))
    else:
        _print(await holds.close(workspace_id, reason or "", who))
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


async def _mail_list(ctx: Any, workspace_id: str | None) -> int:
    from gate.delivery.mail import dead_mail
    from gate.store import keys
    from gate.store.redis_client import text

    ids = (
        [workspace_id]
        if workspace_id
        else sorted(text(m) for m in await ctx.client.smembers(keys.WORKSPACES))
    )
    _print(await dead_mail(ctx, ids))
    return 0


async def _mail_retry(ctx: Any, mail_id: str) -> int:
    from gate.delivery.mail import retry_dead

    if not await retry_dead(ctx, mail_id):
        sys.stderr.write(
            f"gate: no dead-lettered mail {mail_id!r}; `gate mail list --dead` shows the ids\n"
        )
        return 1
    sys.stdout.write(f"queued {mail_id} again: a running Gate sends it within its next round\n")
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
    parser.add_argument("--version", action="version", version=f"gate {__version__}")
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
    listing = ws.add_parser("list", help="find workspaces (the operator's GET /v1/workspaces)")
    for name in ("q", "organization-id", "number", "call-id", "customer", "state"):
        listing.add_argument(f"--{name}")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor")
    ws.add_parser("show", help="one workspace: money, state, statement").add_argument("workspace")
    suspend = ws.add_parser("suspend", help="refuse its starts and charges (reads go on)")
    suspend.add_argument("workspace")
    suspend.add_argument("--reason", required=True, help="why; shown to the tenant")
    suspend.add_argument("--live-calls", choices=["keep", "end"], default="keep")
    ws.add_parser("resume", help="lift the platform's suspension").add_argument("workspace")
    close = ws.add_parser("close", help="end calls, release numbers, refund, revoke keys")
    close.add_argument("workspace")
    close.add_argument("--reason", required=True)
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
    mail = sub.add_parser("mail", help="alert mail").add_subparsers(dest="verb", required=True)
    mail_list = mail.add_parser("list", help="list alert mail jobs (--dead: the dead-lettered)")
    mail_list.add_argument("--dead", action="store_true", required=True)
    mail_list.add_argument("workspace", nargs="?", help="one workspace id (default: all)")
    mail.add_parser("retry", help="queue a dead-lettered mail again").add_argument("id")
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
        import importlib.util

        # The service image ships without the harness's extras: say so, not a traceback.
        if missing := [
            m for m in ("rich", "hdrh", "matplotlib") if not importlib.util.find_spec(m)
        ]:
            sys.stderr.write(
                f"gate: the load-test harness needs the 'loadtest' extra ({', '.join(missing)} "
                "missing): pip install 'gate[loadtest]', or run it from a checkout: make loadtest\n"
            )
            return 2
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
    if args.command == "workspace" and args.verb == "create":
        work = lambda ctx: _workspace_create(ctx, args.name, args.organization_id)  # noqa: E731
    elif args.command == "workspace" and args.verb == "list":
        filters = {
            name: value
            for name in ("q", "organization_id", "number", "call_id", "customer", "state")
            if (value := getattr(args, name))
        }
        work = lambda ctx: _workspace_list(ctx, filters, args.limit, args.cursor)  # noqa: E731
    elif args.command == "workspace" and args.verb == "show":
        work = lambda ctx: _workspace_show(ctx, args.workspace)  # noqa: E731
    elif args.command == "workspace":
        reason, live = getattr(args, "reason", None), getattr(args, "live_calls", "keep")
        work = lambda ctx: _workspace_hold(ctx, args.verb, args.workspace, reason, live)  # noqa: E731
    elif args.command == "organization":
        work = lambda ctx: _organization_create(ctx, args.name)  # noqa: E731
    elif args.command == "key":
        work = lambda ctx: _key_create(ctx, args.workspace, args.role)  # noqa: E731
    elif args.command == "wallet":
        work = lambda ctx: _wallet_show(ctx, args.workspace)  # noqa: E731
    elif args.command == "mail" and args.verb == "list":
        work = lambda ctx: _mail_list(ctx, args.workspace)  # noqa: E731
    elif args.command == "mail":
        work = lambda ctx: _mail_retry(ctx, args.id)  # noqa: E731
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
