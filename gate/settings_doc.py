"""What each GATE_* setting means, for the generated settings reference (docs/hooks/).

One line per variable of `gate.settings.ENV`, in the words an operator reads; the default,
the allowed range and the variable's name come from `gate.settings` itself when the page is
built, so only the meaning is written here. tests/test_docs.py fails when a variable has no
line here, or a line names a variable that no longer exists.
"""

from __future__ import annotations

MEANING: dict[str, str] = {
    "GATE_REDIS_URL": "`redis://`, `rediss://`, `unix://` or `redis+cluster://host:port` (Redis "
    "Cluster). Unset: `gate serve` starts a private `redis-server` with AOF in `GATE_DATA_DIR` "
    "and says so.",
    "GATE_HOST": "The address to listen on.",
    "GATE_PORT": "The port to listen on.",
    "GATE_PLATFORM_KEY": "The bootstrap key of role `platform` (creates organizations, "
    "workspaces, keys). Unset: no platform key works.",
    "GATE_RATES": "Path of the rate card (TOML). Unset: the card shipped in the package.",
    "GATE_DEFAULT_PLAN": "The plan new workspaces get. Unset: the rate card's `default_plan`; "
    "`none`: no plan.",
    "GATE_WORKERS": "Processes sharing the port (SO_REUSEPORT); their tickers and delivery "
    "workers share the work through Redis.",
    "GATE_TICK_S": "Seconds between two ticks (periodic debits) of a live answered call.",
    "GATE_BUFFER_S": "Billable seconds reserved ahead of a call (the buffer, connect fee "
    "included).",
    "GATE_INBOUND_GRACE_S": "Grace past the money for a time-limited inbound call, and how long "
    "a wallet may stay at or below zero before it is suspended. A workspace's own "
    "`inbound_grace_s` overrides it.",
    "GATE_INBOUND_GRACE_MAX_S": "The platform's ceiling on a workspace's `inbound_grace_s` "
    "(also enforced inside `call_start`).",
    "GATE_STALE_AFTER_S": "Silence of a reporting switch (heartbeats, syncs), or time past a "
    "sent cut, before the sweeper ends a call as `stale`.",
    "GATE_MAX_CALL_S": "The longest call: the sweeper ends a call older than this.",
    "GATE_SIGNUP_CREDIT_USD": "Credit a new workspace starts with, in USD.",
    "GATE_SWITCH_WEBHOOK_URL": "Where events go for workspaces that set no "
    "`switch_webhook_url` of their own. The operator's URL is trusted (no private-address "
    "check).",
    "GATE_SWITCH_KEY": "A service-wide `switch` key (at least 24 characters) that acts for "
    "every workspace; its starts and charges name `workspace_id`.",
    "GATE_SWITCH_WEBHOOK_SECRET": "`whsec_...`: signs what goes to `GATE_SWITCH_WEBHOOK_URL`. "
    "Unset: each workspace's own secret.",
    "GATE_SWITCH_WEBHOOK_EVENTS": "`all`, or `call`: switch URLs get `call.*` events only.",
    "GATE_EVENTS_WEBHOOK_URL": "With `GATE_SWITCH_WEBHOOK_EVENTS=call`: where the other events go.",
    "GATE_START_TIMEOUT_MS": "A call start's deadline when the switch sends no `timeout_ms`; a "
    "start not decided by then answers `503 gate_timeout` and is never committed.",
    "GATE_RING_TIMEOUT_S": "How long a start sent with `answered: false` may ring before it "
    "expires with nothing billed.",
    "GATE_MAX_CONCURRENT_CALLS_MAX": "The platform's ceiling on a workspace's "
    "`max_concurrent_calls`, and the cap of a workspace that sets none.",
    "GATE_CLOCK_TOLERANCE_S": "How far a switch's `duration_s` or `elapsed_s` may run ahead of "
    "Gate's own clock before it is clamped (and flagged on the ledger row).",
    "GATE_SYNC_MIN_AGE_S": "Calls younger than this are never ended by a call sync.",
    "GATE_DATA_DIR": "Where the private Redis keeps its AOF and the embedded SQLite archive lives.",
    "GATE_LOG_LEVEL": "`DEBUG`, `INFO`, `WARNING` or `ERROR`.",
    "GATE_REDIS_TIMEOUT_MS": "Deadline of one Redis command; past it the request answers "
    "`503 gate_unavailable` with `Retry-After: 1`.",
    "GATE_HEADER_TIMEOUT_S": "The request headers must arrive within this of the connection's "
    "start, else `408 request_timeout` and the connection is closed.",
    "GATE_KEEPALIVE_TIMEOUT_S": "An idle keep-alive connection is closed after this.",
    "GATE_WEBHOOK_ALLOW_PRIVATE": "`1`: tenants' webhook URLs may reach loopback, private and "
    "link-local addresses (development, tests, a switch on the operator's own network).",
    "GATE_RATE_LIMIT_PER_S": "Mutating requests per second per key and process, on average "
    "(then `429 rate_limited`); `0` turns the limit off. Platform and switch keys are never "
    "limited.",
    "GATE_RATE_LIMIT_BURST": "Mutating requests per key and process at once.",
    "GATE_SSE_MAX_PER_KEY": "Open event streams per key and process (then `429 too_many_streams`).",
    "GATE_SSE_MAX_PER_WORKSPACE": "Open event streams per workspace and process.",
    "GATE_CLOCK_SKEW_MS": "Tests and `loadtest --chaos` only: this process's clock runs this "
    "many ms off the wall clock. Never set it in production.",
    "GATE_DATABASE_URL": "The ledger archive: `postgresql://user@host:5432/db`, or "
    "`sqlite:///path`. Unset: SQLite file `ledger.sqlite3` in `GATE_DATA_DIR`.",
    "GATE_LEDGER_KEEP_S": "Archived ledger rows younger than this stay in Redis too.",
    "GATE_LEDGER_KEEP_ROWS": "At most this many archived rows per workspace stay in Redis.",
    "GATE_ARCHIVE_INTERVAL_S": "Seconds between two archive passes (may be fractional).",
    "GATE_SMTP_URL": "`smtp://user:password@host:port` or `smtps://...` for alert mail. Unset: "
    "mail is logged, not sent.",
    "GATE_MAIL_FROM": "The sender of alert mail.",
    "GATE_PAYMENTS": "The payment provider: `sandbox` (test methods, no money moves) or `stripe`.",
    "GATE_STRIPE_API_KEY": "`sk_live_...` or `sk_test_...`; required with `GATE_PAYMENTS=stripe`.",
    "GATE_STRIPE_WEBHOOK_SECRET": "Verifies `Stripe-Signature` on "
    "`POST /v1/providers/stripe/webhook`. Unset: that route answers `404`.",
    "GATE_STRIPE_API_BASE": "Another Stripe API base URL (tests point it at localstripe).",
    "GATE_REFUND_WINDOW_DAYS": "Days after a top-up during which a workspace admin may refund it "
    "to the card (`POST /v1/wallet/topups/{id}/refund`); the platform key may at any time.",
    "GATE_CRASH_AT": "Tests only: `payment_created` kills the process right after the provider "
    "created a payment, to prove recovery charges once. Never set it in production.",
    "GATE_NEGATIVE_LIMIT_USD": "Money at risk below zero a workspace may reach: any debt plus "
    "every live call's inbound grace beyond its hold. `call_start` gives a call only the grace "
    "that fits; the platform overrides it per workspace (`PUT /v1/workspaces/{id}/limits`).",
    "GATE_EVIDENCE_MAX_S": "A call with no evidence (answer, heartbeat, sync listing) for this "
    "long is cut and ended `lost_end`, billed to its last evidence plus one tick.",
    "GATE_BODY_TIMEOUT_S": "Seconds a request body may take to arrive (then `408` and the "
    "connection is closed).",
    "GATE_UNAUTHENTICATED_BODY_TIMEOUT_S": "The same for routes without a key (provider "
    "webhooks), which check their signature header before reading.",
    "GATE_UNAUTHENTICATED_BODY_MAX_BYTES": "The largest body a route without a key reads.",
    "GATE_LISTEN_BACKLOG": "The listen socket's backlog: connections the kernel queues in a "
    "reconnect storm before Gate accepts them.",
    "GATE_SSE_REPLAY_ROWS_PER_S": "Event-stream replay budget per workspace: rows a second, so "
    "one tenant's backlog cannot hold the loop other tenants' calls need.",
    "GATE_SSE_OPENS_PER_S": "Event-stream opens per key and second (then `429` with "
    "`Retry-After`).",
}
