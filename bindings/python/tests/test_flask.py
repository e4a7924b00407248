"""ratekeeper.flask with Flask's test client: every option, every header's
exact syntax, the problem+json body."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time

import pytest
from flask import Blueprint, Flask, session

import ratekeeper
from ratekeeper import Engine, ParseError
from ratekeeper.flask import Breach, Ratekeeper, endpoint, header, remote_addr, user
from window_edge import refund_across_a_window_edge

IETF_ITEM = r'"[^"\\]*";q=\d+;w=\d+'


def make_app(config=None, **options):
    app = Flask(__name__)
    app.config.update(config or {})
    app.secret_key = "test"
    rk = Ratekeeper(app, **options)

    @app.get("/")
    def index():
        return "index"

    @app.get("/other")
    def other():
        return "other"

    return app, rk


def get(client, path="/", ip="198.51.100.1", **kw):
    return client.get(path, environ_base={"REMOTE_ADDR": ip}, **kw)


def statuses(client, n, path="/", **kw):
    return [get(client, path, **kw).status_code for _ in range(n)]


# ------------------------------------------------------------------ defaults and headers


def test_default_limits_apply_to_every_route_counted_per_route():
    app, rk = make_app(default="3/minute")
    c = app.test_client()
    assert statuses(c, 4, "/") == [200, 200, 200, 429]
    assert statuses(c, 4, "/other") == [200, 200, 200, 429]
    assert statuses(c, 1, "/", ip="198.51.100.2") == [200]  # per client


def test_successful_responses_carry_exact_ratelimit_headers():
    app, rk = make_app(default="3/minute")
    r = get(app.test_client())
    assert r.status_code == 200
    assert r.headers["RateLimit-Policy"] == '"default";q=3;w=60'
    assert r.headers["RateLimit"] == '"default";r=2;t=20'
    assert "X-RateLimit-Limit" not in r.headers and "Retry-After" not in r.headers


def test_the_429_response():
    app, rk = make_app(default="3/minute")
    c = app.test_client()
    statuses(c, 3)
    r = get(c)
    assert r.status_code == 429
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.headers["Retry-After"] == "20"
    assert r.headers["RateLimit-Policy"] == '"default";q=3;w=60'
    assert r.headers["RateLimit"] == '"default";r=0;t=60'
    body = json.loads(r.get_data(as_text=True))
    assert body == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "Rate limit default exceeded (3 per 60 s); retry in 20 s.",
        "policy": "default",
        "retry_after": 20,
    }


def test_retry_after_is_rounded_up_never_earlier_than_the_real_reset():
    app, rk = make_app(default="3/10 seconds")  # T = 3.33 s
    c = app.test_client()
    statuses(c, 3)
    r = get(c)
    assert r.status_code == 429
    policy = rk_policy(app, "3/10 seconds")
    real = policy.peek("index\x00198.51.100.1").retry_after
    retry = int(r.headers["Retry-After"])
    assert retry == 4 and json.loads(r.data)["retry_after"] == 4
    assert r.headers["RateLimit"] == '"default";r=0;t=10'
    assert real <= retry


def rk_policy(app, spec):
    with app.app_context():
        return app.extensions["ratekeeper"].engine.find_policy(f"flask:{spec}")


def test_named_limits_and_multi_limit_specs_in_the_headers():
    app, rk = make_app()

    @app.get("/search")
    @rk.limit("10/second", name="burst")
    @rk.limit("1000/hour", name="hourly")
    def search():
        return "ok"

    @app.get("/multi")
    @rk.limit("2/second;5/minute")
    def multi():
        return "ok"

    c = app.test_client()
    r = get(c, "/search")
    assert r.headers["RateLimit-Policy"] == '"burst";q=10;w=1, "hourly";q=1000;w=3600'
    assert r.headers["RateLimit"] == '"burst";r=9;t=1'
    r = get(c, "/multi")
    assert r.headers["RateLimit-Policy"] == '"multi-0";q=2;w=1, "multi-1";q=5;w=60'
    assert r.headers["RateLimit"] == '"multi-0";r=1;t=1'
    get(c, "/multi")
    r = get(c, "/multi")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert r.headers["RateLimit"] == '"multi-0";r=0;t=1'
    assert json.loads(r.data)["policy"] == "multi-0"
    for value in (r.headers["RateLimit-Policy"],):
        assert re.fullmatch(rf"{IETF_ITEM}(, {IETF_ITEM})*", value)


def test_names_are_sanitised_structured_field_strings():
    app, rk = make_app()

    @app.get("/q")
    @rk.limit("5/minute", name='we "quote" \\ and ünïcode')
    def q():
        return "ok"

    r = get(app.test_client(), "/q")
    assert r.headers["RateLimit"] == '"we \\"quote\\" \\\\ and _n_code";r=4;t=12'


def test_legacy_headers():
    app, rk = make_app({"RATEKEEPER_LEGACY_HEADERS": True}, default="2/minute")
    c = app.test_client()
    r = get(c)
    assert r.headers["X-RateLimit-Limit"] == "2"
    assert r.headers["X-RateLimit-Remaining"] == "1"
    assert abs(int(r.headers["X-RateLimit-Reset"]) - (time.time() + 30)) <= 2
    get(c)
    r = get(c)
    assert r.status_code == 429 and r.headers["X-RateLimit-Remaining"] == "0"


def test_headers_can_be_disabled_on_successful_responses_only():
    app, rk = make_app({"RATEKEEPER_HEADERS_ENABLED": False}, default="1/minute")
    c = app.test_client()
    r = get(c)
    assert r.status_code == 200 and "RateLimit" not in r.headers and "RateLimit-Policy" not in r.headers
    r = get(c)
    assert r.status_code == 429 and r.headers["RateLimit"] == '"default";r=0;t=60'
    assert r.headers["Retry-After"] == "60"


def test_problem_type_and_error_message():
    app, rk = make_app({"RATEKEEPER_PROBLEM_TYPE": "https://example.test/problems/rate"})

    @app.get("/m")
    @rk.limit("1/minute", error_message="Slow down, please.")
    def m():
        return "ok"

    c = app.test_client()
    get(c, "/m")
    body = json.loads(get(c, "/m").data)
    assert body["type"] == "https://example.test/problems/rate"
    assert body["detail"] == "Slow down, please." and body["policy"] == "m"


def test_a_cost_that_can_never_pass_has_no_retry_after():
    app, rk = make_app()

    @app.get("/big")
    @rk.limit("2/minute", cost=5)
    def big():
        return "ok"

    r = get(app.test_client(), "/big")
    assert r.status_code == 429 and "Retry-After" not in r.headers
    body = json.loads(r.data)
    assert body["retry_after"] is None and "can ever allow" in body["detail"]


# ------------------------------------------------------------------ which limits apply


def test_route_limits_replace_the_defaults_unless_asked_not_to():
    app, rk = make_app(default="2/minute")

    @app.get("/own")
    @rk.limit("4/minute")
    def own():
        return "ok"

    @app.get("/both")
    @rk.limit("4/minute", override_defaults=False)
    def both():
        return "ok"

    c = app.test_client()
    assert statuses(c, 5, "/own") == [200] * 4 + [429]
    assert statuses(c, 3, "/both") == [200, 200, 429]
    r = get(c, "/both", ip="203.0.113.9")
    assert r.headers["RateLimit-Policy"] == '"both";q=4;w=60, "default";q=2;w=60'


def test_exempt_views_and_blueprints():
    app, rk = make_app(default="1/minute", application_limits="100/minute")

    @app.get("/health")
    @rk.exempt
    def health():
        return "ok"

    bp = Blueprint("public", __name__)

    @bp.get("/a")
    def a():
        return "ok"

    @bp.get("/b")
    @rk.limit("2/minute")
    def b():
        return "ok"

    rk.exempt(bp)
    app.register_blueprint(bp, url_prefix="/public")
    c = app.test_client()
    assert statuses(c, 5, "/health") == [200] * 5
    assert "RateLimit" not in get(c, "/health").headers
    assert statuses(c, 5, "/public/a") == [200] * 5
    assert statuses(c, 3, "/public/b") == [200, 200, 429]  # its own limit still applies


def test_blueprint_limits_by_decorator_and_by_method():
    app, rk = make_app(default="1/minute")
    api = Blueprint("api", __name__)
    admin = Blueprint("admin", __name__)

    @api.get("/x")
    def x():
        return "ok"

    @api.get("/y")
    def y():
        return "ok"

    @api.get("/z")
    @rk.limit("1/minute")
    def z():
        return "ok"

    @admin.get("/x")
    def admin_x():
        return "ok"

    rk.limit("3/minute")(api)
    rk.blueprint_limit(admin, "2/minute", scope="admin-all")
    app.register_blueprint(api, url_prefix="/api")
    app.register_blueprint(admin, url_prefix="/admin")
    c = app.test_client()
    assert statuses(c, 4, "/api/x") == [200, 200, 200, 429]
    assert statuses(c, 4, "/api/y") == [200, 200, 200, 429]  # per route
    assert get(c, "/api/x", ip="203.0.113.5").headers["RateLimit-Policy"] == '"api";q=3;w=60'
    assert statuses(c, 2, "/api/z") == [200, 429]  # the route's own limit wins
    assert statuses(c, 3, "/admin/x") == [200, 200, 429]
    assert get(c, "/", ip="203.0.113.5").status_code == 200  # defaults elsewhere


def test_application_limits_are_shared_by_all_routes():
    app, rk = make_app(application_limits="3/minute", default="10/minute")
    c = app.test_client()
    assert [get(c, p).status_code for p in ("/", "/other", "/", "/other")] == [200, 200, 200, 429]
    r = get(c, "/", ip="203.0.113.6")
    assert r.headers["RateLimit-Policy"] == '"app";q=3;w=60, "default";q=10;w=60'
    assert r.headers["RateLimit"] == '"app";r=2;t=20'


def test_application_limits_from_config_and_several_defaults():
    app, rk = make_app({"RATEKEEPER_APPLICATION_LIMITS": ["5/second", "3/minute"],
                        "RATEKEEPER_DEFAULT": "10/minute"})
    r = get(app.test_client())
    assert r.headers["RateLimit-Policy"] == '"app-0";q=5;w=1, "app-1";q=3;w=60, "default";q=10;w=60'
    assert r.headers["RateLimit"] == '"app-1";r=2;t=20'


def test_all_limits_of_a_request_are_checked_in_one_engine_call():
    engine = Engine()
    calls = []
    real = engine.check_many

    def counting(items, now_ns=None):
        calls.append(len(items))
        return real(items, now_ns)

    engine.check_many = counting
    app, rk = make_app(engine=engine, application_limits="100/minute", default="50/minute")

    @app.get("/three")
    @rk.limit("10/second")
    @rk.limit("20/minute", override_defaults=False)
    def three():
        return "ok"

    c = app.test_client()
    get(c, "/three")
    get(c, "/")
    assert calls == [4, 2]
    assert {p.name for p in engine.policies()} == {
        "flask:100/minute", "flask:50/minute", "flask:10/second", "flask:20/minute"}


def test_shared_limits_share_one_counter_across_routes():
    app, rk = make_app()

    @app.get("/s1")
    @rk.shared_limit("3/minute", scope="search")
    def s1():
        return "ok"

    @app.get("/s2")
    @rk.shared_limit("3/minute", scope="search")
    def s2():
        return "ok"

    @app.get("/s3")
    @rk.limit("3/minute")
    def s3():
        return "ok"

    c = app.test_client()
    assert [get(c, p).status_code for p in ("/s1", "/s2", "/s1", "/s2")] == [200, 200, 200, 429]
    assert statuses(c, 3, "/s3") == [200] * 3  # same spec, its own scope
    r = get(c, "/s1")
    assert r.headers["RateLimit"] == '"search";r=0;t=60'
    with pytest.raises(ValueError):
        rk.shared_limit("1/second", scope="")


def test_methods_and_per_method():
    app, rk = make_app()

    @app.route("/w", methods=["GET", "POST"])
    @rk.limit("2/minute", methods=["post"])
    def w():
        return "ok"

    @app.route("/pm", methods=["GET", "POST"])
    @rk.limit("2/minute", per_method=True)
    def pm():
        return "ok"

    c = app.test_client()
    env = {"REMOTE_ADDR": "198.51.100.1"}
    assert [c.post("/w", environ_base=env).status_code for _ in range(3)] == [200, 200, 429]
    assert [c.get("/w", environ_base=env).status_code for _ in range(5)] == [200] * 5
    assert "RateLimit" not in c.get("/w", environ_base=env).headers
    assert [c.get("/pm", environ_base=env).status_code for _ in range(3)] == [200, 200, 429]
    assert [c.post("/pm", environ_base=env).status_code for _ in range(3)] == [200, 200, 429]


def test_callable_specs_give_tiers_each_its_own_policy():
    engine = Engine()
    app, rk = make_app(engine=engine)

    def tier():
        from flask import request

        return "5/minute" if request.headers.get("X-API-Key", "").startswith("partner-") else "2/minute"

    @app.get("/api")
    @rk.limit(tier, key=header("X-API-Key"), name="api")
    def api():
        return "ok"

    c = app.test_client()
    partner = {"X-API-Key": "partner-acme"}
    free = {"X-API-Key": "free-bob"}
    assert statuses(c, 6, "/api", headers=partner) == [200] * 5 + [429]
    assert statuses(c, 3, "/api", headers=free) == [200, 200, 429]
    assert get(c, "/api", headers=partner).headers["RateLimit-Policy"] == '"api";q=5;w=60'
    assert get(c, "/api", headers=free).headers["RateLimit-Policy"] == '"api";q=2;w=60'
    assert {p.spec for p in engine.policies()} == {"5/minute", "2/minute"}


def test_bad_specs_fail_at_declaration_time():
    app, rk = make_app()
    with pytest.raises(ParseError, match="at byte"):
        rk.limit("10/fortnight")
    with pytest.raises(ParseError):
        Ratekeeper(Flask("x"), default="ten per second")
    with pytest.raises(TypeError):
        rk.limit(42)


def test_cost_static_and_callable():
    app, rk = make_app()

    @app.get("/c")
    @rk.limit("10/minute", cost=4)
    def c4():
        return "ok"

    @app.get("/d")
    @rk.limit("10/minute", cost=lambda: 6)
    def c6():
        return "ok"

    c = app.test_client()
    assert get(c, "/c").headers["RateLimit"] == '"c4";r=6;t=24'
    assert statuses(c, 2, "/c") == [200, 429]
    assert statuses(c, 2, "/d") == [200, 429]


def test_deduct_when_refunds_requests_that_should_not_count():
    app, rk = make_app()

    @app.post("/login")
    @rk.limit("3/minute", deduct_when=lambda response: response.status_code >= 400)
    def login():
        from flask import request

        return ("welcome", 200) if request.form.get("password") == "right" else ("no", 401)

    c = app.test_client()
    env = {"REMOTE_ADDR": "198.51.100.1"}
    ok = [c.post("/login", data={"password": "right"}, environ_base=env).status_code for _ in range(10)]
    assert ok == [200] * 10  # successes are refunded
    bad = [c.post("/login", data={"password": "wrong"}, environ_base=env).status_code for _ in range(4)]
    assert bad == [401, 401, 401, 429]


def test_deduct_when_refund_is_placed_at_the_charge_not_in_a_window_opened_since():
    # README, "refund": Flask refunds at the charge's time (window_edge.py).
    app, rk = make_app()
    assert refund_across_a_window_edge(app, rk, "198.51.100.2") == (200, [401, 429])


def test_exempt_when_skips_a_limit():
    app, rk = make_app()

    @app.get("/e")
    @rk.limit("1/minute", exempt_when=lambda: __import__("flask").request.args.get("vip") == "1")
    def e():
        return "ok"

    c = app.test_client()
    assert statuses(c, 3, "/e?vip=1") == [200] * 3
    assert statuses(c, 2, "/e") == [200, 429]


def test_enabled_false_turns_everything_off():
    app, rk = make_app({"RATEKEEPER_ENABLED": False}, default="1/minute")
    assert statuses(app.test_client(), 3) == [200] * 3


def test_constructor_options_win_over_config():
    app, rk = make_app({"RATEKEEPER_DEFAULT": "1/minute", "RATEKEEPER_LEGACY_HEADERS": False},
                       default="2/minute", legacy_headers=True)
    r = get(app.test_client())
    assert r.headers["X-RateLimit-Limit"] == "2"
    with pytest.raises(TypeError, match="unknown options"):
        Ratekeeper(Flask("x"), defaults="1/second")


def test_app_factory_init_app_and_extensions():
    rk = Ratekeeper(default="2/minute")
    apps = []
    for _ in range(2):
        app = Flask(__name__)

        @app.get("/")
        def index():
            return "ok"

        rk.init_app(app)
        apps.append(app)
        assert app.extensions["ratekeeper"].ext is rk
    assert statuses(apps[0].test_client(), 3) == [200, 200, 429]
    assert statuses(apps[1].test_client(), 3) == [200, 200, 429]  # its own engine
    with apps[0].app_context():
        assert isinstance(rk.engine, Engine)


# ------------------------------------------------------------------ keys


def test_key_functions_header_user_endpoint():
    app, rk = make_app()

    @app.get("/h")
    @rk.limit("1/minute", key=header("X-API-Key"))
    def h():
        return "ok"

    @app.get("/h-only")
    @rk.limit("1/minute", key=header("X-API-Key", fallback=None))
    def h_only():
        return "ok"

    @app.get("/u")
    @rk.limit("1/minute", key=user(lambda: session.get("uid")))
    def u():
        return "ok"

    @app.get("/login/<uid>")
    @rk.exempt
    def login(uid):
        session["uid"] = uid
        return "ok"

    @app.get("/ep")
    @rk.limit("2/minute", key=endpoint)
    def ep():
        return "ok"

    c = app.test_client()
    assert get(c, "/h", headers={"X-API-Key": "k1"}).status_code == 200
    assert get(c, "/h", headers={"X-API-Key": "k1"}).status_code == 429
    assert get(c, "/h", headers={"X-API-Key": "k2"}).status_code == 200
    assert statuses(c, 2, "/h") == [200, 429]  # no header: keyed by address
    assert statuses(c, 3, "/h-only") == [200] * 3  # no header: not limited
    assert get(c, "/u", ip="203.0.113.1").status_code == 200  # anonymous: by address
    get(c, "/login/alice")
    assert get(c, "/u", ip="203.0.113.1").status_code == 200  # alice is a new key
    assert get(c, "/u", ip="203.0.113.2").status_code == 429  # alice again, other IP
    assert [get(c, "/ep", ip=f"203.0.113.{i}").status_code for i in range(3)] == [200, 200, 429]


def test_the_default_key_and_bytes_keys():
    app, rk = make_app(default="1/minute", key=lambda: b"\xff\x00raw")
    c = app.test_client()
    assert get(c, ip="1.1.1.1").status_code == 200
    assert get(c, ip="2.2.2.2").status_code == 429  # one key for everybody


def test_remote_addr_trusts_no_header_without_trusted_proxies():
    app, rk = make_app(default="2/minute")
    c = app.test_client()
    codes = [get(c, headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]  # spoofed X-Forwarded-For changes nothing


@pytest.mark.parametrize(
    "proxies, xff, expected",
    [
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the client's own entry is ignored
        (2, "6.6.6.6, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (2, "203.0.113.7", "192.0.2.10"),  # fewer entries than proxies: the peer
        (1, "", "192.0.2.10"),
        (1, None, "192.0.2.10"),
    ],
)
def test_remote_addr_with_trusted_proxies(proxies, xff, expected):
    app, rk = make_app({"RATEKEEPER_TRUSTED_PROXIES": proxies})

    @app.get("/who")
    @rk.exempt
    def who():
        return remote_addr()

    headers = {"X-Forwarded-For": xff} if xff is not None else {}
    r = get(app.test_client(), "/who", ip="192.0.2.10", headers=headers)
    assert r.get_data(as_text=True) == expected


def test_trusted_proxy_limits_the_forwarded_client():
    app, rk = make_app({"RATEKEEPER_TRUSTED_PROXIES": 1}, default="2/minute")
    c = app.test_client()
    via = lambda client: {"X-Forwarded-For": f"6.6.6.{len(client)}, {client}"}  # noqa: E731
    assert [get(c, ip="10.0.0.1", headers=via("203.0.113.7")).status_code for _ in range(3)] == [200, 200, 429]
    assert get(c, ip="10.0.0.1", headers=via("203.0.113.8")).status_code == 200


def test_ipv6_addresses_are_grouped_by_prefix():
    app, rk = make_app(default="2/minute")

    @app.get("/who")
    @rk.exempt
    def who():
        return remote_addr()

    c = app.test_client()
    assert get(c, "/who", ip="2001:db8:1:2::1").data == b"2001:db8:1:2::/64"
    assert get(c, "/who", ip="2001:db8:1:2:ffff::9").data == b"2001:db8:1:2::/64"
    assert get(c, "/who", ip="::ffff:192.0.2.1").data == b"192.0.2.1"
    assert get(c, "/who", ip="not-an-ip:x").data == b"not-an-ip:x"
    assert [get(c, ip=f"2001:db8:1:2::{i}").status_code for i in range(1, 4)] == [200, 200, 429]
    assert get(c, ip="2001:db8:1:3::1").status_code == 200  # another /64


def test_ipv6_prefix_is_configurable():
    app, rk = make_app({"RATEKEEPER_IPV6_PREFIX": 48})

    @app.get("/who")
    def who():
        return remote_addr()

    assert get(app.test_client(), "/who", ip="2001:db8:1:2::1").data == b"2001:db8:1::/48"
    app2, _ = make_app({"RATEKEEPER_IPV6_PREFIX": 128})
    app2.add_url_rule("/who", "who", remote_addr)
    assert get(app2.test_client(), "/who", ip="2001:db8:1:2::1").data == b"2001:db8:1:2::1"
    with pytest.raises(ValueError):
        make_app({"RATEKEEPER_IPV6_PREFIX": 129})
    with pytest.raises(ValueError):
        make_app({"RATEKEEPER_TRUSTED_PROXIES": -1})
    with pytest.raises(ValueError):
        make_app({"RATEKEEPER_WHEN_FULL": "explode"})


# ------------------------------------------------------------------ hooks and failures


def test_on_breach_hook_and_custom_response():
    seen = []

    def custom(breach: Breach):
        return {"error": "slow down", "wait": breach.retry_after}, 429

    app, rk = make_app(default="1/minute", on_breach=seen.append, response=custom)
    c = app.test_client()
    get(c)
    r = get(c)
    assert r.status_code == 429 and r.json == {"error": "slow down", "wait": 60}
    assert r.headers["Retry-After"] == "60" and r.headers["RateLimit"] == '"default";r=0;t=60'
    (b,) = seen
    assert not b.decision.allowed and b.name == "default" and b.quota == 1 and b.window == 60
    assert b.policy.spec == "1/minute" and b.limit.kind == "default" and b.retry_after == 60


def test_fail_open_lets_requests_through_and_logs(caplog):
    engine = Engine()
    app, rk = make_app(engine=engine, default="1/minute")
    engine.close()
    with caplog.at_level(logging.WARNING, logger="ratekeeper.flask"):
        assert statuses(app.test_client(), 3) == [200] * 3
    assert "failing open" in caplog.text and "closed" in caplog.text


def test_fail_closed_answers_503_problem_json():
    engine = Engine()
    app, rk = make_app({"RATEKEEPER_FAIL_OPEN": False}, engine=engine, default="1/minute")
    engine.close()
    r = get(app.test_client())
    assert r.status_code == 503 and r.headers["Content-Type"] == "application/problem+json"
    assert json.loads(r.data) == {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                                  "detail": "The rate limiter is unavailable."}


def test_a_bad_callable_spec_fails_open():
    app, rk = make_app()

    @app.get("/x")
    @rk.limit(lambda: "nonsense")
    def x():
        return "ok"

    assert get(app.test_client(), "/x").status_code == 200


def test_current_decision_is_available_to_views():
    app, rk = make_app(default="5/minute")

    @app.get("/d")
    def d():
        return str(rk.current_decision().remaining)

    assert get(app.test_client(), "/d").data == b"4"


# ------------------------------------------------------------------ engines


def test_shared_path_config_uses_a_shared_file(tmp_path):
    path = str(tmp_path / "flask.rk")
    app, rk = make_app({"RATEKEEPER_SHARED_PATH": path}, default="2/minute")
    c = app.test_client()
    assert statuses(c, 1) == [200]
    with Engine.shared(path) as other:  # another "worker"
        p = other.find_policy("flask:2/minute")
        assert p.check("index\x00198.51.100.1").allowed
        assert statuses(c, 1) == [429]
    with app.app_context():
        assert rk.engine.path == path


def test_shared_path_from_the_environment(tmp_path, monkeypatch):
    path = str(tmp_path / "env.rk")
    monkeypatch.setenv("RATEKEEPER_SHARED_PATH", path)
    app, rk = make_app(default="2/minute")
    get(app.test_client())
    assert os.path.exists(path)


def test_explicit_engine_wins(tmp_path):
    engine = Engine()
    app, rk = make_app({"RATEKEEPER_SHARED_PATH": str(tmp_path / "unused.rk")}, engine=engine, default="1/minute")
    get(app.test_client())
    assert not os.path.exists(tmp_path / "unused.rk")
    assert [p.name for p in engine.policies()] == ["flask:1/minute"]


def test_key_prefix_names_the_policies():
    engine = Engine()
    app, rk = make_app({"RATEKEEPER_KEY_PREFIX": "shop"}, engine=engine, default="1/minute")
    get(app.test_client())
    assert [p.name for p in engine.policies()] == ["shop:1/minute"]


def test_math_of_reset_header_is_ceiling():
    assert math.ceil(0.2) == 1  # t=ceil(reset_after): a fresh key of 5/second says t=1
    app, rk = make_app(default="5/second")
    assert get(app.test_client()).headers["RateLimit"] == '"default";r=4;t=1'


def test_ratekeeper_flask_exports():
    import ratekeeper.flask as f

    assert set(f.__all__) >= {"Ratekeeper", "remote_addr", "header", "user", "endpoint"}
    assert ratekeeper.flask.shared_engine is ratekeeper.shared_engine


def test_capacity_and_when_full_reach_the_policies():
    engine = Engine()
    app, rk = make_app({"RATEKEEPER_CAPACITY": 8, "RATEKEEPER_WHEN_FULL": "fail_closed"}, engine=engine,
                       default="5/minute")
    c = app.test_client()
    codes = [get(c, ip=f"203.0.113.{i}").status_code for i in range(64)]
    (policy,) = engine.policies()
    assert policy.stats().capacity < 64 and codes.count(429) > 0 and policy.stats().table_full > 0


def test_shared_mode_and_max_bytes_apply_to_a_new_file(tmp_path):
    path = str(tmp_path / "mode.rk")
    app, rk = make_app({"RATEKEEPER_SHARED_PATH": path, "RATEKEEPER_SHARED_MODE": 0o640,
                        "RATEKEEPER_SHARED_MAX_BYTES": 64 << 20}, default="5/minute")
    get(app.test_client())
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_the_engine_is_reopened_in_a_forked_child(tmp_path):
    app, rk = make_app(default="1/minute")
    assert get(app.test_client()).status_code == 200
    with app.app_context():
        parent_engine = rk.engine
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a fresh in-process engine, not the parent's copy
        try:
            with app.app_context():
                fresh = rk.engine is not parent_engine
            code = get(app.test_client()).status_code
            os.write(w, f"{fresh} {code}".encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    assert out == "True 200"


def test_enabled_is_read_at_every_request_so_tests_can_switch_limits_off_and_on():
    app, rk = make_app(default="1/minute")
    c = app.test_client()
    assert statuses(c, 2) == [200, 429]
    app.config["RATEKEEPER_ENABLED"] = False
    assert statuses(c, 3) == [200] * 3  # off: nothing checked, nothing charged
    app.config["RATEKEEPER_ENABLED"] = True
    assert statuses(c, 1) == [429]  # on again: the earlier charge still holds
    fixed, _ = make_app({"RATEKEEPER_ENABLED": True}, default="1/minute", enabled=False)
    assert statuses(fixed.test_client(), 3) == [200] * 3  # the constructor's option wins


def test_reset_clears_every_key_of_every_policy():
    app, rk = make_app(default="1/minute", application_limits="3/minute")
    c = app.test_client()
    assert statuses(c, 2, "/") == [200, 429]
    assert statuses(c, 2, "/other", ip="198.51.100.9") == [200, 429]
    assert rk.reset() == 4  # two keys under each of the two policies
    assert statuses(c, 2, "/") == [200, 429]
    assert statuses(c, 1, "/other", ip="198.51.100.9") == [200]


@pytest.fixture
def limited_app():
    """The README's fixture pattern: one app, its limits reset around each test."""
    app, rk = make_app(default="2/minute")
    rk.reset()
    yield app
    rk.reset()


