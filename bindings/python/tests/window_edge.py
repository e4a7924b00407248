"""The scenario of a ``deduct_when`` refund that must stay in the window it
was charged in, shared by the in-process (test_flask.py) and the Redis
(test_redis.py) tests."""

import time


def wait_seconds(seconds: float) -> None:
    """Sleeps until ``seconds`` of CLOCK_MONOTONIC have passed (the engine's
    clock and Redis's run at the host's rate, so both are past it then)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def refund_across_a_window_edge(app, rk, addr: str):
    """A login limit of 2 failures a 2-second window (``deduct_when``:
    successes are refunded). Request A (a success) is charged in window W0
    and answered after W0 ended and request B (a failure, counted) opened
    W1. Returns A's status and those of two more failures: ``(200, [401,
    429])`` when A's refund is placed in W0; taken from W1 it would give B's
    unit back and let a third failure through (``[401, 401]``)."""
    from flask import request

    env = {"REMOTE_ADDR": addr}

    @app.post("/login")
    @rk.limit("fixed_window 2/2 seconds", deduct_when=lambda response: response.status_code >= 400)
    def login():
        if request.form.get("password") != "right":
            return "no", 401
        wait_seconds(2.05)  # W0, opened by this request's check, is over (+ more than a coarse tick)
        assert c.post("/login", data={"password": "wrong"}, environ_base=env).status_code == 401  # B opens W1
        return "welcome", 200

    c = app.test_client()
    a = c.post("/login", data={"password": "right"}, environ_base=env).status_code
    return a, [c.post("/login", data={"password": "wrong"}, environ_base=env).status_code for _ in range(2)]
