"""Gate's typed exceptions; each knows its HTTP status and the error code the API promises.

GateError
├── BadRequest (400)
│   ├── ValidationFailed (400 validation_error)
│   ├── InvalidJSON (400 invalid_json)
│   ├── InvalidNumber (400 invalid_number)
│   └── InvalidCursor (400 invalid_cursor)
├── Unauthorized (401 unauthorized)
├── PaymentRequired (402)
│   ├── InsufficientBalance (402 insufficient_balance)
│   ├── PaymentDeclined (402 payment_declined)
│   └── WorkspaceSuspended (402 workspace_suspended)
│       └── HeldByPlatform (402 workspace_suspended, suspended_by "platform")
├── Forbidden (403 forbidden)
├── NotFound (404 not_found)
├── Conflict (409)
│   ├── IdempotencyKeyReused (409 idempotency_key_reused)
│   ├── IdempotencyKeyInProgress (409 idempotency_key_in_progress)
│   ├── InvalidState (409 invalid_state)
│   ├── PaymentInFlight (409 payment_in_flight)
│   └── NumberTaken (409 number_taken)
├── RequestTimeout (408 request_timeout; the connection is closed)
├── ClientGone (499 client_disconnected; nobody reads the answer)
├── PayloadTooLarge (413 payload_too_large)
├── Unprocessable (422)
│   └── NoRateFound (422 no_rate)
├── TooManyRequests (429 concurrency_limit)
│   ├── RateLimited (429 rate_limited, with Retry-After)
│   └── TooManyStreams (429 too_many_streams)
└── Unavailable (503 unavailable)
    ├── GateTimeout (503 gate_timeout)
    ├── GateUnavailable (503 gate_unavailable)
    └── ArchiveUnavailable (503 archive_unavailable)
"""

from __future__ import annotations

from typing import Any


class GateError(Exception):
    """Base of every error Gate reports to a client."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class BadRequest(GateError):
    status = 400
    code = "bad_request"


class ValidationFailed(BadRequest):
    code = "validation_error"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidNumber(BadRequest):
    code = "invalid_number"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class Unauthorized(GateError):
    status = 401
    code = "unauthorized"


class PaymentRequired(GateError):
    status = 402
    code = "payment_required"


class InsufficientBalance(PaymentRequired):
    code = "insufficient_balance"


class PaymentDeclined(PaymentRequired):
    code = "payment_declined"


class WorkspaceSuspended(PaymentRequired):
    code = "workspace_suspended"


class HeldByPlatform(WorkspaceSuspended):
    """The platform suspended or closed the workspace: no top-up lifts it."""

    def __init__(self, hold: str, reason: str) -> None:
        what = "closed" if hold in ("closing", "closed") else "suspended"
        super().__init__(
            f"the workspace was {what} by the platform ({reason or 'no reason given'}); "
            "a top-up does not lift this: ask the platform operator",
            suspended_by="platform",
            state=hold,
            reason=reason,
        )


class Forbidden(GateError):
    status = 403
    code = "forbidden"


class NotFound(GateError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GateError):
    status = 405
    code = "method_not_allowed"


class Conflict(GateError):
    status = 409
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class IdempotencyKeyInProgress(Conflict):
    code = "idempotency_key_in_progress"


class InvalidState(Conflict):
    code = "invalid_state"


class PaymentInFlight(Conflict):
    code = "payment_in_flight"


class NumberTaken(Conflict):
    code = "number_taken"


class PayloadTooLarge(GateError):
    status = 413
    code = "payload_too_large"


class Unprocessable(GateError):
    status = 422
    code = "unprocessable"


class NoRateFound(Unprocessable):
    """A well-formed call that the rate card has no price for."""

    code = "no_rate"


class TooManyRequests(GateError):
    status = 429
    code = "concurrency_limit"


class Unavailable(GateError):
    status = 503
    code = "unavailable"


class GateTimeout(Unavailable):
    """A call start that could not be decided before the switch's deadline: never committed."""

    code = "gate_timeout"


class GateUnavailable(Unavailable):
    """Redis did not answer in time or is unreachable: nothing was done, retry shortly."""

    code = "gate_unavailable"


class RequestTimeout(GateError):
    """The request body did not arrive within its route's deadline."""

    status = 408
    code = "request_timeout"


class ClientGone(GateError):
    """The client closed the connection before its body arrived: nothing was done."""

    status = 499
    code = "client_disconnected"


class ArchiveUnavailable(Unavailable):
    """The SQL ledger archive does not answer: history, summary and replays that need it
    cannot be answered truthfully now (never a partial page, never a second charge)."""

    code = "archive_unavailable"


class RateLimited(TooManyRequests):
    """A key made more mutating requests than its rate allows; answered with Retry-After."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)
        self.retry_after_s = retry_after_s


class TooManyStreams(TooManyRequests):
    """A key or workspace has as many event streams open as the process allows."""

    code = "too_many_streams"