@pytest.mark.parametrize("run", [1, 2])
def test_the_readme_fixture_gives_each_test_a_full_quota(limited_app, run):
    assert statuses(limited_app.test_client(), 3) == [200, 200, 429]


def test_readme_recipe_proxyfix_with_trusted_proxies_zero_keys_by_the_client():
    from werkzeug.middleware.proxy_fix import ProxyFix

    app, rk = make_app(default="1/minute")
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)
    c = app.test_client()
    via_proxy = {"REMOTE_ADDR": "10.0.0.1"}

    def get_as(client_ip, spoofed=""):
        xff = f"{spoofed}, {client_ip}" if spoofed else client_ip
        return c.get("/", environ_base=via_proxy, headers={"X-Forwarded-For": xff}).status_code

    assert [get_as("203.0.113.5"), get_as("203.0.113.5")] == [200, 429]
    assert get_as("203.0.113.6") == 200  # another client behind the same proxy
    assert get_as("203.0.113.5", spoofed="198.51.100.77") == 429  # a spoofed entry changes nothing


def test_readme_recipe_cf_connecting_ip_keys_by_cloudflares_client_address():
    def cloudflare_client(wsgi_app):
        def app_(environ, start_response):
            client = environ.get("HTTP_CF_CONNECTING_IP")
            if client:
                environ["REMOTE_ADDR"] = client
            return wsgi_app(environ, start_response)
        return app_

    app, rk = make_app(default="1/minute")
    app.wsgi_app = cloudflare_client(app.wsgi_app)
    c = app.test_client()
    edge = {"REMOTE_ADDR": "172.64.0.1"}
    get_as = lambda ip: c.get("/", environ_base=edge, headers={"CF-Connecting-IP": ip}).status_code  # noqa: E731
    assert [get_as("2001:db8:1:2::1"), get_as("2001:db8:1:2::2")] == [200, 429]  # one /64
    assert get_as("203.0.113.9") == 200
