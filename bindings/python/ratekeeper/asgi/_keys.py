"""Key functions of the ASGI middleware: the same names and values as
:mod:`ratekeeper.flask`'s (``remote_addr``, ``header``, ``user``,
``endpoint``). Like Flask's they take no arguments: they read the request
being checked from a context variable that the middleware sets for the
duration of the check (:func:`current_scope`)."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Union

from .._web.client_ip import client_address_of
from .._web.plan import KeyFunc
from .._web.keys import user_key

if TYPE_CHECKING:  # pragma: no cover
    from ._extension import _AsgiState


class _Checking:
    """The request being checked: its ASGI scope, the limiter's state and
    its endpoint name; headers decoded once, on first use."""

    __slots__ = ("scope", "state", "endpoint", "_headers")

    def __init__(self, scope: Dict[str, Any], state: "_AsgiState", endpoint_name: Optional[str]):
        self.scope = scope
        self.state = state
        self.endpoint = endpoint_name
        self._headers: Optional[Dict[str, str]] = None

    def header(self, lower_name: str) -> Optional[str]:
        """A request header's value (the first of its name), or None."""
        headers = self._headers
        if headers is None:
            headers = {}
            for name, value in self.scope.get("headers") or ():
                headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
            self._headers = headers
        return headers.get(lower_name)

    def peer(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    def address(self) -> str:
        st = self.state
        return client_address_of(self.peer(), self.header("x-forwarded-for") if st.trusted_proxies else None,
                                 st.trusted_proxies, st.ipv6_prefix)


_checking: "contextvars.ContextVar[Optional[_Checking]]" = contextvars.ContextVar("ratekeeper_asgi_request",
                                                                                   default=None)


def _current() -> _Checking:
    checking = _checking.get()
    if checking is None:
        raise RuntimeError("ratekeeper.asgi key functions run only while the middleware checks a request")
    return checking


def current_scope() -> Dict[str, Any]:
    """The ASGI scope of the request being checked (for key functions of
    your own: ``lambda: current_scope()["path"]``, ``scope["user"]`` of
    Starlette's AuthenticationMiddleware, ``scope["state"]``...)."""
    return _current().scope


def remote_addr() -> str:
    """The client's IP address, as a key: the peer (``scope["client"]``),
    or with ``trusted_proxies = N`` the N-th ``X-Forwarded-For`` entry from
    the right; IPv6 grouped by ``ipv6_prefix`` (default /64). The same
    values as :func:`ratekeeper.flask.remote_addr`."""
    return _current().address()


def header(name: str, fallback: Optional[KeyFunc] = remote_addr) -> KeyFunc:
    """A key function: ``"<name>:<value>"`` of request header ``name`` (e.g.
    ``header("X-API-Key")``); requests without it are keyed by
    ``fallback()`` (default: the client address; ``None``: the limit does
    not apply to them)."""
    lower = name.lower()

    def key() -> Union[str, bytes, None]:
        value = _current().header(lower)
        if value:
            return f"{lower}:{value}"
        return fallback() if fallback is not None else None

    key.__name__ = f"header({name!r})"
    key.__qualname__ = key.__name__
    return key


def user(get_id: Callable[[], Any], fallback: Optional[KeyFunc] = remote_addr) -> KeyFunc:
    """A key function: ``"user:<id>"`` where ``get_id()`` returns the current
    user's id (e.g. ``lambda: current_scope()["state"].get("user_id")``);
    anonymous requests (``None``) are keyed by ``fallback()``."""

    return user_key(get_id, fallback)


def endpoint() -> str:
    """A key function: the endpoint itself (one counter per route for all
    clients together): the route's name, else the path."""
    return f"endpoint:{_current().endpoint}"
