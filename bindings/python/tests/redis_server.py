"""A throwaway ``redis-server`` for tests and benchmarks: started on
127.0.0.1 with a free port in its own temporary directory (no persistence:
``--save "" --appendonly no``), stopped by its PID, restartable on the same
port (to test failover and recovery).

    with RedisServer() as server:          # or server.start() / server.stop()
        server.url                         # "redis://127.0.0.1:PORT/0"
        server.stop(); server.start()      # down, then up again on the same port

Needs only the ``redis-server`` binary (``apt-get install redis-server``);
:meth:`RedisServer.command` speaks RESP over a plain socket, so the ``redis``
Python client is not needed either. Used by ``conftest.py`` (the
``redis_server`` fixtures) and ``benchmarks/bench_redis.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from typing import Any, List, Optional, Sequence, Union

__all__ = ["RedisServer", "free_port", "redis_server_binary"]


def redis_server_binary() -> Optional[str]:
    """The path of ``redis-server`` (``$REDIS_SERVER`` if set), or None."""
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisError(Exception):
    """An error reply (``-ERR ...``) of the server to :meth:`RedisServer.command`."""


class RedisServer:
    """One ``redis-server`` process, owned by this object.

    ``password``: started with ``--requirepass`` (and :attr:`url` carries
    it). ``args``: more ``redis-server`` arguments. The port is chosen when
    first started and kept by later :meth:`start` calls.
    """

    def __init__(self, password: Optional[str] = None, args: Sequence[str] = (), start_timeout: float = 10.0):
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.password = password
        self.args = list(args)
        self.start_timeout = start_timeout
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.dir = tempfile.mkdtemp(prefix="rk-redis-")
        self.log_path = os.path.join(self.dir, "redis.log")

    # -- addresses --------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifetime ---------------------------------------------------------

    def start(self) -> "RedisServer":
        """Starts the server (on the same port as before, if it ran before)
        and waits until it answers PING. Raises RuntimeError with the
        server's log if it does not come up in time."""
        if self.running:
            return self
        fixed = self.port is not None
        for attempt in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except RuntimeError:
                log = self.log()
                self._kill()
                # Someone took the free port between our probe and the bind.
                if not fixed and "Address already in use" in log and attempt < 4:
                    continue
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stops the server by its PID (SIGTERM, then SIGKILL after 5 s) and
        waits for it to exit. Idempotent."""
        self._kill()

    def kill(self) -> None:
        """Kills the server at once (SIGKILL): a crash, not a shutdown."""
        self._kill(sig=signal.SIGKILL)

    def freeze(self) -> None:
        """Stops the process (SIGSTOP) without closing anything: the kernel
        still accepts connections, but nothing answers (a hung server, the
        case that only timeouts catch). :meth:`thaw` resumes it."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Resumes a frozen server (SIGCONT)."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stops the server and removes its directory."""
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net; tests call close()
        try:
            self._kill(sig=signal.SIGKILL)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def log(self) -> str:
        """The server's log so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _spawn(self) -> None:
        cmd = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--daemonize", "no",
            "--logfile", self.log_path,
            "--protected-mode", "no",
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        cmd += self.args
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("exited")
            try:
                reply = self._raw(["PING"], timeout=0.5)
                # PONG, or NOAUTH from a server with a password: it is up.
                if reply == "PONG" or (isinstance(reply, RedisError) and "NOAUTH" in str(reply)):
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("timed out")

    def _kill(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a frozen server handles SIGTERM only once resumed
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    # -- talking to it ----------------------------------------------------

    def command(self, *args: Union[str, bytes, int], timeout: float = 5.0) -> Any:
        """Sends one command (authenticating first if the server has a
        password) and returns the decoded reply: str, int, None, or a list.
        An error reply raises :class:`RedisError`."""
        cmds: List[Sequence[Any]] = []
        if self.password:
            cmds.append(["AUTH", self.password])
        cmds.append(list(args))
        replies = self._raw_many(cmds, timeout)
        for r in replies:
            if isinstance(r, RedisError):
                raise r
        return replies[-1]

    def info(self, section: str = "all") -> dict:
        """``INFO section`` as a dict of str -> str."""
        text = self.command("INFO", section)
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                k, _, v = line.partition(":")
                out[k] = v
        return out

    def commandstats(self, field: str = "calls") -> dict:
        """A field of ``INFO commandstats`` by command: ``calls`` (default,
        e.g. {"evalsha": 12}) or ``usec`` (time spent in the server)."""
        out = {}
        for k, v in self.info("commandstats").items():
            if k.startswith("cmdstat_"):
                fields = dict(part.split("=", 1) for part in v.split(","))
                out[k[len("cmdstat_"):]] = int(fields[field])
        return out

    def monitor(self) -> "Monitor":
        """A context manager counting, with MONITOR, the commands clients
        send (round trips) and the commands scripts run inside the server."""
        return Monitor(self)

    def _raw(self, args: Sequence[Any], timeout: float) -> Any:
        return self._raw_many([args], timeout)[0]

    def _raw_many(self, cmds: Sequence[Sequence[Any]], timeout: float) -> List[Any]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(b"".join(_encode(c) for c in cmds))
            reader = _Reader(s)
            return [reader.reply() for _ in cmds]


def _encode(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Reader:
    """Just enough RESP2 to read replies."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"not a RESP reply: {line[:60]!r}")


class Monitor:
    """Counts commands with ``MONITOR`` while the ``with`` block runs.

    ``clients``: a Counter of the commands clients sent, one per round trip
    (the monitor's own end marker and ``INFO`` excluded); ``scripts``: the
    commands Lua scripts ran inside the server. MONITOR slows the server
    down: count traffic in a pass of its own, never while timing.
    """

    _END = "rk-monitor-end"

    def __init__(self, server: RedisServer):
        self.server = server
        self.clients: Counter = Counter()
        self.scripts: Counter = Counter()

    def __enter__(self) -> "Monitor":
        self.sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        cmds: List[Sequence[Any]] = [["AUTH", self.server.password]] if self.server.password else []
        cmds.append(["MONITOR"])
        self.sock.sendall(b"".join(_encode(c) for c in cmds))
        self.reader = _Reader(self.sock)
        for _ in cmds:
            reply = self.reader.reply()
            if isinstance(reply, RedisError):
                raise reply
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        # Lines look like: 1700000000.123456 [0 127.0.0.1:40000] "evalsha" "..."
        # or, for a command a script ran: ... [0 lua] "incrby" ...
        while True:
            line = self.reader.reply()
            if not isinstance(line, str):
                continue
            head, _, rest = line.partition("] ")
            cmd = rest.split(" ", 1)[0].strip('"').lower()
            args = rest.split(" ", 1)[1] if " " in rest else ""
            if cmd == "echo" and self._END in args:
                return
            if head.endswith(" lua"):
                self.scripts[cmd] += 1
            elif cmd != "info":
                self.clients[cmd] += 1

    def __exit__(self, *exc: Any) -> None:
        try:
            self.server.command("ECHO", self._END)
            self.thread.join(timeout=10)
        finally:
            self.sock.close()

    @property
    def round_trips(self) -> int:
        return sum(self.clients.values())
