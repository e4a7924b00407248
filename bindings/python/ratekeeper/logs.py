"""One ``logging`` record per denied request, rate-limited by itself.

:class:`DenyLogger` writes a record to the logger ``"ratekeeper"`` for every
denial (and shadow-mode would-be denial, ban, and deny-list refusal) it is
told about, but at most ``max_per_second`` records per second per process
(a token bucket with a burst of one second's worth): a flood of denied
requests must not become a flood of log lines. The records it drops are
counted, and the next record it writes is preceded by one summary record,
``"ratekeeper: suppressed 1234 deny log records in the last 5.0 s"``.

Keys can be personal data: a record carries the key's text only when the
policy records keys (``record_keys=True``); otherwise a keyed hash of it
(``#`` and 16 hex digits, the same for one key in one process; set
``hash_salt`` to the same bytes in every worker to compare them across
workers).

Each record has the fields in ``record.ratekeeper`` (a dict: ``event``,
``policy``, ``limit``, ``key``, ``retry_after``, ``banned``, ``shadow``) for
structured log handlers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from typing import Any, Dict, Optional, Union

__all__ = ["DenyLogger", "logger"]

#: The logger every record goes to.
logger = logging.getLogger("ratekeeper")

_PROCESS_SALT = os.urandom(16)


def _text(key: Union[str, bytes]) -> str:
    if isinstance(key, bytes):
        key = key.decode("utf-8", "backslashreplace")
    # The Flask extension's keys are "<scope>\0<value>".
    return key.replace("\x00", " ").encode("unicode_escape").decode("ascii")


class DenyLogger:
    """Writes deny records to ``logger`` at ``level``, at most
    ``max_per_second`` of them per second (``None``: no limit; ``0``: none
    at all). Thread-safe."""

    def __init__(
        self,
        max_per_second: Optional[float] = 10.0,
        level: Union[int, str] = logging.INFO,
        log: Optional[logging.Logger] = None,
        hash_salt: Optional[bytes] = None,
        clock: Any = time.monotonic,
    ):
        if max_per_second is not None and (max_per_second < 0 or max_per_second != max_per_second):
            raise ValueError("max_per_second must be None or a number >= 0")
        self.max_per_second = max_per_second
        if isinstance(level, str):
            value = logging.getLevelName(level.upper())
            if not isinstance(value, int):
                raise ValueError(f"unknown logging level {level!r}")
            level = value
        self.level = int(level)
        self.logger = log if log is not None else logger
        self.salt = hash_salt if hash_salt is not None else _PROCESS_SALT
        self._clock = clock
        self._lock = threading.Lock()
        self._burst = max(1.0, float(max_per_second or 0))
        self._tokens = self._burst
        self._refilled = clock()
        self.suppressed = 0  #: records dropped since the last summary
        self.suppressed_total = 0  #: records dropped in all
        self._suppressed_since: Optional[float] = None

    def key_hash(self, key: Union[str, bytes]) -> str:
        """``#`` and 16 hex digits: a keyed hash of ``key`` (BLAKE2b under
        this logger's salt)."""
        data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        return "#" + hashlib.blake2b(data, digest_size=8, key=self.salt).hexdigest()

    def _admit(self) -> Optional[int]:
        """None: drop this record; else how many were dropped before it
        (0: none) and a summary is due."""
        rate = self.max_per_second
        if rate is None:
            return 0
        now = self._clock()
        with self._lock:
            if rate > 0:
                self._tokens = min(self._burst, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if rate > 0 and self._tokens >= 1.0:
                self._tokens -= 1.0
                dropped, self.suppressed = self.suppressed, 0
                return dropped
            if self.suppressed == 0:
                self._suppressed_since = now
            self.suppressed += 1
            self.suppressed_total += 1
            return None

    def enabled(self) -> bool:
        """Whether a record would be written at all (the logger handles the
        level and the limit is not 0)."""
        return self.max_per_second != 0 and self.logger.isEnabledFor(self.level)

    def deny(
        self,
        event: str,
        policy: str,
        key: Union[str, bytes, None],
        record_key: bool = False,
        retry_after: Optional[float] = None,
        limit: Optional[str] = None,
        banned: bool = False,
        shadow: bool = False,
        detail: str = "",
    ) -> bool:
        """One record: ``event`` (``"denied"``, ``"banned"``,
        ``"shadow_denied"``, ``"forbidden"``), the policy's name, the key (its
        text if ``record_key``, else its hash), the retry-after in seconds.
        Returns whether it was written (False: over the limit, or the
        logger does not handle the level)."""
        if not self.logger.isEnabledFor(self.level):
            return False
        dropped = self._admit()
        if dropped is None:
            return False
        if dropped:
            since = self._suppressed_since
            span = f" in the last {self._clock() - since:.1f} s" if since is not None else ""
            self.logger.log(
                self.level,
                "ratekeeper: suppressed %d deny log records%s (at most %s per second)",
                dropped, span, _num(self.max_per_second),
                extra={"ratekeeper": {"event": "suppressed", "suppressed": dropped}},
            )
        shown = None if key is None else (_text(key) if record_key else self.key_hash(key))
        fields: Dict[str, Any] = {
            "event": event,
            "policy": policy,
            "limit": limit,
            "key": shown,
            "retry_after": retry_after,
            "banned": banned,
            "shadow": shadow,
        }
        parts = [f"ratekeeper: {event}", f"policy={policy}"]
        if limit is not None and limit != policy:
            parts.append(f"limit={limit}")
        if shown is not None:
            parts.append(f"key={shown}")
        if retry_after is not None:
            parts.append("retry_after=never" if math.isinf(retry_after) else f"retry_after={retry_after:.3f}s")
        if detail:
            parts.append(detail)
        self.logger.log(self.level, "%s", " ".join(parts), extra={"ratekeeper": fields})
        return True


def _num(x: Optional[float]) -> str:
    if x is None:
        return "unlimited"
    return str(int(x)) if float(x).is_integer() else str(x)
