"""Gunicorn server hooks that make every worker share one set of limits.

One line in ``gunicorn.conf.py``::

    from ratekeeper.gunicorn import *   # on_starting, post_fork, child_exit

(the shared file is ``$RATEKEEPER_SHARED_PATH``, else
``/dev/shm/ratekeeper-<proc_name>.rk``), or with explicit settings::

    import ratekeeper.gunicorn
    on_starting, post_fork, child_exit = ratekeeper.gunicorn.hooks(path="/dev/shm/myapp.rk")

- ``on_starting`` (master, before any fork) creates or validates the shared
  file (a corrupt or foreign file stops the server with a clear error), adds
  the ``policies`` given to :func:`hooks`, closes it again (the master must
  not hold it open across forks) and exports ``RATEKEEPER_SHARED_PATH`` so
  that workers (and :class:`ratekeeper.flask.Ratekeeper`) find it.
- ``post_fork`` (each worker, after fork) attaches: it opens this process's
  engine on the file (:func:`ratekeeper.shared_engine`), which the Flask
  extension then uses. The file must be opened after fork: the lock that
  serialises adding policies belongs to the open file.
- ``child_exit`` (master, when a worker dies, also by SIGKILL) releases every
  concurrency permit the dead worker held (``rk_release_holder`` on every
  policy), instead of waiting for the leases to expire.

Many hosts: with ``$RATEKEEPER_REDIS_URL`` set (or ``hooks(redis_url=...)``)
the limits live in Redis. ``on_starting`` then also checks the URL (a bad
URL, a refused password or a server that is not Redis stops the server with
a clear error; a Redis that is down only logs a warning) and the policies'
specs, and ``post_fork`` opens each worker's own Redis engine
(:func:`ratekeeper.redis_engine`: connections are never shared across a
fork), whose local fallback (``on_failure="local"``, the default, or
``$RATEKEEPER_REDIS_ON_FAILURE``) is the host's shared file above.
Concurrency permits in Redis are not released by ``child_exit``: their
leases expire.

If your config already defines one of these hooks, call ours from it, e.g.
``def post_fork(server, worker): ratekeeper.gunicorn.post_fork(server, worker); ...``.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ._core import Engine, redis_engine, shared_engine
from .errors import RatekeeperError

__all__ = ["on_starting", "post_fork", "child_exit"]

Hook = Callable[..., None]


def default_path(proc_name: Optional[str] = None) -> str:
    """``$RATEKEEPER_SHARED_PATH`` if set, else
    ``/dev/shm/ratekeeper-<proc_name>.rk`` (the system temp dir without
    /dev/shm)."""
    env = os.environ.get("RATEKEEPER_SHARED_PATH")
    if env:
        return env
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", proc_name or "app").strip("._") or "app"
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"ratekeeper-{name}.rk")


def hooks(
    path: Optional[str] = None,
    policies: Optional[Mapping[str, str]] = None,
    capacity: Optional[int] = None,
    max_bytes: Optional[int] = None,
    mode: int = 0o600,
    redis_url: Optional[str] = None,
    on_failure: Optional[str] = None,
) -> Tuple[Hook, Hook, Hook]:
    """Returns ``(on_starting, post_fork, child_exit)`` for a gunicorn config.

    ``path``: the shared file (default: :func:`default_path`). ``policies``:
    ``{name: spec}`` to create up front (others are added by the app on first
    use). ``capacity``, ``max_bytes``, ``mode``: as for
    :meth:`ratekeeper.Engine.shared` (they apply when the file is created).
    ``redis_url`` (default ``$RATEKEEPER_REDIS_URL``): limits in Redis, with
    the shared file as each host's fallback; ``on_failure`` (default
    ``$RATEKEEPER_REDIS_ON_FAILURE``, else ``"local"``): as for
    :meth:`ratekeeper.Engine.redis`.
    """
    options: Dict[str, Any] = {"capacity": capacity, "max_bytes": max_bytes, "mode": mode}
    chosen: Dict[str, str] = {}

    def resolve(server: Any) -> str:
        if "path" not in chosen:
            chosen["path"] = path or default_path(getattr(server, "proc_name", None))
        return chosen["path"]

    def redis_settings() -> Tuple[Optional[str], str]:
        url = redis_url or os.environ.get("RATEKEEPER_REDIS_URL") or None
        failure = on_failure or os.environ.get("RATEKEEPER_REDIS_ON_FAILURE") or "local"
        return url, failure

    def redis_options(target: str, failure: str) -> Dict[str, Any]:
        return {
            "on_failure": failure,
            "fallback_path": target if failure == "local" else None,
            "capacity": capacity,
            "max_bytes": max_bytes,
            "mode": mode,
        }

    def on_starting(server: Any) -> None:
        target = resolve(server)
        engine = Engine.shared(target, **{k: v for k, v in options.items() if v is not None})
        try:
            for name, spec in (policies or {}).items():
                engine.policy(name, spec)
            names = [p.name for p in engine.policies()]
        finally:
            engine.close()  # never hold it open across the fork
        os.environ["RATEKEEPER_SHARED_PATH"] = target
        url, failure = redis_settings()
        if url is None:
            _log(server, "info", f"ratekeeper: shared limits in {target} ({len(names)} policies)")
            return
        # Checked once in the master, then closed: workers open their own.
        engine = Engine.redis(url, log_switches=False, **{k: v for k, v in redis_options(target, failure).items()
                                                          if v is not None})
        try:
            for name, spec in (policies or {}).items():
                engine.policy(name, spec)
            up = (engine.redis_stats() or {}).get("up", False)
            shown = engine.redis_url
        finally:
            engine.close()
        os.environ["RATEKEEPER_REDIS_URL"] = url
        os.environ["RATEKEEPER_REDIS_ON_FAILURE"] = failure
        if up:
            _log(server, "info", f"ratekeeper: limits in Redis at {shown}; fallback ({failure}) in {target}")
        else:
            _log(server, "warning", f"ratekeeper: Redis at {shown} does not answer; workers start on their "
                                    f"failure policy ({failure}) and switch to Redis when it answers")

    def post_fork(server: Any, worker: Any) -> None:
        target = resolve(server)
        os.environ["RATEKEEPER_SHARED_PATH"] = target
        url, failure = redis_settings()
        if url is not None:
            redis_engine(url, **redis_options(target, failure))
        else:
            shared_engine(target, **options)

    def child_exit(server: Any, worker: Any) -> None:
        target = resolve(server)
        pid = getattr(worker, "pid", None)
        if not pid or not os.path.exists(target):
            return
        try:
            with Engine.shared(target, **{k: v for k, v in options.items() if v is not None}) as engine:
                released = sum(p.release_holder(pid) for p in engine.policies())
        except RatekeeperError as e:
            _log(server, "warning", f"ratekeeper: could not release permits of worker {pid}: {e}")
            return
        if released:
            _log(server, "info", f"ratekeeper: released {released} permits of dead worker {pid}")

    return on_starting, post_fork, child_exit


def _log(server: Any, level: str, message: str) -> None:
    logger = getattr(server, "log", None)
    if logger is not None and hasattr(logger, level):
        getattr(logger, level)(message)


on_starting, post_fork, child_exit = hooks()
