"""What the ASGI middleware writes itself: :class:`_Reply` (a 429, 403 or
503 with ratekeeper.flask's problem+json body and fields, or a custom ASGI
response with the fields it lacks), :class:`RateLimited` (a dependency's
own denial) and what ``deduct_when`` sees of a response."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Tuple

from .._web.responses import PROBLEM_JSON, problem_json

try:
    from starlette.exceptions import HTTPException as _HTTPException
except ImportError:  # pragma: no cover - plain ASGI without Starlette
    _HTTPException = Exception  # type: ignore[misc, assignment]

if TYPE_CHECKING:  # pragma: no cover
    from ._extension import _AsgiState

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RateLimited(_HTTPException):  # type: ignore[misc, valid-type]
    """Raised by a :meth:`Ratekeeper.limit` dependency that checked its
    limit itself (a route the middleware could not resolve before routing)
    and was denied. The handler :meth:`Ratekeeper.init_app` registers (and
    the middleware, if it reaches it) answers with the 429 of the
    middleware; an app without that handler still answers 429 with the
    same header fields (a Starlette ``HTTPException``)."""

    def __init__(self, reply: "_Reply"):
        fields = {n: v for n, v in reply.headers if n.lower() not in ("content-type", "content-length")}
        if _HTTPException is Exception:  # pragma: no cover
            super().__init__("rate limited")
        else:
            super().__init__(status_code=reply.status, detail="Too Many Requests", headers=fields)
        self.reply = reply


async def _rate_limited_handler(request: Any, exc: RateLimited) -> Any:
    """Starlette exception handler: the reply, as an ASGI app."""
    return exc.reply


class _Reply:
    """A response the limiter writes itself: status, header fields, body."""

    __slots__ = ("status", "headers", "body", "app")

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes = b"", app: Any = None):
        self.status = status
        self.headers = headers
        self.body = body
        self.app = app  #: a custom ASGI response (``response=``), sent with ``headers`` added if absent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send(scope, receive, send)

    async def send(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is not None:
            extra = self.headers

            async def send_with_fields(message: Dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers") or ())
                    present = {bytes(name).lower() for name, _ in headers}
                    headers.extend((n.lower().encode("latin-1"), v.encode("latin-1"))
                                   for n, v in extra if n.lower().encode("latin-1") not in present)
                    message = dict(message, headers=headers)
                await send(message)

            await self.app(scope, receive, send_with_fields)
            return
        await send({
            "type": "http.response.start",
            "status": self.status,
            "headers": [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in self.headers],
        })
        await send({"type": "http.response.body", "body": self.body})


def _problem_reply(st: "_AsgiState", status: int, title: str, detail: str, **extra: Any) -> _Reply:
    """The problem+json response of ratekeeper.flask (the same body, and
    its Content-Type and Content-Length fields)."""
    body = problem_json(st.problem_type, status, title, detail, **extra).encode("utf-8")
    return _Reply(status, [("Content-Type", PROBLEM_JSON), ("Content-Length", str(len(body)))], body)


class _ResponseView:
    """What ``deduct_when(response)`` gets: the status and header fields
    of the response being started (``response.status_code >= 400`` works
    as with Flask)."""

    __slots__ = ("status_code", "headers")

    def __init__(self, status_code: int, headers: Dict[str, str]):
        self.status_code = status_code
        self.headers = headers
