"""Prometheus metrics of the gate, in one registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "gate_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "gate_http_request_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
LUA_CALLS = Counter(
    "gate_lua_calls_total", "Lua script calls by reply code", ["script", "code"], registry=REGISTRY
)
TICKER_LAG = Histogram(
    "gate_ticker_lag_seconds",
    "now - due time of ticked calls",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
CLAMPS = Counter(
    "gate_call_clamps_total",
    "Switch claims (end duration_s, heartbeat elapsed_s) cut to the gate's own clock",
    ["route"],
    registry=REGISTRY,
)
CALL_ENDINGS = Counter(
    "gate_call_endings_total",
    "Calls a call sync ended because the switch no longer listed them, by flag",
    ["reason"],
    registry=REGISTRY,
)
CLIENT_DISCONNECTS = Counter(
    "gate_client_disconnects_total",
    "Requests whose client went away before its body arrived (logged at DEBUG only)",
    registry=REGISTRY,
)
BODY_TIMEOUTS = Counter(
    "gate_body_timeouts_total",
    "Requests whose body did not arrive within the route's deadline (408, connection closed)",
    registry=REGISTRY,
)
START_TIMEOUTS = Counter(
    "gate_call_start_timeouts_total",
    "Call starts answered 503 gate_timeout: not decided before the switch's deadline",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "gate_webhook_deliveries_total", "Webhook delivery attempts", ["outcome"], registry=REGISTRY
)
DELIVERY_DELAY = Histogram(
    "gate_webhook_delivery_delay_seconds",
    "send time - event time of delivered webhooks",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0),
    registry=REGISTRY,
)
REDIS_UP = Gauge(
    "gate_redis_up",
    "1 while this process reaches Redis, 0 while its circuit is open (answering 503)",
    registry=REGISTRY,
)
ARCHIVE_LAG_ROWS = Gauge(
    "gate_archive_lag_rows",
    "ledger rows not yet in the SQL archive, as the archiver's last pass began",
    registry=REGISTRY,
)
ARCHIVE_LAG_SECONDS = Gauge(
    "gate_archive_lag_seconds",
    "age of the oldest ledger row not yet in the SQL archive, as the last pass began",
    registry=REGISTRY,
)
ARCHIVED_ROWS = Counter(
    "gate_archived_rows_total", "ledger rows copied into the SQL archive", registry=REGISTRY
)
PROVIDER_EVENTS_IGNORED = Counter(
    "gate_provider_events_ignored_total",
    "Signed payment-provider events that credited nothing, by reason "
    "(unknown_payment, mismatch, not_succeeded, unhandled_type, duplicate)",
    ["reason"],
    registry=REGISTRY,
)
MAIL_DEAD = Counter(
    "gate_mail_dead_total",
    "Alert mail jobs moved to the dead-letter hash (could not render, or sends kept failing)",
    registry=REGISTRY,
)
