#!/usr/bin/env python3
"""Tests of the ratekeeper uWSGI plugin (bindings/uwsgi), run by
tests/uwsgi/run.sh once it has built the plugin:

    python3 tests/uwsgi/test_plugin.py --plugin PATH/ratekeeper_plugin.so

Each test starts `uwsgi --master --processes 4 --http 127.0.0.1:<free
port>` with tests/uwsgi/app.py (which records every call it receives), sends
requests on 127.0.0.1, and stops uWSGI by its master's PID (SIGINT, then
SIGKILL to its process group if it has not exited after 30 s). Assertions are
on counts and contents, never on speed; waits are bounded generously.
Prints "N passed, M failed" last and exits non-zero on any failure.
"""
import argparse
import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "app.py")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One uWSGI instance: master, 4 workers, the HTTP router."""

    def __init__(self, args, routes, extra=(), processes=4, shm_file=True):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="rk-uwsgi-test.")
        # Kept until the run ends (a failing test's message quotes the log
        # after stop()), then removed.
        atexit.register(shutil.rmtree, self.tmp, True)
        self.calls = os.path.join(self.tmp, "calls")
        self.log = os.path.join(self.tmp, "uwsgi.log")
        self.shm = "/dev/shm/rk-uwsgi-test-%d-%d.rk" % (os.getpid(), random.randrange(1 << 30)) if shm_file else None
        self.port = free_port()
        cmd = [
            args.uwsgi, "--plugin-dir", args.plugin_dir,
            "--plugins", ",".join(p for p in (args.core_plugins, args.plugin) if p),
            "--master", "--processes", str(processes), "--http", "127.0.0.1:%d" % self.port,
            "--wsgi-file", APP, "--buffer-size", "65535", "--http-buffer-size", "65535",
            "--env", "RK_TEST_CALLS=" + self.calls, "--logto", self.log,
        ]
        if self.shm:
            cmd += ["--ratekeeper-file", self.shm]
        for r in routes:
            cmd += ["--route", r]
        cmd += list(extra)
        self.cmd = cmd
        self.proc = None

    def start(self, expect_failure=False):
        with open(self.log + ".out", "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if expect_failure:
            try:
                code = self.proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError("uWSGI did not stop at startup; log:\n" + self.output())
            return code
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("uWSGI exited with %s at startup; log:\n%s" % (self.proc.returncode, self.output()))
            try:
                status, _, _ = self.get("/health")
                if status == 200:
                    return None
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("uWSGI did not answer within %.0f s; log:\n%s" % (START_TIMEOUT, self.output()))

    def output(self):
        text = ""
        for path in (self.log + ".out", self.log):
            try:
                with open(path, "rb") as f:
                    text += f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                pass
        return text

    def group(self):
        """PIDs of the instance's processes (its master's process group)."""
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self):
        """SIGINT to the master, which stops its workers and router. A
        worker that got its SIGINT before it had set up its own handlers (a
        uWSGI race at startup) ignores it: after 5 s each process still
        there gets SIGINT by its PID; after STOP_TIMEOUT more, SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            self._cleanup()
            return
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            for pid in self.group():
                if pid != self.proc.pid:
                    _kill(pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                ps = subprocess.run(["ps", "-o", "pid,stat,wchan:32,args", "-g", str(self.proc.pid)],
                                    capture_output=True, text=True).stdout
                print("  WARNING: uWSGI still running %.0f s after SIGINT; killing its group:\n%s\n%s"
                      % (STOP_TIMEOUT, ps, self.output()[-1500:]))
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # the workers and the router leave with the master
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.group() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.group():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._cleanup()

    def _cleanup(self):
        if self.shm and os.path.exists(self.shm):
            os.unlink(self.shm)

    def calls_received(self):
        try:
            return os.path.getsize(self.calls)
        except FileNotFoundError:
            return 0

    def slow_pids(self):
        try:
            with open(self.calls + ".pids") as f:
                return [int(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def get(self, path, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest("GET", path)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.getheaders(), body
        finally:
            conn.close()


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def header(headers, name):
    values = [v for k, v in headers if k.lower() == name.lower()]
    assert len(values) <= 1, "%s appears %d times" % (name, len(values))
    return values[0] if values else None


def check_429(status, headers, body, policy_field, item, quota, window):
    """A complete 429 as the Flask extension writes it."""
    assert status == 429, status
    assert header(headers, "Content-Type") == "application/problem+json", headers
    retry = header(headers, "Retry-After")
    assert retry is not None and re.fullmatch(r"[1-9][0-9]*", retry), headers
    assert header(headers, "RateLimit-Policy") == policy_field, headers
    rl = header(headers, "RateLimit")
    m = re.fullmatch(r'"%s";r=0;t=([0-9]+)' % re.escape(item), rl or "")
    assert m, rl
    assert header(headers, "Content-Length") == str(len(body)), headers
    doc = json.loads(body)
    assert list(doc) == ["type", "title", "status", "detail", "policy", "retry_after"], doc
    assert doc["type"] == "about:blank" and doc["title"] == "Too Many Requests" and doc["status"] == 429, doc
    assert doc["policy"] == item and doc["retry_after"] == int(retry), doc
    assert doc["detail"] == "Rate limit %s exceeded (%d per %d s); retry in %s s." % (item, quota, window, retry), doc
    # the spacing and order of Python's json.dumps
    assert body.decode() == json.dumps(doc), body


def run_parallel(server, n, threads, path, headers=None):
    results = []
    lock = threading.Lock()
    todo = list(range(n))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            r = server.get(path, headers)
            with lock:
                results.append(r)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


# ---------------------------------------------------------------- tests

HEALTH = "^/health$ continue:"


def test_exactly_n_of_m_allowed_across_four_workers_and_denials_never_reach_the_app(args):
    routes = [HEALTH, "^/limited ratekeeper:policy=exact,spec=fixed_window 50/1 hour,key=one"]
    s = Server(args, routes)
    s.start()
    try:
        before = s.calls_received()
        results = run_parallel(s, 200, 8, "/limited")
        allowed = [r for r in results if r[0] == 200]
        denied = [r for r in results if r[0] == 429]
        assert len(allowed) == 50 and len(denied) == 150, (len(allowed), len(denied), {r[0] for r in results})
        assert s.calls_received() - before == 50, s.calls_received() - before
        for status, headers, body in denied:
            check_429(status, headers, body, '"exact";q=50;w=3600', "exact", 50, 3600)
        remaining = sorted(int(re.search(r";r=([0-9]+);", header(h, "RateLimit")).group(1)) for _, h, _ in allowed)
        assert remaining == list(range(50)), remaining
        for _, headers, _ in allowed:
            assert header(headers, "RateLimit-Policy") == '"exact";q=50;w=3600', headers
        pids = {int(b.split()[1]) for _, _, b in allowed}
        print("  50 of 200 allowed, served by %d worker process(es)" % len(pids))
    finally:
        s.stop()


def test_several_keys_are_charged_all_or_nothing(args):
    routes = [HEALTH, "^/multi ratekeeper:policy=per-ip,spec=fixed_window 5/1 hour,key=ip:${REMOTE_ADDR},"
              "policy2=per-key,spec2=fixed_window 3/1 hour,key2=k:${HTTP_X_API_KEY}"]
    s = Server(args, routes)
    s.start()
    try:
        field = '"per-ip";q=5;w=3600, "per-key";q=3;w=3600'
        before = s.calls_received()
        got = [s.get("/multi", {"X-Api-Key": "A"}) for _ in range(4)]
        assert [g[0] for g in got] == [200, 200, 200, 429], [g[0] for g in got]
        check_429(*got[3], field, "per-key", 3, 3600)
        # the denied request charged nothing to per-ip: key B gets the 2 left
        got = [s.get("/multi", {"X-Api-Key": "B"}) for _ in range(3)]
        assert [g[0] for g in got] == [200, 200, 429], [g[0] for g in got]
        check_429(*got[2], field, "per-ip", 5, 3600)
        assert header(got[1][1], "RateLimit") == '"per-ip";r=0;t=3600', got[1][1]
        assert s.calls_received() - before == 5, s.calls_received() - before
    finally:
        s.stop()


def test_multi_limit_specs_name_each_limit_and_the_binding_one(args):
    routes = [HEALTH, "^/api ratekeeper:policy=api,spec=fixed_window 2/1 minute;fixed_window 100/1 hour,key=one"]
    s = Server(args, routes)
    s.start()
    try:
        field = '"api-0";q=2;w=60, "api-1";q=100;w=3600'
        got = [s.get("/api") for _ in range(3)]
        assert [g[0] for g in got] == [200, 200, 429], [g[0] for g in got]
        assert header(got[0][1], "RateLimit-Policy") == field, got[0][1]
        check_429(*got[2], field, "api-0", 2, 60)
    finally:
        s.stop()


def test_hostile_keys_of_any_bytes_and_length_are_keys_like_any_other(args):
    routes = [HEALTH, "^/key ratekeeper:policy=bykey,spec=fixed_window 2/1 hour,key=${HTTP_X_API_KEY}"]
    s = Server(args, routes)
    s.start()
    try:
        rng = random.Random(17)
        alphabet = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
        for length in (1, 100, 4000, 30000):
            key = bytes(rng.choice(alphabet) for _ in range(length))
            got = [s.get("/key", {"X-Api-Key": key})[0] for _ in range(3)]
            assert got == [200, 200, 429], (length, got)
        # the same long key again: still counted (denied), another one: fresh
        key = bytes(rng.choice(alphabet) for _ in range(30000))
        assert s.get("/key", {"X-Api-Key": key})[0] == 200
    finally:
        s.stop()


def test_a_concurrency_permit_is_held_for_the_request_and_given_back_at_its_end(args):
    routes = [HEALTH, "^/slow ratekeeper:policy=slots,spec=concurrency 1 ttl 300 seconds,key=${REMOTE_ADDR}"]
    s = Server(args, routes)
    s.start()
    try:
        # One after the other: each request gives its permit back when it
        # ends, which is just after its response was sent (uWSGI's
        # after-request chain): the next one may have to ask again, but
        # within moments, not after the lease's 300 s.
        for _ in range(5):
            status, headers, _ = until_allowed(s, "/slow?hold=0")
            assert status == 200, status
            assert header(headers, "RateLimit-Policy") == '"slots";q=1;w=300', headers
        holder = threading.Thread(target=lambda: s.get("/slow?hold=3"))
        holder.start()
        deadline = time.monotonic() + 30
        while len(s.slow_pids()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(s.slow_pids()) == 6
        status, headers, body = s.get("/slow?hold=0")
        assert status == 429, status
        doc = json.loads(body)
        assert doc["policy"] == "slots" and header(headers, "RateLimit") == '"slots";r=0;t=300', (doc, headers)
        holder.join()
        assert until_allowed(s, "/slow?hold=0")[0] == 200
    finally:
        s.stop()


def until_allowed(server, path, timeout=20.0):
    """GET `path` until it is not a 429 (at most `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        status, headers, body = server.get(path)
        if status != 429 or time.monotonic() > deadline:
            return status, headers, body
        time.sleep(0.01)


def test_a_sigkilled_worker_gives_its_permit_back_at_once(args):
    routes = [HEALTH, "^/slow ratekeeper:policy=slots,spec=concurrency 1 ttl 300 seconds,key=one"]
    s = Server(args, routes)
    s.start()
    try:
        holder = threading.Thread(target=lambda: _ignore_errors(lambda: s.get("/slow?hold=120", timeout=150)))
        holder.daemon = True
        holder.start()
        deadline = time.monotonic() + 30
        while not s.slow_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = s.slow_pids()
        assert len(pids) == 1, pids
        assert s.get("/slow?hold=0")[0] == 429  # the permit is held
        os.kill(pids[0], signal.SIGKILL)
        # the lease lasts 300 s: only the master's rk_release_holder frees it sooner
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            status = s.get("/slow?hold=0")[0]
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200, "the dead worker's permit was not given back:\n" + s.output()[-3000:]
        assert "died: 1 permit(s) released" in s.output(), s.output()[-3000:]
    finally:
        s.stop()


def _ignore_errors(f):
    try:
        f()
    except (OSError, http.client.HTTPException):
        pass


def test_a_worker_without_its_engine_fails_open_or_closed_as_the_route_says(args):
    """A worker that cannot open the shared file (here: it was made
    world-readable after the master checked it, and the worker respawned)
    lets `fail=open` routes through and answers 503 on `fail=closed` ones."""
    routes = [HEALTH, "^/open ratekeeper:policy=o,spec=1/hour,key=x,fail=open",
              "^/closed ratekeeper:policy=c,spec=1/hour,key=x,fail=closed"]
    s = Server(args, routes, processes=1, extra=["--ratekeeper-problem-type", "https://example.com/problems/limiter"])
    s.start()
    try:
        worker = [int(p) for p in re.findall(r"spawned uWSGI worker 1 \(pid: ([0-9]+)", s.output())]
        assert len(worker) == 1, s.output()
        os.chmod(s.shm, 0o644)
        os.kill(worker[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "rk_engine_open_shared(%s): RK_ERR_UNSAFE_FILE" % s.shm not in s.output():
            assert time.monotonic() < deadline, s.output()[-3000:]
            time.sleep(0.05)
        before = s.calls_received()
        assert [s.get("/open")[0] for _ in range(3)] == [200, 200, 200]
        assert s.calls_received() - before == 3
        status, headers, body = s.get("/closed")
        assert status == 503 and header(headers, "Content-Type") == "application/problem+json", (status, headers)
        assert json.loads(body) == {"type": "https://example.com/problems/limiter", "title": "Service Unavailable",
                                    "status": 503, "detail": "The rate limiter is unavailable."}, body
        assert s.calls_received() - before == 3
        assert "this worker has no ratekeeper engine" in s.output(), s.output()[-2000:]
    finally:
        s.stop()


def test_the_default_file_is_per_master_and_removed_at_exit(args):
    routes = [HEALTH, "^/limited ratekeeper:policy=p,spec=5/minute"]
    s = Server(args, routes, shm_file=False)
    s.start()
    path = "/dev/shm/ratekeeper-uwsgi-%d.rk" % s.proc.pid
    try:
        assert os.path.exists(path), s.output()
        assert s.get("/limited")[0] == 200
    finally:
        s.stop()
        left = os.path.exists(path)
        if left:
            os.unlink(path)  # leave nothing behind, then fail
    assert not left, path


def test_the_file_is_named_after_procname_master(args):
    name = "rk-test-%d" % os.getpid()
    path = "/dev/shm/ratekeeper-uwsgi-%s.rk" % name
    routes = [HEALTH, "^/limited ratekeeper:policy=p,spec=5/minute"]
    s = Server(args, routes, shm_file=False, extra=["--procname-master", name])
    s.start()
    try:
        assert os.path.exists(path), s.output()
    finally:
        s.stop()
        if os.path.exists(path):
            os.unlink(path)  # a stable name outlives the master (limits survive restarts)
        else:
            raise AssertionError("a procname-derived file must survive the master")


def test_the_readme_example_config_works(args):
    """The ini file of README "uWSGI", as it is written there (its port and
    app replaced): inline ';' in a spec, two items, a concurrency route."""
    if args.core_plugins != "http,python3":
        print("  SKIP: the README's ini loads uWSGI's http and python3 plugins (Debian's layout)")
        return
    readme = open(os.path.join(os.path.dirname(os.path.dirname(HERE)), "README.md")).read()
    section = readme[readme.index("### uWSGI\n"):]
    ini = section[section.index("```ini\n") + 7:]
    ini = ini[:ini.index("```")]
    assert "plugins = http,python3,ratekeeper" in ini and "route = ^/api/ ratekeeper:" in ini, ini
    s = Server(args, [HEALTH], shm_file=True)
    ini = ini.replace("127.0.0.1:8000", "127.0.0.1:%d" % s.port).replace("app.py", APP)
    path = os.path.join(s.tmp, "app.ini")
    with open(path, "w") as f:
        f.write(ini)
    plugin_dir = os.path.join(s.tmp, "plugins")
    os.mkdir(plugin_dir)
    os.symlink(os.path.abspath(args.plugin), os.path.join(plugin_dir, "ratekeeper_plugin.so"))
    s.cmd = [args.uwsgi, "--plugin-dir", args.plugin_dir, "--plugin-dir", plugin_dir, "--ini", path,
             "--ratekeeper-file", s.shm, "--env", "RK_TEST_CALLS=" + s.calls, "--logto", s.log,
             "--route", HEALTH]
    s.start()
    try:
        status, headers, _ = s.get("/api/x", {"X-Api-Key": "k1"})
        assert status == 200, status
        assert header(headers, "RateLimit-Policy") == \
            '"api-0";q=100;w=60, "api-1";q=2000;w=3600, "per-ip";q=20;w=1', headers
        status, headers, _ = s.get("/upload")
        assert status == 200 and header(headers, "RateLimit-Policy") == '"uploads";q=4;w=300', headers
    finally:
        s.stop()


BAD_ROUTES = [
    ("an unknown option", ["^/a ratekeeper:policy=a,spec=1/second,bogus=1"], 'unknown route option "bogus"'),
    ("a spec that does not parse", ["^/a ratekeeper:policy=a,spec=5/fortnight"], "fortnight"),
    ("no policy", ["^/a ratekeeper:spec=5/second"], "spec given without policy"),
    ("a second item without its policy", ["^/a ratekeeper:policy=a,spec=5/second,key2=x,spec2=1/second"],
     "spec2, key2 given without policy2"),
    ("an option given twice", ["^/a ratekeeper:policy=a,spec=5/second,policy=b"], '"policy" given twice'),
    ("no spec anywhere", ["^/a ratekeeper:policy=a"], 'policy "a" has no spec'),
    ("one name, two specs", ["^/a ratekeeper:policy=a,spec=5/second", "^/b ratekeeper:policy=a,spec=6/second"],
     "RK_ERR_POLICY_MISMATCH"),
    ("a cost that is not a number", ["^/a ratekeeper:policy=a,spec=5/second,cost=-1"], "cost=-1"),
    ("an option without a value", ["^/a ratekeeper:policy=a,spec=5/second,headers"], "has no value"),
    ("a bad fail= value", ["^/a ratekeeper:policy=a,spec=5/second,fail=maybe"], "fail=maybe"),
]


def test_bad_route_options_stop_uwsgi_at_startup_with_a_clear_message(args):
    for what, routes, message in BAD_ROUTES:
        s = Server(args, routes)
        code = s.start(expect_failure=True)
        s.stop()
        assert code != 0, (what, code)
        assert message in s.output(), (what, message, s.output()[-2000:])
        assert "bad route action" in s.output() or "ratekeeper" in s.output(), what
        print("  %s: exit %d, %r" % (what, code, _line_with(s.output(), message)))


def test_a_bad_shared_file_stops_uwsgi_at_startup(args):
    s = Server(args, ["^/a ratekeeper:policy=a,spec=5/second"])
    with open(s.shm, "wb") as f:
        f.write(b"not a ratekeeper file" * 1000)
    os.chmod(s.shm, 0o600)
    code = s.start(expect_failure=True)
    s.stop()
    assert code != 0, code
    assert "RK_ERR_CORRUPT" in s.output(), s.output()[-2000:]
    print("  corrupt file: exit %d, %r" % (code, _line_with(s.output(), "RK_ERR_CORRUPT")))
    s = Server(args, ["^/a ratekeeper:policy=a,spec=5/second"])
    with open(s.shm, "wb") as f:
        f.write(b"")
    os.chmod(s.shm, 0o666)
    code = s.start(expect_failure=True)
    s.stop()
    assert code != 0 and "RK_ERR_UNSAFE_FILE" in s.output(), (code, s.output()[-2000:])


def test_a_build_against_a_uwsgi_without_routing_fails_with_a_message_that_says_so(args):
    """What `uwsgi --build-plugin` does with a uWSGI compiled without PCRE,
    simulated with this uWSGI's own uwsgi.h and flags minus routing: the
    plugin's uwsgiplugin.py stops first, and the C file has an #error."""
    root = os.path.dirname(os.path.dirname(HERE))
    cflags = subprocess.run([args.uwsgi, "--cflags"], capture_output=True, text=True, check=True).stdout
    without = " ".join(f for f in cflags.split() if f not in ("-DUWSGI_ROUTING", "-DUWSGI_PCRE"))
    r = subprocess.run([sys.executable, os.path.join(root, "bindings", "uwsgi", "uwsgiplugin.py")],
                       env={**os.environ, "UWSGI_PLUGINS_BUILDER_CFLAGS": without}, capture_output=True, text=True)
    assert r.returncode != 0 and "built without internal routing" in r.stderr, (r.returncode, r.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "uwsgi.h"), "wb") as f:
            f.write(subprocess.run([args.uwsgi, "--dot-h"], capture_output=True, check=True).stdout)
        flags = [f for f in without.split() if f.startswith(("-D", "-I"))]
        r = subprocess.run(["cc", "-fsyntax-only", *flags, "-I", tmp, "-I", os.path.join(root, "include"),
                            os.path.join(root, "bindings", "uwsgi", "ratekeeper_uwsgi.c")],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "built without internal routing" in r.stderr, (r.returncode, r.stderr)
        assert r.stderr.count("error:") == 1, r.stderr  # the #error alone


def _line_with(text, needle):
    for line in text.splitlines():
        if needle in line:
            return line.strip()
    return ""


def test_the_429_is_the_flask_extensions_429(args):
    """Same fields, same body as ratekeeper.flask for the same limit (only
    the seconds may differ: the two count from different instants)."""
    try:
        import flask
        from ratekeeper import Engine
        from ratekeeper.flask import Ratekeeper
    except ImportError as e:
        print("  SKIP: ratekeeper.flask is not importable here (%s); bindings/python/run_tests.sh installs it" % e)
        return
    app = flask.Flask("cmp")
    rk = Ratekeeper(app, engine=Engine(), key=lambda: "one")

    @app.route("/api")
    @rk.limit("fixed_window 2/1 minute;fixed_window 100/1 hour", name="api")
    def api():
        return "ok"

    client = app.test_client()
    for _ in range(2):
        client.get("/api")
    fr = client.get("/api")
    assert fr.status_code == 429
    routes = [HEALTH, "^/api ratekeeper:policy=api,spec=fixed_window 2/1 minute;fixed_window 100/1 hour,key=one"]
    s = Server(args, routes)
    s.start()
    try:
        for _ in range(2):
            s.get("/api")
        status, headers, body = s.get("/api")
    finally:
        s.stop()

    def norm(text):
        return re.sub(r"\d+ s\.|retry_after\": \d+|t=\d+|^\d+$", "#", text)

    names = ["Content-Type", "Retry-After", "RateLimit-Policy", "RateLimit"]
    ours = {n: norm(header(headers, n)) for n in names}
    theirs = {n: norm(fr.headers.get(n)) for n in names}
    assert ours == theirs, (ours, theirs)
    assert norm(body.decode()) == norm(fr.get_data(as_text=True)), (body, fr.get_data())
    print("  the same fields and body as ratekeeper.flask: %s" % body.decode())


TESTS = [v for k, v in sorted(globals().items()) if k.startswith("test_")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugin", required=True, help="path of ratekeeper_plugin.so")
    ap.add_argument("--uwsgi", default=os.environ.get("UWSGI", "uwsgi"))
    ap.add_argument("--plugin-dir", default="/usr/lib/uwsgi/plugins")
    ap.add_argument("--core-plugins", default="http,python3",
                    help="uWSGI's own plugins to load first ('' for a uWSGI with them built in, as pip's)")
    ap.add_argument("-k", default="", help="run the tests whose name contains this")
    args = ap.parse_args()
    passed = failed = 0
    failures = []
    for t in TESTS:
        if args.k not in t.__name__:
            continue
        start = time.monotonic()
        try:
            t(args)
        except Exception:
            failed += 1
            failures.append(t.__name__)
            print("FAIL %s\n%s" % (t.__name__, traceback.format_exc()))
        else:
            passed += 1
            print("PASS %s (%.1f s)" % (t.__name__, time.monotonic() - start))
    for f in failures:
        print("failed: " + f)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
