"""The per-route plan: which declarations (:class:`LimitDecl`, in
``ratekeeper._web.plan`` with the rest of the framework-neutral code) apply
to a Flask endpoint, each with what can be computed once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from flask import Flask

from .._web.options import PolicyOptions
from .._web.plan import KeyFunc, LimitDecl, Spec, _base_name, _decl_kwargs, _Entry, _item_name, _validate_spec
from ._keys import remote_addr

if TYPE_CHECKING:  # pragma: no cover
    from ._extension import Ratekeeper

__all__ = ["LimitDecl", "Spec", "KeyFunc", "build_plan", "_Entry", "_item_name", "_decl_kwargs", "_base_name",
           "_validate_spec"]


def _blueprint_chain(app: Flask, endpoint_name: Optional[str]) -> List[str]:
    """Names of the blueprints of an endpoint, innermost first
    (``"outer.inner.view"`` -> ``["outer.inner", "outer"]``)."""
    if not endpoint_name or "." not in endpoint_name:
        return []
    parts = endpoint_name.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts) - 1, -1, -1)]


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
    return tuple(_Entry(d, _base_name(d, endpoint_name), endpoint_name, default_key, options(d), remote_addr)
                 for d in decls)
