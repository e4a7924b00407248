"""Prometheus metrics of an engine's policies, for ``prometheus_client``.

.. code-block:: python

    from prometheus_client import CollectorRegistry, generate_latest
    from ratekeeper.prometheus import RatekeeperCollector

    registry = CollectorRegistry()
    registry.register(RatekeeperCollector(engine))   # or prometheus_client.REGISTRY
    print(generate_latest(registry).decode())

Every scrape reads the engine's own counters (``Policy.stats()``). For a
shared engine (``Engine.shared(path)``, or the Flask extension under
``ratekeeper.gunicorn``) those live in the shared file, so **one scrape of
any worker reports the totals of all workers**: no
``PROMETHEUS_MULTIPROC_DIR`` is needed, and it does not matter which worker
answers.

Metrics (label ``policy``: the policy's name):

- ``ratekeeper_decisions_total{policy, outcome}`` (counter), ``outcome`` one
  of ``allowed`` (passed and charged), ``denied`` (refused by a limit),
  ``shadow_denied`` (shadow mode: passed, but would have been denied) and
  ``banned`` (refused by the penalty box). The outcomes do not overlap: their
  sum is every decision of the policy.
- ``ratekeeper_bans_total{policy}`` (counter): bans imposed by the penalty box.
- ``ratekeeper_evictions_total{policy}`` (counter): live keys evicted to make
  room for new ones.
- ``ratekeeper_table_full_total{policy}`` (counter): requests that found no
  room and were failed open or closed.
- ``ratekeeper_keys{policy}`` (gauge): keys tracked now.
- ``ratekeeper_capacity{policy}`` (gauge): keys the policy can track.

A Redis engine (``Engine.redis``) adds, for this process (each worker has
its own connections): ``ratekeeper_redis_up`` (gauge, 1 while Redis answers)
and the counters ``ratekeeper_redis_round_trips_total``, ``_errors_total``,
``_failovers_total``, ``_recoveries_total``, ``_fallback_decisions_total``,
``_deny_cache_hits_total`` and ``_script_loads_total``. Its decision counters
above are this process's too (or, with a fallback file, this host's).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

try:
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - prometheus_client < 0.14
    Collector = object  # type: ignore[assignment,misc]

from ._core import Engine, Stats
from .errors import EngineClosed, RatekeeperError

__all__ = ["RatekeeperCollector", "OUTCOMES"]

#: The ``outcome`` label values of ``ratekeeper_decisions_total``.
OUTCOMES = ("allowed", "denied", "shadow_denied", "banned")

_HELP = {
    "decisions": "Rate-limit decisions by policy and outcome (allowed; denied by a limit; "
                 "shadow_denied: passed in shadow mode but over the limit; banned: refused by the penalty box).",
    "bans": "Bans imposed by the penalty box.",
    "evictions": "Tracked keys evicted to make room for new keys.",
    "table_full": "Requests that found the key table full and were failed open or closed.",
    "keys": "Keys tracked now (table occupancy).",
    "capacity": "Keys the policy's table can track.",
}

#: A Redis engine's counters (``Engine.redis_stats()``, this process's), as
#: ``<namespace>_redis_<name>_total`` counters; ``up`` is a gauge.
_REDIS_HELP = {
    "round_trips": "Redis script calls that got an answer (this process).",
    "errors": "Redis calls that failed: connect, timeout, protocol or server error (this process).",
    "failovers": "Switches from Redis to the failure policy (this process).",
    "recoveries": "Switches from the failure policy back to Redis (this process).",
    "fallback_decisions": "Decisions made by the failure policy instead of Redis (this process).",
    "deny_cache_hits": "Denials answered by the local deny cache without a round trip (this process).",
    "script_loads": "Times the Lua script was loaded into Redis (this process).",
}


def _outcomes(s: Stats) -> Tuple[int, int, int, int]:
    """(allowed, denied, shadow_denied, banned), disjoint. The engine counts
    shadow and banned decisions in ``denied`` too; they are taken out."""
    return (s.allowed, max(0, s.denied - s.shadow_denied - s.banned), s.shadow_denied, s.banned)


class RatekeeperCollector(Collector):
    """A ``prometheus_client`` collector over the counters of ``engine``'s
    policies.

    ``engine``: an :class:`~ratekeeper.Engine`, or a callable returning
    one (read at each scrape: e.g. ``lambda: rk.engine`` for an engine
    opened lazily per process). ``policies``: only policies whose name this
    predicate accepts (default: all). ``namespace``: the metric name prefix
    (default ``"ratekeeper"``).

    The engine's counters are read one at a time while requests go on; a
    value derived from two of them (the ``denied`` outcome) is kept from
    going backwards between this collector's scrapes.
    """

    def __init__(
        self,
        engine: Union[Engine, Callable[[], Engine]],
        policies: Optional[Callable[[str], bool]] = None,
        namespace: str = "ratekeeper",
    ):
        self._engine = engine
        self._filter = policies
        self._ns = namespace
        self._lock = threading.Lock()
        self._last: Dict[Tuple[Optional[str], str, str], int] = {}

    def _get_engine(self) -> Optional[Engine]:
        engine = self._engine
        if not isinstance(engine, Engine):
            engine = engine()
        if engine is None or engine.closed:
            return None
        return engine

    def _families(self) -> Dict[str, Any]:
        ns = self._ns
        return {
            "decisions": CounterMetricFamily(f"{ns}_decisions", _HELP["decisions"], labels=["policy", "outcome"]),
            "bans": CounterMetricFamily(f"{ns}_bans", _HELP["bans"], labels=["policy"]),
            "evictions": CounterMetricFamily(f"{ns}_evictions", _HELP["evictions"], labels=["policy"]),
            "table_full": CounterMetricFamily(f"{ns}_table_full", _HELP["table_full"], labels=["policy"]),
            "keys": GaugeMetricFamily(f"{ns}_keys", _HELP["keys"], labels=["policy"]),
            "capacity": GaugeMetricFamily(f"{ns}_capacity", _HELP["capacity"], labels=["policy"]),
        }

    def describe(self) -> Iterable[Any]:
        """The metric families without samples (so registering the collector
        does not open or read the engine)."""
        return list(self._families().values())

    def _monotonic(self, path: Optional[str], policy: str, name: str, value: int) -> int:
        key = (path, policy, name)
        last = self._last.get(key, 0)
        if value < last:
            return last
        self._last[key] = value
        return value

    def collect(self) -> Iterator[Any]:
        fams = self._families()
        try:
            engine = self._get_engine()
            policies = engine.policies() if engine is not None else []
        except EngineClosed:
            engine, policies = None, []
        path = engine.path if engine is not None else None
        with self._lock:
            for policy in policies:
                name = policy.name
                if self._filter is not None and not self._filter(name):
                    continue
                try:
                    s = policy.stats()
                except (EngineClosed, RatekeeperError):
                    continue
                for outcome, value in zip(OUTCOMES, _outcomes(s)):
                    value = self._monotonic(path, name, outcome, value)
                    fams["decisions"].add_metric([name, outcome], value)
                fams["bans"].add_metric([name], s.bans)
                fams["evictions"].add_metric([name], s.evictions)
                fams["table_full"].add_metric([name], s.table_full)
                fams["keys"].add_metric([name], s.occupancy)
                fams["capacity"].add_metric([name], s.capacity)
        out = list(fams.values())
        if engine is not None and engine.redis_url is not None:
            out.extend(self._redis_families(engine))
        return iter(out)

    def _redis_families(self, engine: Engine) -> List[Any]:
        """``<ns>_redis_up`` and the Redis counters of a Redis engine."""
        try:
            stats = engine.redis_stats()
        except (EngineClosed, RatekeeperError):
            return []
        if stats is None:
            return []
        ns = self._ns
        up = GaugeMetricFamily(f"{ns}_redis_up", "1 while Redis answers (as of the last call or reconnect "
                                                 "try), 0 while the failure policy decides (this process).")
        up.add_metric([], 1 if stats["up"] else 0)
        families = [up]
        for name, help_text in _REDIS_HELP.items():
            family = CounterMetricFamily(f"{ns}_redis_{name}", help_text)
            family.add_metric([], stats[name])
            families.append(family)
        return families


def generate(engine: Union[Engine, Callable[[], Engine]]) -> Tuple[bytes, str]:
    """The text exposition of ``engine``'s metrics alone, and its content
    type: ``(body, content_type)`` (what the Flask metrics endpoint serves)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RatekeeperCollector(engine))
    return generate_latest(registry), CONTENT_TYPE_LATEST
