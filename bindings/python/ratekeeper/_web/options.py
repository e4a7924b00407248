"""Option bundles of the extension: frozen dataclasses and enums instead of
tuples and magic numbers."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Optional

from .._core import Penalty


class OnFailure(str, enum.Enum):
    """What decides while Redis cannot be reached (``RATEKEEPER_REDIS_ON_FAILURE``)."""

    LOCAL = "local"  #: this host's own tables (the shared file when configured)
    OPEN = "open"  #: every request passes
    CLOSED = "closed"  #: every request is throttled

    @classmethod
    def parse(cls, value: Any, what: str) -> "OnFailure":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{what} must be one of {', '.join(m.value for m in cls)}, not {value!r}") from None


class WhenFull(str, enum.Enum):
    """What a new key does when a policy's table is full (``RATEKEEPER_WHEN_FULL``)."""

    EVICT = "evict"
    FAIL_OPEN = "fail_open"
    FAIL_CLOSED = "fail_closed"

    @classmethod
    def parse(cls, value: Any) -> "WhenFull":
        try:
            return cls(value)
        except ValueError:
            raise ValueError("RATEKEEPER_WHEN_FULL must be 'evict', 'fail_open' or 'fail_closed'") from None


class Access(enum.IntEnum):
    """An allow/deny list's verdict on a client or key (deny wins)."""

    DENIED = -1
    UNLISTED = 0
    ALLOWED = 1


def check_jitter(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"retry_jitter must be a number of seconds >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class PolicyOptions:
    """The abuse-control options of one engine policy (the same spec with
    other options is another policy)."""

    shadow: bool = False
    retry_jitter: float = 0.0
    penalty: Optional[Penalty] = None
    record_keys: bool = False

    def name_suffix(self) -> str:
        """What the policy's name adds for non-default options."""
        parts = []
        if self.shadow:
            parts.append("shadow")
        if self.retry_jitter:
            parts.append(f"jitter={self.retry_jitter:g}s")
        penalty = self.penalty
        if penalty is not None:
            parts.append(f"penalty={penalty.strikes}/{penalty.window:g}s,ban={penalty.ban:g}s..{penalty.max_ban:g}s")
        if self.record_keys:
            parts.append("keys")
        return f" [{' '.join(parts)}]" if parts else ""


PLAIN = PolicyOptions()
