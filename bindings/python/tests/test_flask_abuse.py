"""ratekeeper.flask abuse control and monitoring with Flask's test client:
allow and deny lists (CIDR v4/v6, keys), the 403 body, shadow mode and its
log records, the penalty box and retry jitter in 429s, the deny log's own
rate limit, and the /metrics endpoint."""

from __future__ import annotations

import json
import logging

import pytest
from flask import Flask

import ratekeeper
from ratekeeper import Penalty
from ratekeeper.flask import Ratekeeper, header
from ratekeeper.logs import DenyLogger


def make_app(config=None, **options):
    app = Flask(__name__)
    app.config.update(config or {})
    rk = Ratekeeper(app, engine=ratekeeper.Engine(capacity=1024), **options)

    @app.get("/")
    def index():
        return "index"

    return app, rk


def get(client, path="/", ip="198.51.100.1", headers=None):
    return client.get(path, environ_base={"REMOTE_ADDR": ip}, headers=headers or {})


def codes(client, n, path="/", **kw):
    return [get(client, path, **kw).status_code for _ in range(n)]


def deny_records(caplog):
    return [r for r in caplog.records if r.name == "ratekeeper"]


# ------------------------------------------------------------------ allow and deny lists


def test_cidr_lists_v4_and_v6():
    app, rk = make_app(
        default="2/minute",
        allowlist=["10.0.0.0/8", "2001:db8:aaaa::/48"],
        denylist=["203.0.113.0/24", "2001:db8:bad::/48", "10.6.6.6"],
    )
    c = app.test_client()
    assert codes(c, 5, ip="10.1.2.3") == [200] * 5  # allow-listed: no limit
    assert codes(c, 5, ip="2001:db8:aaaa:1::7") == [200] * 5
    assert codes(c, 3, ip="198.51.100.1") == [200, 200, 429]  # neither: limited
    assert codes(c, 3, ip="2001:db8:cccc::1") == [200, 200, 429]
    for ip in ("203.0.113.9", "2001:db8:bad:1::1", "::ffff:203.0.113.9", "10.6.6.6"):  # deny wins over allow
        r = get(c, ip=ip)
        assert r.status_code == 403, ip
    r = get(c, ip="203.0.113.9")
    assert r.mimetype == "application/problem+json"
    assert r.get_json() == {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "This client is not allowed to use this service.",
    }
    assert "Retry-After" not in r.headers and "RateLimit" not in r.headers
    # Nothing was counted for allow- or deny-listed clients.
    (policy,) = app.extensions["ratekeeper"].engine.policies()
    st = policy.stats()
    assert (st.allowed, st.denied) == (4, 2)


def test_lists_from_config_string_and_routes_without_limits():
    app, rk = make_app({"RATEKEEPER_DENYLIST": "192.0.2.0/24, 2001:db8:1::/64"})

    @app.get("/free")
    @rk.exempt
    def free():
        return "free"

    c = app.test_client()
    assert get(c, "/free", ip="192.0.2.1").status_code == 403  # a deny list holds on every route
    assert get(c, "/free", ip="2001:db8:1::9").status_code == 403
    assert get(c, "/free", ip="192.0.3.1").status_code == 200


def test_key_lists():
    app, rk = make_app(
        key=header("X-API-Key"),
        allowlist=["x-api-key:partner"],
        denylist=["x-api-key:stolen", "198.51.100.66"],
    )

    @app.get("/api")
    @rk.limit("1/minute")
    def api():
        return "api"

    @app.get("/user")
    @rk.limit("1/minute", key=lambda: "user:mallory")
    def user_route():
        return "user"

    c = app.test_client()
    assert codes(c, 4, "/api", headers={"X-API-Key": "partner"}) == [200] * 4
    assert codes(c, 2, "/api", headers={"X-API-Key": "other"}) == [200, 429]
    r = get(c, "/api", headers={"X-API-Key": "stolen"})
    assert r.status_code == 403 and r.get_json()["status"] == 403
    assert get(c, "/api", ip="198.51.100.66").status_code == 403  # a literal address
    assert get(c, "/", headers={"X-API-Key": "stolen"}).status_code == 403  # the default key, no limit on /
    # A limit's own key function is matched too.
    app2, rk2 = make_app(denylist=["user:mallory"])

    @app2.get("/user")
    @rk2.limit("5/minute", key=lambda: "user:mallory")
    def user2():
        return "user"

    assert get(app2.test_client(), "/user").status_code == 403
    assert get(app2.test_client(), "/").status_code == 200


