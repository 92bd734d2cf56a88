"""The audit log: who changed what, when, from where, before and after (never a secret).

Every change that is not a ledger row writes one entry in the same Lua script as the change
(lua/_audit.lua), into the workspace's `audit` stream; platform-wide changes (a rate-card
reload) go to the platform's own stream. Nothing offers to edit or delete an entry: the
streams are only ever appended to, and trimmed once their entries are archived to SQL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: the key's public id, the person named on it, the address."""

    key_id: str
    person: str = ""
    ip: str = ""

    def args(self) -> list[str]:
        """The three `who` ARGV of a script that audits (lua/_audit.lua)."""
        return [self.key_id, self.person, self.ip]


SYSTEM = Actor("gate")  # the gate itself: an expiry found, a card's default after a top-up
