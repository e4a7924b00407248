//! A throwaway `redis-server` for integration tests.
//!
//! ```ignore
//! #[path = "support/redis_server.rs"]
//! mod redis_server;
//! let server = redis_server::RedisServer::start()?;
//! let url = server.url(); // redis://127.0.0.1:PORT/
//! ```
//!
//! Each server listens on 127.0.0.1 on a free port (found by binding port 0;
//! another port is tried if the server loses a race for it), keeps nothing
//! on disk (`--save "" --appendonly no`; its temporary directory, which
//! holds only the log a failed start is explained by, is removed once it
//! runs) and is ready when `start` returns: it has answered `PING`. It is
//! stopped by its PID on `stop` and on drop, and also dies with the test
//! process however that ends (even a `static` server, which is never
//! dropped, or a test binary killed by a timeout): every server is spawned
//! by one spawner thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG` set to `SIGKILL`.
//!
//! The binary is `$RATEKEEPER_REDIS_SERVER`, else `/usr/bin/redis-server`,
//! else `redis-server` from `PATH`.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried before giving up when servers keep losing the race for one.
const PORT_ATTEMPTS: usize = 20;

/// A running `redis-server`, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    /// More `redis-server` arguments (kept across restarts).
    args: Vec<String>,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port of 127.0.0.1 and waits until it
    /// answers `PING`.
    pub fn start() -> io::Result<RedisServer> {
        Self::start_with(None, Vec::new())
    }

    /// [`start`](Self::start) with more `redis-server` arguments.
    pub fn start_with_args(args: &[&str]) -> io::Result<RedisServer> {
        Self::start_with(None, args.iter().map(|a| a.to_string()).collect())
    }

    /// [`start`](Self::start), with `--requirepass password`: clients must
    /// `AUTH` (e.g. `redis://:password@127.0.0.1:PORT/`).
    pub fn start_with_password(password: &str) -> io::Result<RedisServer> {
        Self::start_with(Some(password.to_string()), Vec::new())
    }

    fn start_with(password: Option<String>, args: Vec<String>) -> io::Result<RedisServer> {
        let dir = temp_dir();
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            match launch(port, password.as_deref(), &args, &dir) {
                Ok(child) => {
                    return Ok(RedisServer {
                        child: Some(child),
                        port,
                        password,
                        args,
                        dir,
                    })
                }
                // Someone else took the port between our probe and the
                // server's bind: try another one.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// `redis://127.0.0.1:PORT/` (without the password, if there is one:
    /// see [`authed_url`](Self::authed_url)).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URL with the password, if the server has one.
    pub fn authed_url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => self.url(),
        }
    }

    /// The port the server listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PID of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the server process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (`SIGKILL` to its PID) and waits for it to exit.
    /// Its data is gone (nothing is persisted). Does nothing if stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts a new one on the same port
    /// (retrying for a few seconds if the port is still taken), empty.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match launch(self.port, self.password.as_deref(), &self.args, &self.dir) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RATEKEEPER_REDIS_SERVER") {
        return p.into();
    }
    let usr = Path::new("/usr/bin/redis-server");
    if usr.exists() {
        return usr.into();
    }
    "redis-server".into()
}

/// A directory name of this server's own (created by `launch`).
fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "rk-redis-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// Spawns every server from one thread that never exits, so that
/// `PR_SET_PDEATHSIG` (which fires when the *thread* that spawned a child
/// exits) fires only when the whole test process is gone.
fn spawn(cmd: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("redis-server spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the redis-server spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// Spawns `cmd` (a server the tests start) so that it is killed when the
/// test process exits, however it exits (`PR_SET_PDEATHSIG`).
pub fn spawn_guarded(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY:
    // - the closure runs in the forked child before exec and calls only
    //   async-signal-safe functions (prctl, getppid, _exit);
    // - it touches no memory of the parent but the copied `parent` value.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The test process may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    spawn(cmd)
}

/// Starts `redis-server` on `port` in `dir` and waits until it answers
/// `PING`; `AddrInUse` if the port was taken. `dir` exists only meanwhile.
fn launch(port: u16, password: Option<&str>, args: &[String], dir: &Path) -> io::Result<Child> {
    std::fs::create_dir_all(dir)?;
    let started = start_in(port, password, args, dir);
    let _ = std::fs::remove_dir_all(dir);
    started
}

fn start_in(port: u16, password: Option<&str>, args: &[String], dir: &Path) -> io::Result<Child> {
    let log = dir.join(format!("redis-{port}.log"));
    let mut cmd = Command::new(binary());
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(p) = password {
        cmd.args(["--requirepass", p]);
    }
    cmd.args(args);
    let mut child = spawn_guarded(cmd).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot run {} ({e}): install redis-server or set RATEKEEPER_REDIS_SERVER",
                binary().display()
            ),
        )
    })?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let kind = if text.contains("Address already in use") {
                io::ErrorKind::AddrInUse
            } else {
                io::ErrorKind::Other
            };
            return Err(io::Error::new(
                kind,
                format!(
                    "redis-server on port {port} exited ({status}): {}",
                    text.trim()
                ),
            ));
        }
        if ping(port, password).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `AUTH` (if needed) and `PING` over a plain connection; Ok on `+PONG`.
fn ping(port: u16, password: Option<&str>) -> io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    if let Some(p) = password {
        write!(s, "*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len())?;
        expect_line(&mut s, "+OK")?;
    }
    s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    expect_line(&mut s, "+PONG")
}

fn expect_line(s: &mut TcpStream, want: &str) -> io::Result<()> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        line.push(byte[0]);
    }
    let got = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
    if got == want {
        Ok(())
    } else {
        Err(io::Error::other(format!("expected {want}, got {got}")))
    }
}
