"""Configuration keys and their defaults (the Flask extension and the ASGI
middleware take the same options), and the names the Flask extension
keeps in the WSGI environ."""

from __future__ import annotations

from typing import Any, Dict

#: RATEKEEPER_* config keys and their defaults (constructor keyword
#: arguments of the same name in lower case, without the prefix, win over
#: ``app.config``; ``app.config`` wins over these defaults).
DEFAULTS: Dict[str, Any] = {
    "RATEKEEPER_ENABLED": True,
    "RATEKEEPER_DEFAULT": None,
    "RATEKEEPER_APPLICATION_LIMITS": None,
    "RATEKEEPER_SHARED_PATH": None,
    "RATEKEEPER_SHARED_MAX_BYTES": None,
    "RATEKEEPER_SHARED_MODE": 0o600,
    "RATEKEEPER_REDIS_URL": None,
    "RATEKEEPER_REDIS_ON_FAILURE": None,
    "RATEKEEPER_REDIS_OPTIONS": None,
    "RATEKEEPER_CAPACITY": None,
    "RATEKEEPER_WHEN_FULL": "evict",
    "RATEKEEPER_KEY_PREFIX": "flask",
    "RATEKEEPER_HEADERS_ENABLED": True,
    "RATEKEEPER_LEGACY_HEADERS": False,
    "RATEKEEPER_FAIL_OPEN": True,
    "RATEKEEPER_TRUSTED_PROXIES": 0,
    "RATEKEEPER_IPV6_PREFIX": 64,
    "RATEKEEPER_PROBLEM_TYPE": "about:blank",
    # abuse control
    "RATEKEEPER_ALLOWLIST": None,
    "RATEKEEPER_DENYLIST": None,
    "RATEKEEPER_SHADOW": False,
    "RATEKEEPER_RETRY_JITTER": 0.0,
    "RATEKEEPER_PENALTY": None,
    "RATEKEEPER_RECORD_KEYS": False,
    # monitoring
    "RATEKEEPER_METRICS_ENDPOINT": None,
    "RATEKEEPER_LOG_MAX_PER_SECOND": 10,
    "RATEKEEPER_LOG_LEVEL": "INFO",
    "RATEKEEPER_LOG_HASH_SALT": None,
}

_OPTION_NAMES = {key[len("RATEKEEPER_"):].lower(): key for key in DEFAULTS}
_OPTION_NAMES["application_limits"] = "RATEKEEPER_APPLICATION_LIMITS"
_CALLABLE_OPTIONS = ("on_breach", "response")

#: WSGI environ keys: the app's state (for key functions) and the
#: request's check (for the response fields).
_STATE_ENV = "ratekeeper.state"
_CTX_ENV = "ratekeeper.context"
_APP_SCOPE = "\x01app"  # cannot collide with an endpoint name
