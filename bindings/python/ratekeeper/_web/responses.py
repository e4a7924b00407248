"""What a checked request's response gets, whatever the framework: the
rate-limit header fields, the over-limit :class:`Breach` and its
problem+json body (RFC 9457), and ``deduct_when`` refunds. The Flask
extension and the ASGI middleware build their 429s here, so the same
decision gets the same bytes from both."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .._core import U64_MAX, Decision, Policy
from .._ratekeeper import rate_limit_fields as _rate_limit_fields
from ..errors import RatekeeperError
from .plan import LimitDecl, _Entry, _item_name

if TYPE_CHECKING:  # pragma: no cover
    from .state import LimiterState

log = logging.getLogger("ratekeeper.flask")

#: The problem+json media type of every response the limiter writes.
PROBLEM_JSON = "application/problem+json"
FORBIDDEN_DETAIL = "This client is not allowed to use this service."
UNAVAILABLE_DETAIL = "The rate limiter is unavailable."


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

    __slots__ = ("state", "items", "plan", "decision", "allowed", "index", "deduct",
                 "response_is_ours", "fragment")

    #: For a request with one limit: its (RateLimit-Policy value, names);
    #: else None (built from every item in start_response).
    fragment: Optional[Tuple[str, Tuple[str, ...]]]

    def __init__(self, state: "LimiterState", items: List[Tuple[Policy, Any, int]], plan: List[_Entry],
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


def problem_json(problem_type: str, status: int, title: str, detail: str, **extra: Any) -> str:
    """An ``application/problem+json`` body (RFC 9457): ``type``, ``title``,
    ``status``, ``detail``, then ``extra`` members."""
    body = {"type": problem_type, "title": title, "status": status, "detail": detail, **extra}
    return json.dumps(body)


def breach_of(ctx: _Context) -> Tuple[Breach, "_Entry"]:
    """The :class:`Breach` of a denied request's context, and the plan
    entry that denied."""
    d = ctx.decision
    entry = ctx.plan[ctx.index]
    policy, key, _cost = ctx.items[ctx.index]
    limit = policy.limits[d.limit_index] if d.limit_index < len(policy.limits) else policy.limits[0]
    name = _item_name(entry.base, policy, d.limit_index)
    retry_after = None if d.retry_after_ns == U64_MAX else max(1, _ceil_s(d.retry_after_ns))
    window = max(1, _ceil_s(limit.period_ns))
    return Breach(d, entry.decl, policy, name, key, retry_after, d.limit, window), entry


def over_limit_problem(breach: Breach) -> Tuple[str, Dict[str, Any]]:
    """The 429 body's ``detail`` and extra members (``policy``,
    ``retry_after``, ``banned``) of a breach."""
    d, name, retry_after, window = breach.decision, breach.name, breach.retry_after, breach.window
    if breach.limit.error_message:
        detail = breach.limit.error_message
    elif d.banned:
        detail = f"Too many requests over the {name} limit: this client is banned for {retry_after} s."
    elif retry_after is None:
        detail = f"This request costs more than the {name} limit ({d.limit} per {window} s) can ever allow."
    else:
        detail = f"Rate limit {name} exceeded ({d.limit} per {window} s); retry in {retry_after} s."
    extra: Dict[str, Any] = {"policy": name, "retry_after": retry_after}
    if d.banned:
        extra["banned"] = True
    return detail, extra


def _deduct(ctx: _Context, response: Any) -> Any:
    """After the response of a request with a ``deduct_when`` limit
    (Flask: an after_this_request hook; ASGI: at http.response.start):
    refunds the charges whose ``deduct_when(response)`` is False, at the
    time they were decided at (the decision's ``at_ns``: the engine's clock,
    or Redis's for a decision Redis made), so that a refund lands in the
    window its charge did (README, "refund")."""
    at = ctx.decision.at_ns
    for entry, (policy, key, cost) in zip(ctx.plan, ctx.items):
        decl = entry.decl
        if decl.deduct_when is not None and not decl.deduct_when(response):
            try:
                policy.refund(key, cost, at)
            except RatekeeperError as e:
                log.warning("ratekeeper: refund failed: %s", e)
    return response


def entry_fragment(st: "LimiterState", entry: _Entry, policy: Policy) -> Tuple[str, Tuple[str, ...]]:
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


def log_shadow(st: "LimiterState", ctx: _Context, hits: Sequence[Tuple[int, Decision]]) -> None:
    """Logs the would-be denials of shadow-mode limits that let a request pass."""
    log_ = st.deny_log
    for i, d in hits:
        entry = ctx.plan[i]
        policy, key, _cost = ctx.items[i]
        log_.deny("shadow_denied", policy.name, key, record_key=entry.opts.record_keys,
                  retry_after=d.retry_after, limit=_item_name(entry.base, policy, d.limit_index),
                  banned=d.banned, shadow=True)
