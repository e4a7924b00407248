"""Exceptions of ratekeeper: one class per ``rk_status``, all subclasses of
:class:`RatekeeperError`, each carrying the library's message
(``rk_last_error()``: what went wrong, in which function, with which
argument) and the numeric ``status``.

A denied request is never an exception (it is a :class:`~ratekeeper.Decision`
with ``allowed == False``), except :meth:`Policy.acquire
<ratekeeper.Policy.acquire>`, which raises :class:`Throttled` when no permit
could be had in time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Type

if TYPE_CHECKING:  # pragma: no cover
    from ._core import Decision

__all__ = [
    "RatekeeperError",
    "InvalidArgument",
    "ParseError",
    "UnsupportedPolicy",
    "PolicyMismatch",
    "UnknownPolicy",
    "TooManyPolicies",
    "WrongPolicyKind",
    "InvalidPermit",
    "TimeoutError",
    "OutOfMemory",
    "IOFailure",
    "CorruptFile",
    "UnsafeFile",
    "UnsupportedPlatform",
    "InternalError",
    "BackendError",
    "WrongEngineKind",
    "EngineClosed",
    "Throttled",
    "error_for_status",
]


class RatekeeperError(Exception):
    """Base class of every ratekeeper error.

    ``status`` is the ``rk_status`` value (``None`` for errors raised by the
    Python layer itself), ``status_name`` its C name (e.g. ``"RK_ERR_PARSE"``)
    and ``message`` the library's description.
    """

    status: Optional[int] = None
    status_name: Optional[str] = None

    def __init__(self, message: str = "", status: Optional[int] = None, status_name: Optional[str] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if status_name is not None:
            self.status_name = status_name


class InvalidArgument(RatekeeperError, ValueError):
    """An argument is out of range, NULL, not UTF-8 or too long
    (``RK_ERR_INVALID_ARGUMENT``, ``RK_ERR_NULL_POINTER``, ``RK_ERR_NULL_KEY``,
    ``RK_ERR_INVALID_UTF8``)."""


class ParseError(RatekeeperError, ValueError):
    """A policy spec did not parse; the message names the byte position and
    what was expected (``RK_ERR_PARSE``)."""


class UnsupportedPolicy(RatekeeperError, ValueError):
    """A spec parsed but asks for more than the engine supports
    (``RK_ERR_UNSUPPORTED_POLICY``)."""


class PolicyMismatch(RatekeeperError):
    """A policy of that name already exists with other limits; the message
    names both specs (``RK_ERR_POLICY_MISMATCH``)."""


class UnknownPolicy(RatekeeperError, LookupError):
    """No such policy in this engine (``RK_ERR_UNKNOWN_POLICY``)."""


class TooManyPolicies(RatekeeperError):
    """The engine already holds its maximum number of policies
    (``RK_ERR_TOO_MANY_POLICIES``)."""


class WrongPolicyKind(RatekeeperError, TypeError):
    """``check``/``refund`` on a concurrency policy, or ``acquire`` on a rate
    limit (``RK_ERR_WRONG_POLICY_KIND``)."""


class InvalidPermit(RatekeeperError):
    """A permit of another engine, or altered (``RK_ERR_INVALID_PERMIT``)."""


class TimeoutError(RatekeeperError):  # noqa: A001 - mirrors RK_ERR_TIMEOUT
    """``RK_ERR_TIMEOUT`` (reserved by the library; :meth:`Policy.acquire`
    reports running out of time as :class:`Throttled`)."""


class OutOfMemory(RatekeeperError, MemoryError):
    """Not enough memory, e.g. for a policy's table or in the shared file's
    ``max_bytes`` (``RK_ERR_OUT_OF_MEMORY``)."""


class IOFailure(RatekeeperError, OSError):
    """An operating-system call failed, e.g. opening or mapping a shared file
    (``RK_ERR_IO``)."""


class CorruptFile(RatekeeperError):
    """A shared-memory file is truncated, foreign, corrupt or of another
    layout version (``RK_ERR_CORRUPT``)."""


class UnsafeFile(RatekeeperError, PermissionError):
    """A shared-memory file that must not be trusted (``RK_ERR_UNSAFE_FILE``):
    not a regular file (a FIFO, a directory, ...), a symbolic link, owned by
    another user, or with permission bits beyond the configured ``mode``.
    Nothing in it was read or changed; the message says what is wrong."""


class UnsupportedPlatform(RatekeeperError):
    """This CPU or OS lacks something the engine needs
    (``RK_ERR_UNSUPPORTED_PLATFORM``)."""


class InternalError(RatekeeperError):
    """A bug in ratekeeper (a caught Rust panic, ``RK_ERR_PANIC``, or a
    buffer size the binding got wrong, ``RK_ERR_BUFFER_TOO_SMALL``): please
    report it with the message."""


class BackendError(RatekeeperError, ConnectionError):
    """The Redis backend could not be used (``RK_ERR_BACKEND``): the server
    refused the password, or is not a Redis server (the message names the
    server, never the password). Raised when the engine is opened
    (:meth:`Engine.redis <ratekeeper.Engine.redis>`); once open, a Redis
    that stops answering is handled by the engine's ``on_failure`` policy,
    never raised."""


class WrongEngineKind(RatekeeperError, TypeError):
    """The operation needs the other kind of engine, e.g. Redis statistics
    of an engine that is not Redis-backed (``RK_ERR_WRONG_ENGINE_KIND``)."""


class EngineClosed(RatekeeperError, RuntimeError):
    """The engine (or the engine of this policy or permit) was closed."""


class Throttled(RatekeeperError):
    """No permit could be had: raised by :meth:`Policy.acquire
    <ratekeeper.Policy.acquire>` when the concurrency limit stays full until
    the timeout. ``decision`` is the last denial (its ``retry_after`` says when
    a lease expires at the latest)."""

    def __init__(self, message: str, decision: Optional["Decision"] = None, policy: object = None):
        super().__init__(message)
        self.decision = decision
        self.policy = policy

    @property
    def retry_after(self) -> float:
        """Seconds until a permit's lease expires at the latest (``math.inf``
        when unknown)."""
        return self.decision.retry_after if self.decision is not None else float("inf")


#: rk_status value -> (C name, exception class). Values are never renumbered.
STATUS_CLASSES: Dict[int, "tuple[str, Type[RatekeeperError]]"] = {
    1: ("RK_ERR_NULL_POINTER", InvalidArgument),
    2: ("RK_ERR_NULL_KEY", InvalidArgument),
    3: ("RK_ERR_INVALID_UTF8", InvalidArgument),
    4: ("RK_ERR_PARSE", ParseError),
    5: ("RK_ERR_UNSUPPORTED_POLICY", UnsupportedPolicy),
    6: ("RK_ERR_POLICY_MISMATCH", PolicyMismatch),
    7: ("RK_ERR_UNKNOWN_POLICY", UnknownPolicy),
    8: ("RK_ERR_TOO_MANY_POLICIES", TooManyPolicies),
    9: ("RK_ERR_WRONG_POLICY_KIND", WrongPolicyKind),
    10: ("RK_ERR_INVALID_PERMIT", InvalidPermit),
    11: ("RK_ERR_TIMEOUT", TimeoutError),
    12: ("RK_ERR_OUT_OF_MEMORY", OutOfMemory),
    13: ("RK_ERR_IO", IOFailure),
    14: ("RK_ERR_CORRUPT", CorruptFile),
    15: ("RK_ERR_UNSUPPORTED_PLATFORM", UnsupportedPlatform),
    16: ("RK_ERR_INVALID_ARGUMENT", InvalidArgument),
    17: ("RK_ERR_PANIC", InternalError),
    18: ("RK_ERR_BUFFER_TOO_SMALL", InternalError),
    19: ("RK_ERR_BACKEND", BackendError),
    20: ("RK_ERR_WRONG_ENGINE_KIND", WrongEngineKind),
    21: ("RK_ERR_UNSAFE_FILE", UnsafeFile),
}

#: Pseudo-statuses of the binding itself (never returned by the library).
STATUS_ENGINE_CLOSED = -1
STATUS_CONCURRENCY_IN_BATCH = -2


def error_for_status(status: int, message: str = "") -> RatekeeperError:
    """The exception for a non-OK ``rk_status`` (the one place that maps
    statuses to classes). ``message`` is ``rk_last_error()``'s text; when
    empty, the status's own description is used."""
    if status == STATUS_ENGINE_CLOSED:
        return EngineClosed("the engine is closed (Engine.close() was called)")
    if status == STATUS_CONCURRENCY_IN_BATCH:
        return WrongPolicyKind("check_many: a concurrency policy cannot be checked: use acquire/release")
    name, cls = STATUS_CLASSES.get(status, (f"rk_status {status}", RatekeeperError))
    if not message:
        message = f"{name}: {_status_str(status)}"
    return cls(message, status=status, status_name=name)


def _status_str(status: int) -> str:
    try:
        from ._ratekeeper import status_str

        return status_str(status) if status >= 0 else "unknown status"
    except Exception:  # pragma: no cover - only while the module is broken
        return "unknown status"
