//! A throwaway Redis Sentinel deployment for tests: one master, one
//! replica and three sentinels (`redis-server --sentinel` with a generated
//! config), all on free ports of 127.0.0.1, each in its own directory under
//! the temporary directory, each killed by its PID on drop (and with the
//! test process, `PR_SET_PDEATHSIG`, see `redis_server.rs`).
//!
//! The sentinels watch the service `mymaster` with quorum 2, call the
//! master down after `DOWN_AFTER_MS` without an answer, and fail over to
//! the replica. `redis-cli` runs through `runner::output`: the including
//! test declares `runner` (tests/support) beside it.
#![allow(dead_code)]

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::redis_server::spawn_guarded;

/// The sentinels' `down-after-milliseconds`.
pub const DOWN_AFTER_MS: u64 = 1000;
/// The service the sentinels watch.
pub const SERVICE: &str = "mymaster";

/// A master, a replica and three sentinels.
pub struct SentinelSet {
    /// (port, process): master, replica, then the three sentinels.
    procs: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// `redis-cli` on `port`, its output (empty if it could not connect).
pub fn cli(port: u16, args: &[&str]) -> String {
    super::runner::output(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_default()
}

impl SentinelSet {
    /// Starts everything and returns once every sentinel knows the
    /// replica and the two other sentinels (so that a failover can be
    /// agreed on), within `timeout`.
    pub fn start(timeout: Duration) -> io::Result<SentinelSet> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("rk-sentinel-{}-{nanos}", std::process::id()));
        let mut set = SentinelSet {
            procs: Vec::new(),
            dir,
        };
        let master = free_port()?;
        set.server(master, &[])?;
        let replica = free_port()?;
        set.server(replica, &["--replicaof", "127.0.0.1", &master.to_string()])?;
        for _ in 0..3 {
            let port = free_port()?;
            let d = set.dir.join(port.to_string());
            std::fs::create_dir_all(&d)?;
            let conf = d.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     logfile {dir}/sentinel.log\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {SERVICE} 10000\n\
                     sentinel parallel-syncs {SERVICE} 1\n",
                    dir = d.display()
                ),
            )?;
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            set.procs.push((port, Some(spawn_guarded(cmd)?)));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let ready = set.sentinel_ports().iter().all(|&s| {
                let replicas = cli(s, &["SENTINEL", "replicas", SERVICE]);
                let others = cli(s, &["SENTINEL", "sentinels", SERVICE]);
                replicas.contains(&replica.to_string())
                    && replicas.contains("slave")
                    && !replicas.contains("s_down")
                    && set
                        .sentinel_ports()
                        .iter()
                        .filter(|&&o| o != s)
                        .all(|o| others.contains(&o.to_string()))
            });
            let synced = cli(replica, &["INFO", "replication"]).contains("master_link_status:up");
            if ready && synced {
                return Ok(set);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the sentinels were not ready within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a redis-server on `port` with `args`, and waits for `PING`.
    fn server(&mut self, port: u16, args: &[&str]) -> io::Result<()> {
        let d = self.dir.join(port.to_string());
        std::fs::create_dir_all(&d)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&d)
            .arg("--logfile")
            .arg(d.join("redis.log"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.procs.push((port, Some(spawn_guarded(cmd)?)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(port, &["PING"]) != "PONG" {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server on {port} did not answer PING"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn master_port(&self) -> u16 {
        self.procs[0].0
    }

    pub fn replica_port(&self) -> u16 {
        self.procs[1].0
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.procs[2..].iter().map(|p| p.0).collect()
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster`
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", nodes.join(","))
    }

    /// The master's port as the first sentinel that answers reports it.
    pub fn reported_master(&self) -> Option<u16> {
        self.sentinel_ports().iter().find_map(|&s| {
            let out = cli(s, &["SENTINEL", "get-master-addr-by-name", SERVICE]);
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// SIGKILL to the master, and wait for it to exit.
    pub fn kill_master(&mut self) {
        if let Some(mut child) = self.procs[0].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
