"""ratekeeper.prometheus: exact values for a known sequence (parsed with
prometheus_client's own parser), and the totals of 4 Gunicorn workers from
any one of them."""

from __future__ import annotations

import http.client
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

import ratekeeper
from ratekeeper import Penalty

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from ratekeeper.prometheus import RatekeeperCollector, generate  # noqa: E402

S = 1_000_000_000
T0 = 1_000 * S


def parse(text: str) -> dict:
    """{family name: (type, help, {(sample name, labels...): value})}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        samples = {}
        for s in fam.samples:
            samples[(s.name, *sorted(s.labels.items()))] = s.value
        out[fam.name] = (fam.type, fam.documentation, samples)
    return out


def decisions(parsed: dict, policy: str) -> dict:
    _, _, samples = parsed["ratekeeper_decisions"]
    return {
        dict(k[1:])["outcome"]: v
        for k, v in samples.items()
        if k[0] == "ratekeeper_decisions_total" and dict(k[1:])["policy"] == policy
    }


def test_exact_values_for_a_known_sequence():
    with ratekeeper.Engine(capacity=1024) as engine:
        api = engine.policy("api", "3/minute")
        new = engine.policy("new", "1/minute", shadow=True)
        login = engine.policy("login", "2/minute", penalty=Penalty(strikes=2, window=600.0, ban=900.0, max_ban=3600.0))
        for i in range(5):
            api.check("a", now_ns=T0 + i)  # 3 allowed, 2 denied
        for i in range(4):
            new.check("n", now_ns=T0 + i)  # 1 allowed, 3 shadow-denied
        for i in range(6):
            login.check("l", now_ns=T0 + i)  # 2 allowed, 1 denied, 1 ban (banned), 2 banned
        api.check("b", now_ns=T0)

        registry = CollectorRegistry()
        registry.register(RatekeeperCollector(engine))
        text = generate_latest(registry).decode()
        parsed = parse(text)

        assert decisions(parsed, "api") == {"allowed": 4, "denied": 2, "shadow_denied": 0, "banned": 0}
        assert decisions(parsed, "new") == {"allowed": 1, "denied": 0, "shadow_denied": 3, "banned": 0}
        assert decisions(parsed, "login") == {"allowed": 2, "denied": 1, "shadow_denied": 0, "banned": 3}
        types = {name: fam[0] for name, fam in parsed.items()}
        assert types == {
            "ratekeeper_decisions": "counter",
            "ratekeeper_bans": "counter",
            "ratekeeper_evictions": "counter",
            "ratekeeper_table_full": "counter",
            "ratekeeper_keys": "gauge",
            "ratekeeper_capacity": "gauge",
        }
        assert all(fam[1] for fam in parsed.values()), "every family has a HELP text"
        cap = api.stats().capacity
        assert cap >= 1024
        for name, policy, value in [
            ("ratekeeper_bans_total", "login", 1),
            ("ratekeeper_bans_total", "api", 0),
            ("ratekeeper_evictions_total", "api", 0),
            ("ratekeeper_table_full_total", "api", 0),
            ("ratekeeper_keys", "api", 2),
            ("ratekeeper_keys", "login", 1),
            ("ratekeeper_capacity", "new", cap),
        ]:
            fam = name[: -len("_total")] if name.endswith("_total") else name
            assert parsed[fam][2][(name, ("policy", policy))] == value, name
        # Exactly what the text says for one family (HELP, TYPE, samples):
        assert "# TYPE ratekeeper_decisions_total counter" in text
        assert 'ratekeeper_decisions_total{outcome="banned",policy="login"} 3.0' in text
        # The helper serves the same.
        body, ctype = generate(engine)
        assert parse(body.decode()) == parsed and ctype.startswith("text/plain")


def test_collector_registers_without_reading_and_survives_a_closed_engine():
    engine = ratekeeper.Engine(capacity=64)
    engine.policy("p", "1/second").check("k")
    registry = CollectorRegistry()  # auto_describe: uses describe(), which reads nothing
    registry.register(RatekeeperCollector(lambda: engine))
    assert 'ratekeeper_decisions_total{outcome="allowed",policy="p"} 1.0' in generate_latest(registry).decode()
    engine.close()
    text = generate_latest(registry).decode()
    assert "ratekeeper_decisions_total{" not in text and "# HELP ratekeeper_decisions_total" in text


def test_policy_filter_and_namespace():
    with ratekeeper.Engine(capacity=64) as engine:
        engine.policy("keep", "1/second").check("k")
        engine.policy("skip", "1/second").check("k")
        registry = CollectorRegistry()
        registry.register(RatekeeperCollector(engine, policies=lambda n: n == "keep", namespace="myapp_rl"))
        text = generate_latest(registry).decode()
        assert 'myapp_rl_decisions_total{outcome="allowed",policy="keep"} 1.0' in text
        assert "skip" not in text


# ------------------------------------------------------------------ 4 Gunicorn workers

pytest.importorskip("gunicorn")
from test_gunicorn import children, gunicorn_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from gunicorn_server(tmp_path_factory, "monitoring-test")


def get(port: int, path: str):
    """GET -> (status, worker pid, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, int(r.getheader("X-Worker-Pid", "0")), r.read().decode()
    finally:
        conn.close()


def test_one_scrape_of_any_worker_reports_the_totals_of_all_workers(server):
    port = server["port"]
    # Requests go out 8 at a time, in rounds of 60, until at least two
    # workers have served some (bounded): on a loaded machine one worker can
    # win every accept() of a round, and then the totals would prove nothing.
    results = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            results += pool.map(lambda _: get(port, "/metered"), range(60))
            if len({pid for _, pid, _ in results}) >= 2:
                break
    n = len(results)
    server["workers"].update(children(server["pid"]))
    codes = [status for status, _, _ in results]
    assert codes.count(200) == 5 and codes.count(429) == n - 5
    served_by = {pid for _, pid, _ in results}
    assert len(served_by) >= 2, "the requests should have been spread over several workers"

    # Scrapes go out 8 at a time: one client's sequential requests can all
    # land on the one worker that happens to sit in accept().
    scrapes = []
    scraped_by = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # bounded: until several workers have answered
            for status, pid, body in pool.map(lambda _: get(port, "/metrics"), range(8)):
                assert status == 200
                scrapes.append(body)
                scraped_by.add(pid)
            if len(scraped_by) >= 3:
                break
    assert len(scraped_by) >= 2, "the scrapes should have been answered by several workers"
    policy = "flask:5/minute"
    for body in scrapes:
        parsed = parse(body)
        assert decisions(parsed, policy) == {"allowed": 5, "denied": n - 5, "shadow_denied": 0, "banned": 0}
        assert parsed["ratekeeper_keys"][2][("ratekeeper_keys", ("policy", policy))] == 1
    # /metrics is exempt from limits and counts nothing itself.
    with ratekeeper.Engine.shared(server["path"]) as e:
        names = {p.name for p in e.policies()}
        assert policy in names and all("metrics" not in name for name in names)
