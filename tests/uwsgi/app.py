"""The application behind uWSGI in tests/uwsgi: it records every call it
receives (one byte appended to $RK_TEST_CALLS, O_APPEND: exact across
worker processes) so that the test can tell which requests reached Python.

/slow?hold=S records the worker's pid in $RK_TEST_CALLS.pids and sleeps S
seconds (a request that holds its concurrency permit)."""
import os
import time
from urllib.parse import parse_qs

CALLS = os.environ["RK_TEST_CALLS"]


def application(environ, start_response):
    fd = os.open(CALLS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    if environ.get("PATH_INFO", "").startswith("/slow"):
        with open(CALLS + ".pids", "a") as f:
            f.write("%d\n" % os.getpid())
        hold = float(parse_qs(environ.get("QUERY_STRING", "")).get("hold", ["0"])[0])
        time.sleep(hold)
    body = b"ok %d\n" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
