"""Key functions: what a limit counts per (the client address, a header, the
user, the endpoint)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from flask import Flask, current_app, request

from .._web.client_ip import _client_address
from .._web.constants import _STATE_ENV
from .._web.plan import KeyFunc
from .._web.keys import user_key

if TYPE_CHECKING:  # pragma: no cover
    from ._extension import _State

def remote_addr() -> str:
    """The client's IP address, as a key.

    With ``RATEKEEPER_TRUSTED_PROXIES = N`` (N > 0 proxies in front of the
    app), the N-th address from the right of ``X-Forwarded-For`` (the one the
    outermost trusted proxy saw; if the header has fewer than N entries, the
    peer address). With N = 0 (the default) only the peer address
    (``REMOTE_ADDR``): a client-supplied header is never trusted. IPv6
    addresses are grouped by their ``RATEKEEPER_IPV6_PREFIX`` (default /64,
    what one customer usually gets), e.g. ``2001:db8:1:2::/64``;
    IPv4-mapped IPv6 addresses count as IPv4.
    """
    environ = request.environ
    st = environ.get(_STATE_ENV)
    if st is None:
        st = _state_of(current_app)
    return _client_address(environ, st.trusted_proxies, st.ipv6_prefix)


def header(name: str, fallback: Optional[KeyFunc] = remote_addr) -> KeyFunc:
    """A key function: the value of request header ``name`` (e.g.
    ``header("X-API-Key")``), as ``"<name>:<value>"``. Requests without it
    are keyed by ``fallback()`` (default: the client address); with
    ``fallback=None`` the limit does not apply to them."""
    lower = name.lower()
    environ_key = "HTTP_" + name.upper().replace("-", "_")

    def key() -> Union[str, bytes, None]:
        value = request.environ.get(environ_key)
        if value:
            return f"{lower}:{value}"
        return fallback() if fallback is not None else None

    key.__name__ = f"header({name!r})"
    key.__qualname__ = key.__name__
    return key


def user(get_id: Callable[[], Any], fallback: Optional[KeyFunc] = remote_addr) -> KeyFunc:
    """A key function: ``"user:<id>"`` where ``get_id()`` returns the current
    user's id (e.g. ``lambda: session.get("user_id")`` or
    ``lambda: current_user.get_id()``). Anonymous requests (``None``) are
    keyed by ``fallback()`` (default: the client address); with
    ``fallback=None`` the limit does not apply to them."""

    return user_key(get_id, fallback)


def endpoint() -> str:
    """A key function: the endpoint itself (one counter per route for all
    clients together, e.g. to protect an expensive backend)."""
    return f"endpoint:{request.endpoint}"


def _state_of(app: Flask) -> "_State":
    try:
        return app.extensions["ratekeeper"]
    except KeyError:
        raise RuntimeError("ratekeeper.flask.Ratekeeper was not initialised for this app (init_app)") from None
