"""Declarations (:class:`LimitDecl`) and the per-route plan: which limits
apply to an endpoint, each with what can be computed once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import flask
from flask import Flask

from .._core import Engine, Penalty, Policy
from ._constants import _APP_SCOPE
from ._keys import KeyFunc, remote_addr
from ._options import PLAIN, PolicyOptions, check_jitter

if TYPE_CHECKING:  # pragma: no cover
    from ._extension import Ratekeeper

Spec = Union[str, Callable[[], str]]


@dataclass(eq=False)
class LimitDecl:
    """One declared limit: a spec (one engine policy, possibly of several
    limits) with how to key, charge and scope it. Made by
    :meth:`Ratekeeper.limit` and friends."""

    spec: Spec
    kind: str  #: "application", "default", "route", "shared" or "blueprint"
    key: Optional[KeyFunc] = None
    cost: Union[int, Callable[[], int]] = 1
    methods: Optional[FrozenSet[str]] = None
    per_method: bool = False
    scope: Union[str, Callable[[], str], None] = None
    deduct_when: Optional[Callable[[flask.Response], bool]] = None
    exempt_when: Optional[Callable[[], bool]] = None
    override_defaults: bool = True
    name: Optional[str] = None
    error_message: Optional[str] = None
    #: Abuse control; None: the app's default (RATEKEEPER_SHADOW, ...).
    shadow: Optional[bool] = None
    retry_jitter: Optional[float] = None
    penalty: Optional[Penalty] = None
    record_keys: Optional[bool] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.spec, str) or callable(self.spec)):
            raise TypeError(f"a limit spec must be a str or a callable returning one, not {self.spec!r}")
        if isinstance(self.spec, str):
            _validate_spec(self.spec)
        if isinstance(self.cost, bool) or not (isinstance(self.cost, int) or callable(self.cost)):
            raise TypeError(f"cost must be an int or a callable returning one, not {self.cost!r}")
        if self.methods is not None:
            self.methods = frozenset(m.upper() for m in self.methods)
        if self.penalty is not None and not isinstance(self.penalty, Penalty):
            raise TypeError(f"penalty must be a ratekeeper.Penalty, not {self.penalty!r}")
        if self.retry_jitter is not None:
            check_jitter(self.retry_jitter)


def _validate_spec(spec: str) -> None:
    """Raises ParseError (with the byte position) for a bad spec at
    declaration time, not at the first request."""
    with Engine(capacity=1) as scratch:
        scratch.policy("validate", spec)


class _Entry:
    """One declaration as it applies to one endpoint, with what can be
    computed once: its header name and, for a *simple* declaration (static
    spec, scope and cost, the remote_addr key, no method filter, no
    exempt_when, not per method), the key prefix, so that the request path
    only appends the client address."""

    __slots__ = ("decl", "base", "prefix", "cost", "policy", "deduct", "opts", "fragment")

    def __init__(self, decl: LimitDecl, base: str, endpoint_name: Optional[str], default_key: KeyFunc,
                 opts: PolicyOptions = PLAIN):
        self.decl = decl
        self.base = base
        self.opts = opts
        self.policy: Optional[Policy] = None  # cached per engine (checked on use)
        #: (policy, its RateLimit-Policy value and names), cached by _responses.entry_fragment.
        self.fragment: Optional[Tuple[Policy, Tuple[str, Tuple[str, ...]]]] = None
        self.deduct = decl.deduct_when is not None
        self.cost = decl.cost
        simple = (
            isinstance(decl.spec, str)
            and (decl.key or default_key) is remote_addr
            and (decl.scope is None or isinstance(decl.scope, str))
            and not decl.per_method
            and isinstance(decl.cost, int)
            and decl.methods is None
            and decl.exempt_when is None
        )
        scope = decl.scope if decl.scope is not None else (endpoint_name or "")
        self.prefix: Optional[str] = f"{scope}\x00" if simple else None


def _blueprint_chain(app: Flask, endpoint_name: Optional[str]) -> List[str]:
    """Names of the blueprints of an endpoint, innermost first
    (``"outer.inner.view"`` -> ``["outer.inner", "outer"]``)."""
    if not endpoint_name or "." not in endpoint_name:
        return []
    parts = endpoint_name.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts) - 1, -1, -1)]


def _base_name(decl: LimitDecl, endpoint_name: Optional[str]) -> str:
    """A declaration's name in the RateLimit headers: its ``name``, else its
    scope, else the endpoint."""
    if decl.name is not None:
        return decl.name
    if isinstance(decl.scope, str) and decl.scope != _APP_SCOPE:
        return decl.scope
    return endpoint_name or "default"


def _item_name(base: str, policy: Policy, index: int) -> str:
    """The RateLimit policy item name of limit ``index`` of a declaration
    named ``base``: ``base``, with ``-<index>`` when its spec has several
    limits."""
    if len(policy.limits) > 1:
        return f"{base}-{index}"
    return base


def _decl_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    allowed = {"key", "cost", "methods", "per_method", "scope", "deduct_when", "exempt_when",
               "override_defaults", "name", "error_message", "shadow", "retry_jitter", "penalty", "record_keys"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown limit arguments: {', '.join(sorted(unknown))}")
    if kwargs.get("methods") is not None:
        kwargs["methods"] = frozenset(kwargs["methods"])
    return kwargs


def build_plan(
    ext: "Ratekeeper",
    app: Flask,
    endpoint_name: Optional[str],
    app_limits: Sequence[LimitDecl],
    default_limits: Sequence[LimitDecl],
    default_key: KeyFunc,
    options: Callable[[LimitDecl], PolicyOptions],
) -> Tuple[_Entry, ...]:
    """The declarations that may apply to ``endpoint_name``, in order:
    application limits; the view's own; unless they all override the
    defaults, its blueprints' limits, else the default limits. Nothing for
    an exempt view; an exempt blueprint keeps only its views' own limits."""
    view = app.view_functions.get(endpoint_name) if endpoint_name else None
    own = ext._view_limits(view)
    exempt_view = ext._is_exempt(view)
    bp_names = _blueprint_chain(app, endpoint_name)
    exempt_bp = any(b in ext._exempt_blueprints for b in bp_names)
    decls: List[LimitDecl] = []
    if not exempt_view:
        if not exempt_bp:
            decls.extend(app_limits)
        decls.extend(own)
        if not own or not all(d.override_defaults for d in own):
            bp_limits = [d for b in bp_names for d in ext._blueprint_limits.get(b, ())]
            if not exempt_bp:
                decls.extend(bp_limits)
                if not bp_limits:
                    decls.extend(default_limits)
    return tuple(_Entry(d, _base_name(d, endpoint_name), endpoint_name, default_key, options(d)) for d in decls)
