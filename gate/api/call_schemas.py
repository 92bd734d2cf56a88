"""Request bodies of the switch's call webhooks (docs/design.md §3), validated by msgspec."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, field

from gate.api.schemas import Body, Id

# Any SIP Call-ID: 1 to 256 printable ASCII characters, no spaces or controls (RFC 3261's
# word@word fits; in URLs it is percent-encoded, '/' as %2F).
CALL_ID_PATTERN = r"^[!-~]{1,256}$"
CallId = Annotated[str, Meta(min_length=1, max_length=256, pattern=CALL_ID_PATTERN)]
E164 = Annotated[str, Meta(pattern=r"^\+[1-9][0-9]{1,14}$", description="E.164 number")]
# A number as a switch has it; gate/calls/numbers.py turns it into E.164 or refuses it.
SwitchNumber = Annotated[
    str, Meta(min_length=1, max_length=256, description="E.164, digits, 00..., or sip:/tel: URI")
]
WorkspaceId = Annotated[str, Meta(pattern=r"^ws_[0-9a-f]{16}$")]
NodeId = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9._:@+-]{1,64}$", description="a switch node's name")
]
Duration = Annotated[int, Meta(ge=0, le=7 * 86400, description="whole seconds")]


class StartCall(Body):
    call_id: CallId
    direction: Literal["outbound", "inbound"]
    from_: SwitchNumber = field(name="from")
    to: SwitchNumber
    service: Literal["voice", "ai_agent"] = "voice"
    user: Id | None = None
    group: Id | None = None
    number_type: Literal["local", "toll_free", "international"] | None = None
    answered: bool = True
    # The switch's deadline for this answer; past it the start is answered 503 gate_timeout
    # and never committed. Default GATE_START_TIMEOUT_MS.
    timeout_ms: Annotated[int, Meta(ge=50, le=60_000)] | None = None
    # With the service-wide switch key: the workspace the call is billed to.
    workspace_id: WorkspaceId | None = None
    # The switch promises heartbeats for this call (every heartbeat_s): their silence for
    # GATE_STALE_AFTER_S, even before the first one, then ends the call as a lost end.
    heartbeat_s: Annotated[int, Meta(ge=1, le=3600)] | None = None
    # The switch node that carries the call: a sync naming this node ends only its calls.
    node: NodeId | None = None


class Heartbeat(Body):
    elapsed_s: Duration
    seq: Annotated[int, Meta(ge=1, le=2**53)]


class EndCall(Body):
    duration_s: Duration
    hangup_cause: Annotated[str, Meta(max_length=64)] | None = None
    # For an end the gate never saw a start for (it failed open): how to rate it.
    direction: Literal["outbound", "inbound"] = "outbound"
    from_: SwitchNumber | None = field(default=None, name="from")
    to: SwitchNumber | None = None
    service: Literal["voice", "ai_agent"] = "voice"
    user: Id | None = None
    group: Id | None = None
    number_type: Literal["local", "toll_free", "international"] | None = None
    # With the service-wide switch key, for a call Gate never saw: its workspace.
    workspace_id: WorkspaceId | None = None
    # What the switch or agent runtime knows of the call, kept on its ledger row for the
    # billing page's details (seed 001); none of it changes what the call costs.
    quality_mos: Annotated[float, Meta(ge=1, le=5, description="mean opinion score")] | None = None
    ai_mode: Literal["voice", "digital"] | None = None
    skills: Annotated[list[Id], Meta(max_length=50)] | None = None
    actions: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    sessions: Annotated[int, Meta(ge=0, le=100_000)] | None = None

    def facts(self) -> list[tuple[str, str]]:
        """The row's extra fields for what was sent (an AI agent's skills comma-separated)."""
        given = {
            "quality_mos": None if self.quality_mos is None else f"{self.quality_mos:.1f}",
            "ai_mode": self.ai_mode,
            "skills": None if self.skills is None else ",".join(self.skills),
            "actions": None if self.actions is None else str(self.actions),
            "sessions": None if self.sessions is None else str(self.sessions),
        }
        return [(name, value) for name, value in given.items() if value]


class SyncCalls(Body):
    """The calls the switch has up right now (CGRateS' channel sync)."""

    call_ids: Annotated[list[CallId], Meta(max_length=100_000)]
    # With the service-wide switch key: sync one workspace (default: every workspace).
    workspace_id: WorkspaceId | None = None
    # A switch node (as named in its starts): only that node's unlisted calls are ended;
    # without one every unlisted call is (one switch).
    node: NodeId | None = None


class Charge(Body):
    """One-off usage: sms/mms (text or segments), fax (pages), chat (messages)."""

    charge_id: Id
    service: Literal["sms", "mms", "fax", "chat"]
    text: Annotated[str, Meta(max_length=1600)] | None = None
    segments: Annotated[int, Meta(ge=1, le=1000)] | None = None
    pages: Annotated[int, Meta(ge=1, le=1000)] | None = None
    messages: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    direction: Literal["outbound", "inbound"] = "outbound"
    from_: E164 | None = field(default=None, name="from")
    to: E164 | None = None
    user: Id | None = None
    group: Id | None = None
    message_id: Id | None = None
    # What the carrier said of it when charged: an SMS's delivery status, a fax's status.
    status: Literal["sent", "delivered", "undelivered", "failed", "received"] | None = None
    # With the service-wide switch key: the workspace the usage is billed to.
    workspace_id: WorkspaceId | None = None


class RentNumber(Body):
    number: E164
