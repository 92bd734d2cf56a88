"""Service settings from GATE_* environment variables or command-line flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gate.errors import ValidationFailed
from gate.money import parse_usd


class SettingsError(ValueError):
    """One invalid setting; the message names the variable and what is expected."""


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    platform_key: str | None = None
    rates: str | None = None
    # The plan new workspaces get: None = the rate card's default_plan, "none" = no plan.
    default_plan: str | None = None
    workers: int = 1
    tick_s: int = 10
    buffer_s: int = 60
    inbound_grace_s: int = 30
    stale_after_s: int = 90
    max_call_s: int = 14400
    signup_credit_micros: int = 10_000_000
    switch_webhook_url: str | None = None
    # One switch, many tenants (issue 11): a service-wide switch key that may act for every
    # workspace, the secret the service-wide switch URL is signed with, which events that URL
    # gets ("all" or "call": call.* only) and where the others go then.
    switch_key: str | None = None
    switch_webhook_secret: str | None = None
    switch_webhook_events: str = "all"
    events_webhook_url: str | None = None
    start_timeout_ms: int = 500
    ring_timeout_s: int = 120
    inbound_grace_max_s: int = 60
    # Money at risk below zero per workspace (docs/reliability-exposure.md): debt plus the
    # grace of every live inbound call; a workspace's negative_limit_usd overrides it.
    negative_limit_micros: int = 5_000_000
    # A live call with no evidence (answer, heartbeat, sync listing) for this long is ended
    # as lost_end, billed to its last evidence plus one tick.
    evidence_max_s: int = 3600
    max_concurrent_calls_max: int = 100_000
    clock_tolerance_s: int = 5
    sync_min_age_s: int = 5
    data_dir: str = "var"
    log_level: str = "INFO"
    # The ledger archive (gate.history): unset, `gate serve` uses SQLite in data_dir.
    database_url: str | None = None
    ledger_keep_s: int = 7 * 86400
    ledger_keep_rows: int = 10_000
    archive_interval_s: float = 2.0
    smtp_url: str | None = None
    mail_from: str = "Gate <gate@localhost>"
    payments: str = "sandbox"
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    # Tunables that tests shrink; not part of the documented contract.
    cut_poll_ms: int = 50
    auth_cache_s: float = 5.0
    # Reliability (README "Reliability"): the deadline of one Redis command.
    redis_timeout_ms: int = 250
    header_timeout_s: int = 10
    keepalive_timeout_s: int = 75
    # Every byte has a deadline (issue 21): a request body must arrive within this after
    # its headers; unauthenticated routes (provider webhooks) get less and a size cap.
    body_timeout_s: int = 10
    unauthenticated_body_timeout_s: int = 2
    unauthenticated_body_max_bytes: int = 65536
    listen_backlog: int = 1024
    webhook_allow_private: bool = False
    rate_limit_per_s: int = 50
    rate_limit_burst: int = 200
    sse_max_per_key: int = 10
    sse_max_per_workspace: int = 50
    # Fair shares of the loop (issue 21): events a workspace's streams replay per second in
    # this process, and stream opens per key per second (burst: 5 seconds' worth).
    sse_replay_rows_per_s: int = 1000
    sse_opens_per_s: int = 2
    # Test and chaos only: this process's clock runs this many ms off the wall clock.
    clock_skew_ms: int = 0
    # A workspace admin may refund a card top-up this many days after it (the platform: always).
    refund_window_days: int = 14
    # Chaos tests only: the Stripe provider kills this process at this point (payment_created).
    crash_at: str = ""


# integer settings -> (lowest, highest) allowed
_INT_FIELDS = {
    "port": (1, 65535),
    "workers": (1, 64),
    "tick_s": (1, 3600),
    "buffer_s": (1, 3600),
    "inbound_grace_s": (0, 3600),
    "stale_after_s": (1, 86400),
    "max_call_s": (1, 7 * 86400),
    "ledger_keep_s": (0, 366 * 86400),
    "ledger_keep_rows": (0, 10_000_000),
    "start_timeout_ms": (50, 60_000),
    "ring_timeout_s": (1, 86400),
    "inbound_grace_max_s": (0, 3600),
    "evidence_max_s": (10, 7 * 86400),
    "max_concurrent_calls_max": (1, 1_000_000),
    "clock_tolerance_s": (0, 300),
    "sync_min_age_s": (0, 3600),
    "redis_timeout_ms": (5, 60_000),
    "header_timeout_s": (1, 3600),
    "keepalive_timeout_s": (1, 86400),
    "body_timeout_s": (1, 3600),
    "unauthenticated_body_timeout_s": (1, 3600),
    "unauthenticated_body_max_bytes": (1024, 16 * 1024 * 1024),
    "listen_backlog": (16, 65535),
    "rate_limit_per_s": (0, 1_000_000),
    "rate_limit_burst": (1, 1_000_000),
    "sse_max_per_key": (1, 100_000),
    "sse_max_per_workspace": (1, 100_000),
    "sse_replay_rows_per_s": (100, 10_000_000),
    "sse_opens_per_s": (1, 100_000),
    "clock_skew_ms": (-3_600_000, 3_600_000),
    "refund_window_days": (0, 3650),
}
ENV = {
    "redis_url": "GATE_REDIS_URL",
    "host": "GATE_HOST",
    "port": "GATE_PORT",
    "platform_key": "GATE_PLATFORM_KEY",
    "rates": "GATE_RATES",
    "default_plan": "GATE_DEFAULT_PLAN",
    "workers": "GATE_WORKERS",
    "tick_s": "GATE_TICK_S",
    "buffer_s": "GATE_BUFFER_S",
    "inbound_grace_s": "GATE_INBOUND_GRACE_S",
    "stale_after_s": "GATE_STALE_AFTER_S",
    "max_call_s": "GATE_MAX_CALL_S",
    "signup_credit_micros": "GATE_SIGNUP_CREDIT_USD",
    "switch_webhook_url": "GATE_SWITCH_WEBHOOK_URL",
    "switch_key": "GATE_SWITCH_KEY",
    "switch_webhook_secret": "GATE_SWITCH_WEBHOOK_SECRET",
    "switch_webhook_events": "GATE_SWITCH_WEBHOOK_EVENTS",
    "events_webhook_url": "GATE_EVENTS_WEBHOOK_URL",
    "start_timeout_ms": "GATE_START_TIMEOUT_MS",
    "ring_timeout_s": "GATE_RING_TIMEOUT_S",
    "inbound_grace_max_s": "GATE_INBOUND_GRACE_MAX_S",
    "negative_limit_micros": "GATE_NEGATIVE_LIMIT_USD",
    "evidence_max_s": "GATE_EVIDENCE_MAX_S",
    "max_concurrent_calls_max": "GATE_MAX_CONCURRENT_CALLS_MAX",
    "clock_tolerance_s": "GATE_CLOCK_TOLERANCE_S",
    "sync_min_age_s": "GATE_SYNC_MIN_AGE_S",
    "data_dir": "GATE_DATA_DIR",
    "log_level": "GATE_LOG_LEVEL",
    "redis_timeout_ms": "GATE_REDIS_TIMEOUT_MS",
    "header_timeout_s": "GATE_HEADER_TIMEOUT_S",
    "keepalive_timeout_s": "GATE_KEEPALIVE_TIMEOUT_S",
    "body_timeout_s": "GATE_BODY_TIMEOUT_S",
    "unauthenticated_body_timeout_s": "GATE_UNAUTHENTICATED_BODY_TIMEOUT_S",
    "unauthenticated_body_max_bytes": "GATE_UNAUTHENTICATED_BODY_MAX_BYTES",
    "listen_backlog": "GATE_LISTEN_BACKLOG",
    "webhook_allow_private": "GATE_WEBHOOK_ALLOW_PRIVATE",
    "rate_limit_per_s": "GATE_RATE_LIMIT_PER_S",
    "rate_limit_burst": "GATE_RATE_LIMIT_BURST",
    "sse_max_per_key": "GATE_SSE_MAX_PER_KEY",
    "sse_max_per_workspace": "GATE_SSE_MAX_PER_WORKSPACE",
    "sse_replay_rows_per_s": "GATE_SSE_REPLAY_ROWS_PER_S",
    "sse_opens_per_s": "GATE_SSE_OPENS_PER_S",
    "clock_skew_ms": "GATE_CLOCK_SKEW_MS",
    "crash_at": "GATE_CRASH_AT",
    "refund_window_days": "GATE_REFUND_WINDOW_DAYS",
    "database_url": "GATE_DATABASE_URL",
    "ledger_keep_s": "GATE_LEDGER_KEEP_S",
    "ledger_keep_rows": "GATE_LEDGER_KEEP_ROWS",
    "archive_interval_s": "GATE_ARCHIVE_INTERVAL_S",
    "smtp_url": "GATE_SMTP_URL",
    "mail_from": "GATE_MAIL_FROM",
    "payments": "GATE_PAYMENTS",
    "stripe_api_key": "GATE_STRIPE_API_KEY",
    "stripe_webhook_secret": "GATE_STRIPE_WEBHOOK_SECRET",
    "stripe_api_base": "GATE_STRIPE_API_BASE",
}


_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}


def _parse(name: str, raw: str) -> Any:
    var = ENV[name]
    if name in _INT_FIELDS:
        low, high = _INT_FIELDS[name]
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r}: expected a whole number") from None
        if not low <= value <= high:
            raise SettingsError(f"{var}={raw!r}: expected a number from {low} to {high}")
        return value
    if name in ("signup_credit_micros", "negative_limit_micros"):
        try:
            return parse_usd(raw, var)
        except ValidationFailed as err:
            raise SettingsError(f"{var}={raw!r}: expected an amount of USD like 10.00") from err
    if name == "redis_url" and not raw.startswith(
        ("redis://", "rediss://", "unix://", "redis+cluster://")
    ):
        raise SettingsError(
            f"{var}={raw!r}: expected a redis://, rediss://, unix:// or redis+cluster:// URL"
        )
    if name == "database_url" and not raw.startswith(("postgresql://", "postgres://", "sqlite:")):
        raise SettingsError(
            f"{var}: expected a postgresql:// URL or sqlite:///path (unset: SQLite in ./var/)"
        )
    if name == "archive_interval_s":
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0.05 <= seconds <= 3600:
            raise SettingsError(f"{var}={raw!r}: expected seconds from 0.05 to 3600")
        return seconds
    if name == "switch_webhook_secret" and not raw.startswith("whsec_"):
        raise SettingsError(f"{var}: expected a Standard Webhooks secret whsec_<base64>")
    if name == "switch_key" and len(raw) < 24:
        raise SettingsError(f"{var}: expected a random key of at least 24 characters")
    if name == "switch_webhook_events" and raw not in {"all", "call"}:
        raise SettingsError(f"{var}={raw!r}: expected all or call (call.* events only)")
    if name in ("switch_webhook_url", "events_webhook_url") and not raw.startswith(
        ("http://", "https://")
    ):
        raise SettingsError(f"{var}={raw!r}: expected an http:// or https:// URL")
    if name == "webhook_allow_private":
        if raw.lower() not in _BOOLS:
            raise SettingsError(f"{var}={raw!r}: expected 1 or 0 (true/false, yes/no, on/off)")
        return _BOOLS[raw.lower()]
    if name == "smtp_url" and not raw.startswith(("smtp://", "smtps://")):
        raise SettingsError(f"{var}={raw!r}: expected smtp://user:password@host:port or smtps://")
    if name == "crash_at" and raw != "payment_created":
        raise SettingsError(f"{var}={raw!r}: expected payment_created (chaos tests only)")
    if name == "payments" and raw not in ("sandbox", "stripe"):
        raise SettingsError(f"{var}={raw!r}: expected sandbox or stripe")
    if name == "stripe_api_base" and not raw.startswith(("http://", "https://")):
        raise SettingsError(f"{var}={raw!r}: expected an http:// or https:// URL")
    if name == "log_level" and raw.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"{var}={raw!r}: expected DEBUG, INFO, WARNING or ERROR")
    return raw


def load(env: Mapping[str, str] | None = None, **overrides: str | None) -> Settings:
    """Settings from the environment, then flags (overrides); raise SettingsError if invalid."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, var in ENV.items():
        raw = overrides.get(name)
        if raw is None:
            raw = env.get(var)
        if raw is None or raw == "":
            continue
        values[name] = _parse(name, str(raw))
    if values.get("payments") == "stripe" and not values.get("stripe_api_key"):
        raise SettingsError(
            "GATE_PAYMENTS=stripe needs GATE_STRIPE_API_KEY (sk_live_... or sk_test_...)"
        )
    settings = Settings(**values)
    if settings.inbound_grace_s > settings.inbound_grace_max_s:
        raise SettingsError(
            f"GATE_INBOUND_GRACE_S={settings.inbound_grace_s} is above the ceiling "
            f"GATE_INBOUND_GRACE_MAX_S={settings.inbound_grace_max_s}: lower one or raise the other"
        )
    return settings
