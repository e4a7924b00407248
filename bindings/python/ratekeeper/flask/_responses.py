"""What a checked request's response gets: the rate-limit header fields
(appended in start_response by a WSGI middleware), the problem+json body of
a 429/403/503, the over-limit :class:`Breach`, and ``deduct_when`` refunds."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import flask

from .._core import Decision, Policy
from .._ratekeeper import rate_limit_fields as _rate_limit_fields
from ..errors import RatekeeperError
from ._constants import _CTX_ENV
from ._plan import LimitDecl, _Entry

if TYPE_CHECKING:  # pragma: no cover
    from ._extension import _State

log = logging.getLogger("ratekeeper.flask")


@dataclass(frozen=True)
class Breach:
    """What :func:`on_breach` hooks and custom ``response`` builders get when a
    request is throttled."""

    decision: Decision  #: the binding decision (denied)
    limit: LimitDecl  #: the declaration that denied
    policy: Policy  #: its engine policy
    name: str  #: the policy item name used in the RateLimit headers
    key: Union[str, bytes]  #: the engine key (scope + key function value)
    retry_after: Optional[int]  #: whole seconds (None: never)
    quota: int  #: quota of the binding limit
    window: int  #: its window in whole seconds


def _ceil_s(ns: int) -> int:
    return -(-ns // 1_000_000_000)


def _sf_string(name: str) -> str:
    """``name`` as a structured-field String (RFC 8941): printable ASCII,
    with quotes and backslashes escaped."""
    cleaned = "".join(c if " " <= c <= "~" else "_" for c in name)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Context:
    """What one request's check leaves in the WSGI environ for the response
    fields (headers_middleware) and deduct_when (_deduct)."""

    __slots__ = ("state", "items", "plan", "decision", "allowed", "index", "deduct", "response_is_ours", "fragment")

    #: For a request with one limit: its (RateLimit-Policy value, names);
    #: else None (built from every item in start_response).
    fragment: Optional[Tuple[str, Tuple[str, ...]]]

    def __init__(self, state: "_State", items: List[Tuple[Policy, Any, int]], plan: List[_Entry],
                 decision: Decision, index: int, deduct: bool):
        self.state = state
        self.items = items
        self.plan = plan
        self.decision = decision
        self.allowed = decision.allowed
        self.index = index
        self.deduct = deduct
        self.response_is_ours = False
        self.fragment = None


def _problem(st: "_State", status: int, title: str, detail: str, **extra: Any) -> flask.Response:
    """An ``application/problem+json`` response (RFC 9457): ``type``,
    ``title``, ``status``, ``detail``, then ``extra`` members."""
    body = {"type": st.problem_type, "title": title, "status": status, "detail": detail, **extra}
    return flask.Response(json.dumps(body), status=status, mimetype="application/problem+json")


def _deduct(ctx: _Context, response: flask.Response) -> flask.Response:
    """after_this_request hook of requests with a ``deduct_when`` limit:
    refunds the charges whose ``deduct_when(response)`` is False."""
    for entry, (policy, key, cost) in zip(ctx.plan, ctx.items):
        decl = entry.decl
        if decl.deduct_when is not None and not decl.deduct_when(response):
            try:
                policy.refund(key, cost)
            except RatekeeperError as e:
                log.warning("ratekeeper: refund failed: %s", e)
    return response


def entry_fragment(st: "_State", entry: _Entry, policy: Policy) -> Tuple[str, Tuple[str, ...]]:
    """An entry's RateLimit-Policy value and item names under ``policy``,
    cached on the entry (one attribute read per request)."""
    cached = entry.fragment
    if cached is not None and cached[0] is policy:
        return cached[1]
    value = st.fragment(entry.base, policy)
    entry.fragment = (policy, value)
    return value


def _header_fields(ctx: _Context) -> List[Tuple[str, str]]:
    """The rate-limit fields of a checked request: ``RateLimit-Policy`` (every
    limit that applied), ``RateLimit`` (the binding one) and, if enabled, the
    legacy ``X-RateLimit-*`` (``X-RateLimit-Reset``: Unix time, seconds)."""
    st = ctx.state
    items = ctx.items
    if ctx.fragment is not None:
        policy_value, names = ctx.fragment
    elif len(items) == 1:
        policy_value, names = st.fragment(ctx.plan[0].base, items[0][0])
    else:
        parts = [st.fragment(entry.base, item[0]) for entry, item in zip(ctx.plan, items)]
        policy_value = ", ".join([p[0] for p in parts])
        names = parts[ctx.index][1]
    legacy = st.legacy_headers
    return _rate_limit_fields(ctx.decision, policy_value, names, legacy, int(time.time()) if legacy else 0)


def headers_middleware(wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps ``app.wsgi_app``: appends the rate-limit fields of the request
    (if a limit applied) to the response's header list in start_response.
    (A closure, not an object with ``__call__``: cheaper to call.)"""

    def ratekeeper_wsgi_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def ratekeeper_start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            ctx = environ.pop(_CTX_ENV, None)
            if ctx is not None:
                if ctx.allowed:
                    st = ctx.state
                    if st.headers_enabled:
                        fragment = ctx.fragment
                        if fragment is not None:  # one limit: the common case, without a call of _header_fields
                            legacy = st.legacy_headers
                            headers.extend(_rate_limit_fields(ctx.decision, fragment[0], fragment[1], legacy,
                                                              int(time.time()) if legacy else 0))
                        else:
                            headers.extend(_header_fields(ctx))
                elif ctx.response_is_ours:
                    headers.extend(_header_fields(ctx))
                else:  # a custom over-limit response may set its own fields
                    present = {name.lower() for name, _ in headers}
                    headers.extend(f for f in _header_fields(ctx) if f[0].lower() not in present)
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, ratekeeper_start_response)

    ratekeeper_wsgi_app.wsgi_app = wsgi_app  # type: ignore[attr-defined]
    return ratekeeper_wsgi_app