def test_bad_list_entries_are_refused():
    with pytest.raises(TypeError):
        make_app(denylist=[42])


# ------------------------------------------------------------------ shadow mode


def test_shadow_limit_passes_counts_and_logs(caplog):
    app, rk = make_app(log_max_per_second=None)

    @app.get("/new")
    @rk.limit("2/minute", shadow=True, name="new")
    def new():
        return "new"

    c = app.test_client()
    with caplog.at_level(logging.INFO, logger="ratekeeper"):
        assert codes(c, 5, "/new") == [200] * 5
    policy = app.extensions["ratekeeper"].engine.find_policy("flask:2/minute [shadow]")
    st = policy.stats()
    assert (st.allowed, st.shadow_denied, st.denied) == (2, 3, 3)
    recs = deny_records(caplog)
    assert len(recs) == 3
    msg = recs[0].getMessage()
    assert msg.startswith("ratekeeper: shadow_denied policy=flask:2/minute [shadow] limit=new key=#")
    assert "retry_after=" in msg
    fields = recs[0].ratekeeper
    assert fields["event"] == "shadow_denied" and fields["shadow"] is True and fields["key"].startswith("#")
    assert fields["retry_after"] > 0


def test_shadow_default_from_config_and_with_other_limits(caplog):
    app, rk = make_app({"RATEKEEPER_SHADOW": True}, default="2/minute", log_max_per_second=None)

    @app.get("/two")
    @rk.limit("100/minute", name="roomy", shadow=False, override_defaults=False)
    def two():
        return "two"

    c = app.test_client()
    with caplog.at_level(logging.INFO, logger="ratekeeper"):
        assert codes(c, 4, "/two") == [200] * 4  # the default is shadow: never enforced
    assert [r.ratekeeper["event"] for r in deny_records(caplog)] == ["shadow_denied"] * 2
    engine = app.extensions["ratekeeper"].engine
    assert engine.find_policy("flask:2/minute [shadow]").stats().shadow_denied == 2
    assert engine.find_policy("flask:100/minute").stats().allowed == 4


def test_enforced_denial_is_logged_with_the_key_only_if_recorded(caplog):
    app, rk = make_app(log_max_per_second=None)

    @app.get("/a")
    @rk.limit("1/minute", name="a")
    def a():
        return "a"

    @app.get("/b")
    @rk.limit("1/minute", name="b", record_keys=True)
    def b():
        return "b"

    c = app.test_client()
    with caplog.at_level(logging.INFO, logger="ratekeeper"):
        codes(c, 2, "/a")
        codes(c, 2, "/b")
    ra, rb = deny_records(caplog)
    assert ra.ratekeeper["event"] == "denied" and ra.ratekeeper["key"].startswith("#")
    assert "198.51.100.1" not in ra.getMessage()
    assert rb.ratekeeper["key"] == "b 198.51.100.1" and "key=b 198.51.100.1" in rb.getMessage()
    events = app.extensions["ratekeeper"].engine.find_policy("flask:1/minute [keys]").recent_denials()
    assert [e.key for e in events] == [b"b\x00198.51.100.1"]


# ------------------------------------------------------------------ penalty box and jitter


def test_banned_429_says_so_and_retry_after_is_the_ban():
    app, rk = make_app()

    @app.post("/login")
    @rk.limit("2/minute", name="login", penalty=Penalty(strikes=2, window=600.0, ban=900.0, max_ban=3600.0))
    def login():
        return "ok"

    c = app.test_client()
    post = lambda: c.post("/login", environ_base={"REMOTE_ADDR": "198.51.100.9"})  # noqa: E731
    assert [post().status_code for _ in range(2)] == [200, 200]
    first = post()  # strike 1: an ordinary 429
    assert first.status_code == 429 and "banned" not in first.get_json()
    assert int(first.headers["Retry-After"]) <= 30
    banned = post()  # strike 2: banned
    assert banned.status_code == 429
    body = banned.get_json()
    assert body["banned"] is True and body["retry_after"] == 900
    assert "banned for 900 s" in body["detail"]
    assert banned.headers["Retry-After"] == "900"
    again = post()
    assert again.get_json()["banned"] is True and 899 <= int(again.headers["Retry-After"]) <= 900
    st = app.extensions["ratekeeper"].engine.find_policy(
        "flask:2/minute [penalty=2/600s,ban=900s..3600s]").stats()
    assert (st.allowed, st.denied, st.banned, st.bans) == (2, 3, 2, 1)


