"""What a checked request's response gets: the rate-limit header fields
(appended in start_response by a WSGI middleware), the problem+json body of
a 429/403/503, the over-limit :class:`Breach`, and ``deduct_when`` refunds."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Tuple

import flask

from .._ratekeeper import rate_limit_fields as _rate_limit_fields
from .._web.constants import _CTX_ENV
from .._web.responses import (
    PROBLEM_JSON, Breach, _ceil_s, _Context, _deduct, _header_fields, _sf_string, entry_fragment,
    problem_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._extension import _State

__all__ = ["Breach", "_ceil_s", "_Context", "_deduct", "_header_fields", "_sf_string", "entry_fragment",
           "_problem", "headers_middleware"]


def _problem(st: "_State", status: int, title: str, detail: str, **extra: Any) -> flask.Response:
    """An ``application/problem+json`` response (RFC 9457): ``type``,
    ``title``, ``status``, ``detail``, then ``extra`` members."""
    return flask.Response(problem_json(st.problem_type, status, title, detail, **extra), status=status,
                          mimetype=PROBLEM_JSON)


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
