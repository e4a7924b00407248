"""Test against the installed package (with its compiled modules), never the
source tree next to this folder, whatever the working directory."""

import os
import sys

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _PKG_DIR]
for _name in [m for m in sys.modules if m == "ratekeeper" or m.startswith("ratekeeper.")]:
    del sys.modules[_name]


# ---------------------------------------------------------------- Redis

import pytest  # noqa: E402

from redis_server import RedisServer, redis_server_binary  # noqa: E402


def _need_redis_server() -> None:
    """Skips the test if redis-server is missing, except in CI (CI=true),
    where tests/run.sh and run_tests.sh install it: there it is a failure."""
    if redis_server_binary() is None:
        if os.environ.get("CI", "") not in ("", "0", "false"):
            pytest.fail("redis-server is not installed, and CI must run the Redis tests "
                        "(tests/run.sh installs it with apt-get)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the whole session (127.0.0.1, a free port, no
    persistence), killed by PID at the end. Tests that share it keep apart
    by key prefix; tests that stop or restart Redis use ``redis_factory``."""
    _need_redis_server()
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_factory():
    """Starts servers of the test's own: ``redis_factory(password=None,
    args=())`` returns a started :class:`RedisServer` (``url``, ``port``,
    ``stop()``, ``start()`` on the same port, ``kill()``); every one is
    killed by PID and its directory removed at teardown."""
    _need_redis_server()
    servers = []

    def make(password=None, args=()):
        server = RedisServer(password=password, args=args)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.close()