def test_penalty_box_with_several_limits_counts_strikes():
    """With more than one limit on a request (one batch), a denial by a
    penalty-box limit is still a strike."""
    app, rk = make_app(default="100/minute", application_limits="1000/minute")

    @app.post("/login")
    @rk.limit("2/minute", name="login", penalty=Penalty(strikes=2, window=600.0, ban=60.0, max_ban=60.0),
              override_defaults=False)
    def login():
        return "ok"

    c = app.test_client()
    results = [c.post("/login", environ_base={"REMOTE_ADDR": "198.51.100.9"}) for _ in range(5)]
    assert [r.status_code for r in results] == [200, 200, 429, 429, 429]
    assert [bool((r.get_json(silent=True) or {}).get("banned")) for r in results] == [False] * 3 + [True] * 2
    engine = app.extensions["ratekeeper"].engine
    assert engine.find_policy("flask:100/minute").stats().allowed == 2  # not charged for denied requests
    assert engine.find_policy("flask:1000/minute").stats().allowed == 2


def test_retry_jitter_in_retry_after():
    app, rk = make_app()

    @app.get("/j")
    @rk.limit("1/minute", retry_jitter=2.0)
    def j():
        return "j"

    c = app.test_client()
    assert get(c, "/j").status_code == 200
    waits = {int(get(c, "/j").headers["Retry-After"]) for _ in range(40)}
    assert waits <= {60, 61, 62} and len(waits) >= 2


# ------------------------------------------------------------------ the deny log's own limit


def test_deny_logger_limits_itself_and_summarises(caplog):
    now = [100.0]
    dl = DenyLogger(max_per_second=2, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="ratekeeper"):
        written = [dl.deny("denied", "p", "k", retry_after=1.0) for _ in range(10)]
        assert written == [True, True] + [False] * 8
        assert dl.suppressed == 8
        now[0] += 0.5  # one token back
        assert dl.deny("denied", "p", "k", retry_after=1.0)
    msgs = [r.getMessage() for r in deny_records(caplog)]
    assert len(msgs) == 4
    assert msgs[2] == "ratekeeper: suppressed 8 deny log records in the last 0.5 s (at most 2 per second)"
    assert msgs[3].startswith("ratekeeper: denied policy=p key=#")
    assert dl.suppressed == 0 and dl.suppressed_total == 8
    assert DenyLogger(max_per_second=0).deny("denied", "p", "k") is False


def test_flask_deny_log_is_rate_limited(caplog):
    app, rk = make_app({"RATEKEEPER_LOG_MAX_PER_SECOND": 3}, default="1/minute")
    dl = app.extensions["ratekeeper"].deny_log
    dl._clock = lambda: 0.0  # frozen: no token comes back during the test
    dl._refilled = 0.0
    c = app.test_client()
    with caplog.at_level(logging.INFO, logger="ratekeeper"):
        assert codes(c, 21) == [200] + [429] * 20
    assert len(deny_records(caplog)) == 3
    assert dl.suppressed == 17


def test_deny_log_salt_makes_hashes_comparable():
    a = DenyLogger(hash_salt=b"shared-secret")
    b = DenyLogger(hash_salt=b"shared-secret")
    assert a.key_hash("ip:1") == b.key_hash(b"ip:1") != DenyLogger().key_hash("ip:1")


# ------------------------------------------------------------------ metrics endpoint


def test_metrics_endpoint_is_served_and_exempt():
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    app, rk = make_app({"RATEKEEPER_METRICS_ENDPOINT": "/metrics"}, default="1/minute")
    c = app.test_client()
    assert codes(c, 3) == [200, 429, 429]
    for _ in range(5):  # the default limit would allow one
        r = get(c, "/metrics")
        assert r.status_code == 200 and r.content_type.startswith("text/plain")
        assert "RateLimit" not in r.headers
    fams = {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}
    values = {s.labels["outcome"]: s.value for s in fams["ratekeeper_decisions"].samples
              if s.name == "ratekeeper_decisions_total"}
    assert values == {"allowed": 1, "denied": 2, "shadow_denied": 0, "banned": 0}


def test_no_metrics_endpoint_by_default():
    app, rk = make_app()
    assert get(app.test_client(), "/metrics").status_code == 404
