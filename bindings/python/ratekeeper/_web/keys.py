"""Key-function building blocks shared by the Flask extension and the ASGI
middleware (each binds its own default fallback, the client address)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

KeyFunc = Callable[[], Union[str, bytes, None]]


def user_key(get_id: Callable[[], Any], fallback: Optional[KeyFunc]) -> KeyFunc:
    """``"user:<id>"`` where ``get_id()`` returns the current user's id;
    anonymous requests (``None``) are keyed by ``fallback()``, or not
    limited with ``fallback=None``."""

    def key() -> Union[str, bytes, None]:
        uid = get_id()
        if uid is not None:
            return f"user:{uid}"
        return fallback() if fallback is not None else None

    key.__name__ = "user"
    return key
