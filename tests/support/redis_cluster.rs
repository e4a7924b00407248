//! A throwaway Redis Cluster for tests and benches: three `redis-server`
//! masters (no replicas) on free ports of 127.0.0.1, joined with
//! `redis-cli --cluster create`, each in its own temporary directory,
//! killed by PID on drop. The including test declares `runner` and
//! `scratch` (tests/support) beside it.

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::redis_server::spawn_guarded;

/// A running three-node cluster.
pub struct RedisCluster {
    nodes: Vec<(u16, Child)>,
    dir: PathBuf,
}

/// A port `p` such that `p` and its cluster bus port `p + 10000` are free.
fn free_pair(taken: &[u16]) -> io::Result<u16> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) << 32 | u64::from(nanos);
    for i in 0..2000u64 {
        let p = 20_000 + ((seed.wrapping_mul(2_654_435_761) + i * 7_919) % 30_000) as u16;
        if taken.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port pair",
    ))
}

fn cli(port: u16, args: &[&str]) -> io::Result<String> {
    let out = super::runner::output(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RedisCluster {
    /// Starts three masters and creates the cluster; returns once every
    /// node reports `cluster_state:ok`.
    pub fn start() -> io::Result<RedisCluster> {
        // In the test process's scratch directory: a cluster kept in a
        // `static` is never dropped, and the next test process sweeps it.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = super::scratch::dir().join(format!("cluster-{nanos}"));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for n in 0..3 {
            let taken: Vec<u16> = cluster.nodes.iter().map(|(p, _)| *p).collect();
            let port = free_pair(&taken)?;
            let node_dir = cluster.dir.join(format!("n{n}"));
            std::fs::create_dir_all(&node_dir)?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(&node_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = spawn_guarded(cmd)?;
            cluster.nodes.push((port, child));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for &(port, _) in &cluster.nodes {
            while !cli(port, &["PING"])?.contains("PONG") {
                if Instant::now() > deadline {
                    return Err(io::Error::other("a cluster node never answered PING"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(cluster.nodes[0].0, &args)?;
        for &(port, _) in &cluster.nodes {
            while !cli(port, &["CLUSTER", "INFO"])?.contains("cluster_state:ok") {
                if Instant::now() > deadline {
                    return Err(io::Error::other(
                        "the cluster never reached cluster_state:ok",
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// Every node's URL, comma-separated (what `RedisOptions::cluster` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// `DBSIZE` of each node.
    pub fn key_counts(&self) -> Vec<u64> {
        self.ports()
            .into_iter()
            .map(|p| {
                cli(p, &["DBSIZE"])
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
