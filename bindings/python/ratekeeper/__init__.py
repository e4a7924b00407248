"""ratekeeper: an embedded, lock-free rate-limit engine (GCRA, fixed and
sliding windows, sliding logs, concurrency permits), in process or in shared
memory so that every Gunicorn/uWSGI worker enforces one limit together, or
in Redis so that every host does.

>>> import ratekeeper
>>> engine = ratekeeper.Engine()                      # or Engine.shared("/dev/shm/app")
>>> login = engine.policy("login", "5/minute;20/hour")
>>> d = login.check("ip:203.0.113.7")
>>> d.allowed, d.limit, d.remaining
(True, 5, 4)

Many hosts: ``Engine.redis("redis://host:6379/0")`` (one Redis round trip
per check, with a local fallback while Redis is down).

Flask: :mod:`ratekeeper.flask`; Gunicorn hooks: :mod:`ratekeeper.gunicorn`;
Prometheus: :mod:`ratekeeper.prometheus`; storages for ``limits``
(Flask-Limiter, slowapi: ``storage_uri="ratekeeper+shm:///dev/shm/app.rk"``):
``import ratekeeper.limits_storage``.
"""

from ._version import __version__
from ._core import (
    U64_MAX,
    Decision,
    DenyEvent,
    Engine,
    Key,
    Limit,
    Penalty,
    Permit,
    Policy,
    Stats,
    library_version,
    now_ns,
    redis_engine,
    shared_engine,
)
from .errors import (
    BackendError,
    CorruptFile,
    UnsafeFile,
    EngineClosed,
    InternalError,
    InvalidArgument,
    InvalidPermit,
    IOFailure,
    OutOfMemory,
    ParseError,
    PolicyMismatch,
    RatekeeperError,
    Throttled,
    TooManyPolicies,
    UnknownPolicy,
    UnsupportedPlatform,
    UnsupportedPolicy,
    WrongEngineKind,
    WrongPolicyKind,
)

__all__ = [
    "__version__",
    "Engine",
    "Policy",
    "Decision",
    "Permit",
    "Stats",
    "Penalty",
    "DenyEvent",
    "Limit",
    "Key",
    "now_ns",
    "shared_engine",
    "redis_engine",
    "library_version",
    "U64_MAX",
    "RatekeeperError",
    "InvalidArgument",
    "ParseError",
    "UnsupportedPolicy",
    "PolicyMismatch",
    "UnknownPolicy",
    "TooManyPolicies",
    "WrongPolicyKind",
    "InvalidPermit",
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
]
