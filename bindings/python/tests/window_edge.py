"""The scenario of a ``deduct_when`` refund that must stay in the window it
was charged in, shared by the in-process (test_flask.py) and the Redis
(test_redis.py) tests."""

import time

#: The login limit's window, seconds.
WINDOW = 2.0


def wait_seconds(seconds: float) -> None:
    """Sleeps until ``seconds`` of CLOCK_MONOTONIC have passed (the engine's
    clock and Redis's run at the host's rate, so both are past it then)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def refund_across_a_window_edge(app, rk, addr: str, attempts: int = 5):
    """A login limit of 2 failures a 2-second window (``deduct_when``:
    successes are refunded). Request A (a success) is charged in window W0
    and answered after W0 ended and request B (a failure, counted) opened
    W1. Returns A's status and those of two more failures: ``(200, [401,
    429])`` when A's refund is placed in W0; taken from W1 it would give B's
    unit back and let a third failure through (``[401, 401]``).

    The answer means something only if W1 is still open at the last
    failure: a run where the requests from B on took more than half a
    window (a stalled machine) is run again, on a new client address (a key
    of its own), up to ``attempts`` times; the result of the last run is
    returned either way."""
    from flask import request

    key = {}
    opened = {}

    @app.post("/login")
    @rk.limit("fixed_window 2/2 seconds", key=lambda: key["addr"],
              deduct_when=lambda response: response.status_code >= 400)
    def login():
        if request.form.get("password") != "right":
            return "no", 401
        wait_seconds(WINDOW + 0.05)  # W0, opened by this request's check, is over (+ more than a coarse tick)
        opened["at"] = time.monotonic()
        assert c.post("/login", data={"password": "wrong"}).status_code == 401  # B opens W1
        return "welcome", 200

    c = app.test_client()
    for attempt in range(attempts):
        key["addr"] = f"{addr}#{attempt}"
        a = c.post("/login", data={"password": "right"}).status_code
        bad = [c.post("/login", data={"password": "wrong"}).status_code for _ in range(2)]
        if time.monotonic() - opened["at"] < WINDOW / 2:
            break
    return a, bad
