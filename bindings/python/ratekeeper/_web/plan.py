"""Limit declarations (:class:`LimitDecl`) and what a plan entry computes
once per declaration and route: framework-neutral, used by the Flask
extension and the ASGI middleware alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

from .._core import Engine, Penalty, Policy
from .constants import _APP_SCOPE
from .options import PLAIN, PolicyOptions, check_jitter

#: A key function: no arguments (it reads the current request from its
#: framework's context), returns the key (str or bytes), or None to skip
#: the limit for this request.
KeyFunc = Callable[[], Union[str, bytes, None]]
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
    deduct_when: Optional[Callable[[Any], bool]] = None
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
    spec, scope and cost, the framework's client-address key
    ``address_key``, no method filter, no
    exempt_when, not per method), the key prefix, so that the request path
    only appends the client address."""

    __slots__ = ("decl", "base", "prefix", "cost", "policy", "deduct", "opts", "fragment")

    def __init__(self, decl: LimitDecl, base: str, endpoint_name: Optional[str], default_key: KeyFunc,
                 opts: PolicyOptions = PLAIN, address_key: Optional[KeyFunc] = None):
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
            and address_key is not None
            and (decl.key or default_key) is address_key
            and (decl.scope is None or isinstance(decl.scope, str))
            and not decl.per_method
            and isinstance(decl.cost, int)
            and decl.methods is None
            and decl.exempt_when is None
        )
        scope = decl.scope if decl.scope is not None else (endpoint_name or "")
        self.prefix: Optional[str] = f"{scope}\x00" if simple else None


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




def decls_from(kind: str, specs: Any, name: str) -> List[LimitDecl]:
    """The declarations of application or default limits: a spec, a list of
    specs or a callable; named ``name`` (``name-0``, ``name-1``... for a
    list)."""
    if specs is None or specs == "":
        return []
    if isinstance(specs, str) or callable(specs):
        specs = [specs]
    specs = list(specs)
    return [
        LimitDecl(spec, kind, name=name if len(specs) == 1 else f"{name}-{i}",
                  scope=_APP_SCOPE if kind == "application" else None)
        for i, spec in enumerate(specs)
    ]
