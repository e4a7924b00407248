"""Where ratekeeper.asgi leaves the event loop: :func:`run_off_loop` (a
worker thread), used for Redis round trips and for opening an engine, and
:func:`acquire` / :func:`release` for concurrency permits."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Optional

from .._core import Permit, Policy


async def run_off_loop(fn: Callable[[], Any]) -> Any:
    """Runs ``fn()`` in a worker thread and awaits it: anyio's
    ``to_thread.run_sync`` (its default limiter: 40 threads) when anyio is
    installed (it is with Starlette and FastAPI), else
    ``asyncio.to_thread`` (the loop's default executor)."""
    try:
        import anyio.to_thread
    except ImportError:  # pragma: no cover - plain asyncio
        return await asyncio.to_thread(fn)
    return await anyio.to_thread.run_sync(fn)


async def acquire(policy: Policy, key: Any, timeout: Optional[float] = None) -> Permit:
    """:meth:`Policy.acquire` from async code: a try without waiting on an
    in-process or shared engine runs inline; a wait (``timeout`` > 0) or a
    Redis engine runs in a thread (:func:`run_off_loop`), so the event loop
    never blocks. Raises :class:`ratekeeper.Throttled` as ``acquire`` does."""
    if timeout or policy.engine.redis_url is not None:
        return await run_off_loop(functools.partial(policy.acquire, key, timeout))
    return policy.acquire(key)


async def release(permit: Permit) -> bool:
    """:meth:`Permit.release` from async code (a thread for Redis)."""
    if permit.policy.engine.redis_url is not None:
        return await run_off_loop(permit.release)
    return permit.release()
