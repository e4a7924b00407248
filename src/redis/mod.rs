//! The Redis backend (feature `redis`): the same policies and decisions,
//! evaluated atomically inside Redis by one Lua script per request, so
//! that every host behind a load balancer enforces one limit together.
//!
//! This module is the client: connections (a pool, timeouts, reconnect
//! with backoff), the key layout (keyed hashes under a hash tag), the
//! script call (`EVALSHA`, reloaded on `NOSCRIPT`), the health state that
//! switches to the failure policy and back, and the local deny cache. The
//! script and its contract are `ratekeeper.lua` and `PROTOCOL.md` next to
//! this file. The Redis store (`src/store/redis.rs`) is its one user: it
//! turns each operation of the storage seam into script calls.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Client, Connection, ConnectionLike, Value};

use crate::algo::Algorithm;
use crate::algo::LimitParams;
use crate::hash::{siphash13, Seed};
use crate::options::EngineOptions;
use crate::policy::PolicySpec;
use crate::table::Verdict;
use crate::{Error, Penalty};

/// The script (see `PROTOCOL.md`): a Redis Functions library, or an
/// `EVALSHA` script where the server has no `FUNCTION`.
pub(crate) const SCRIPT: &str = include_str!("ratekeeper.lua");

/// How this engine calls the script on its server.
const VIA_UNKNOWN: u8 = 0;
/// `FCALL rk_<op>_<version>` of the library (Redis 7+).
const VIA_FUNCTIONS: u8 = 1;
/// `EVALSHA` of the script (a server without `FUNCTION`).
const VIA_SCRIPT: u8 = 2;

/// Seconds from the Unix epoch to the script's time origin
/// (2026-01-01T00:00:00Z): Redis-clock times are nanoseconds since then.
pub const REDIS_EPOCH_UNIX_S: u64 = 1_767_225_600;

/// What a Redis engine does while Redis cannot be reached (refused,
/// timed out, or answering errors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Decide with the engine's local tables — in a shared-memory file
    /// when [`RedisOptions::fallback_path`] is set, so that the limit still
    /// holds across the host's workers (the default).
    #[default]
    Local,
    /// Allow every request (figures as for a fresh key).
    Open,
    /// Deny every request, with retry-after until the next reconnect try.
    Closed,
}

/// Options of [`Engine::open_redis`](crate::Engine::open_redis).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The local tables (the fallback) and the clock of calls without an
    /// explicit time while Redis is down.
    pub engine: EngineOptions,
    /// Prefix of every Redis key the engine writes (default `"rk:"`).
    pub prefix: String,
    /// Time allowed to open a connection (default 200 ms).
    pub connect_timeout: Duration,
    /// Time allowed for one round trip once connected (default 100 ms).
    pub timeout: Duration,
    /// Idle connections kept for reuse (default 16). More are opened when
    /// more threads call at once; the extra ones are closed after use.
    pub pool_size: usize,
    /// What happens while Redis is unreachable.
    pub on_failure: OnFailure,
    /// With [`OnFailure::Local`]: a shared-memory file (as for
    /// [`Engine::open_shared`](crate::Engine::open_shared)) for the local
    /// tables, so that the fallback limit is one per host, not per process.
    pub fallback_path: Option<PathBuf>,
    /// Entries of the local deny cache (0 turns it off; default 4096): a
    /// key denied with retry-after `T` is answered here until `T` passes,
    /// without a round trip.
    pub deny_cache: usize,
    /// First wait before trying Redis again after a failure (default
    /// 50 ms); it doubles after each failed try up to `retry_max`.
    pub retry_min: Duration,
    /// Longest wait between tries (default 2 s).
    pub retry_max: Duration,
    /// Write one line to stderr at each switch to the failure policy and
    /// back (default true). Switches are also counted in [`RedisStats`].
    pub log_switches: bool,
    /// The secret of the keyed hash that turns keys into Redis key names.
    /// `None` (the default): a random secret that the first engine stores
    /// in Redis (`<prefix>secret`) and every other engine reads, so all
    /// hosts agree.
    pub hash_secret: Option<Vec<u8>>,
    /// For a `rediss://` URL: a PEM file of the certificate authority to
    /// trust instead of the system's store (a private CA). Without it the
    /// system store is used (`SSL_CERT_FILE` / `SSL_CERT_DIR` override it).
    pub tls_ca_file: Option<PathBuf>,
    /// The URL names Redis Cluster nodes (one or more, comma-separated):
    /// commands go to the node that holds each key's slot, and follow the
    /// cluster when slots move.
    pub cluster: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            engine: EngineOptions::default(),
            prefix: "rk:".into(),
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            pool_size: 16,
            on_failure: OnFailure::Local,
            fallback_path: None,
            deny_cache: 4096,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            log_switches: true,
            hash_secret: None,
            tls_ca_file: None,
            cluster: false,
        }
    }
}

/// Counters of a Redis engine (this process's view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Redis is reachable (as of the last round trip or try).
    pub up: bool,
    /// Script calls that got an answer.
    pub round_trips: u64,
    /// Calls that failed (connect, timeout, protocol, server error).
    pub errors: u64,
    /// Switches from Redis to the failure policy.
    pub failovers: u64,
    /// Switches back to Redis.
    pub recoveries: u64,
    /// Decisions made by the failure policy instead of Redis.
    pub fallback_decisions: u64,
    /// Denials answered by the local deny cache.
    pub deny_cache_hits: u64,
    /// Times the script was loaded (once per server, again after a restart
    /// or `SCRIPT FLUSH`).
    pub script_loads: u64,
}

/// A Redis-side failure: the reason, for the log.
#[derive(Debug)]
pub(crate) struct Down(pub String);

/// One item of a script call.
#[derive(Clone, Copy)]
pub(crate) struct Item<'a> {
    pub policy: &'a RemotePolicy,
    pub key: Key<'a>,
    pub cost: u32,
}

impl<'a> Item<'a> {
    /// An item of the caller's `key`.
    pub fn raw(policy: &'a RemotePolicy, key: &'a [u8], cost: u32) -> Item<'a> {
        Item {
            policy,
            key: Key::Raw(key),
            cost,
        }
    }
}

/// An item's key: the caller's bytes, or the hash they were turned into
/// (what a permit keeps).
#[derive(Clone, Copy)]
pub(crate) enum Key<'a> {
    Raw(&'a [u8]),
    Hashed(u128),
}

/// A policy's fixed arguments (everything of an item record after the
/// cost) and the name its keys are hashed under.
#[derive(Debug)]
pub(crate) struct RemotePolicy {
    name: String,
    args: Vec<String>,
    pub penalty: bool,
    /// `<16 hex digits>:c` or `:s`, the end of every state key name of the
    /// policy (after its hash tag): the 64-bit hash of its name says whose
    /// key it is, so that [`Remote::delete_policy_state`] finds them all;
    /// `c` when the state is one string (no sliding_log or concurrency
    /// limit; `PROTOCOL.md`, "Keys"), `s` for a hash.
    state_suffix: String,
}

/// The fixed key of the hash that names a policy in its state keys (not
/// a secret: policy names are stored in Redis in the clear anyway).
const POLICY_NAME_SEED: Seed = Seed {
    k0: 0x7270_6f6c_6963_7921,
    k1: 0x6e61_6d65_2d74_6167,
};

impl RemotePolicy {
    pub fn new(name: &str, spec: &PolicySpec, penalty: Option<Penalty>) -> Result<Self, Error> {
        for l in &spec.limits {
            // Same validation as the local table (the script trusts it).
            LimitParams::new(l, 0)?;
            if l.period_ns >= 1 << 53 {
                return Err(Error::Unsupported(format!(
                    "the Redis backend keeps periods below 2^53 ns (104 days); {} is longer",
                    l
                )));
            }
        }
        let compact = spec
            .limits
            .iter()
            .all(|l| !matches!(l.algorithm, Algorithm::SlidingLog | Algorithm::Concurrency));
        Ok(RemotePolicy {
            name: name.into(),
            args: script_args(spec, penalty),
            penalty: penalty.is_some(),
            state_suffix: format!(
                "{:016x}:{}",
                siphash13(POLICY_NAME_SEED, name.as_bytes()),
                if compact { 'c' } else { 's' }
            ),
        })
    }
}

/// `text` with the glob characters of `SCAN MATCH` (`*?[]\`) escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Keys of one `SCAN` page (and one `UNLINK`).
const SCAN_COUNT: usize = 1000;

/// Scans the keys of one server that match `pattern`, a page at a time
/// (`SCAN`, never `KEYS`), and unlinks each page with `unlink`; returns
/// how many keys were removed.
fn scan_and_unlink<C: ?Sized>(
    con: &mut C,
    pattern: &str,
    scan: impl Fn(&mut C, &redis::Cmd) -> redis::RedisResult<(String, Vec<String>)>,
    unlink: impl Fn(&mut C, &[String]) -> redis::RedisResult<u64>,
) -> redis::RedisResult<u64> {
    let mut cursor = "0".to_string();
    let mut removed = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(&cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, keys) = scan(con, &cmd)?;
        if !keys.is_empty() {
            removed += unlink(con, &keys)?;
        }
        if next == "0" {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// The `host` and `port` of every master of a cluster, from `CLUSTER
/// NODES` (`<id> <ip:port@cport[,hostname]> <flags> ...`; masters that are
/// not marked failed).
fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            let master = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "noaddr");
            if !master {
                return None;
            }
            let addr = addr.split([',', '@']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// A policy's item record after the cost (`PROTOCOL.md`, "Arguments"):
/// one argument, the text of the number of limits, each limit and the
/// penalty box, separated by spaces. The script parses each text once and
/// keeps it, so a call only looks it up.
pub fn script_args(spec: &PolicySpec, penalty: Option<Penalty>) -> Vec<String> {
    use std::fmt::Write;
    let mut text = spec.limits.len().to_string();
    for l in &spec.limits {
        let code = match l.algorithm {
            Algorithm::Gcra => "g",
            Algorithm::FixedWindow => "f",
            Algorithm::SlidingWindow => "w",
            Algorithm::SlidingLog => "l",
            Algorithm::Concurrency => "c",
        };
        // Writing to a String cannot fail.
        let _ = write!(text, " {code} {} {} {}", l.count, l.period_ns, l.burst);
    }
    let _ = match penalty {
        Some(p) => write!(
            text,
            " {} {} {} {}",
            p.strikes, p.window_ns, p.ban_ns, p.max_ban_ns
        ),
        None => write!(text, " 0 0 0 0"),
    };
    vec![text]
}

/// The script's answer to `check`, `peek` and `acquire`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    /// The binding item's verdict (`new_ban`: this call's strike started a ban).
    pub verdict: Verdict,
    pub item: usize,
    pub lease: Option<u32>,
    /// The time the script decided at: the call's explicit time, else
    /// Redis's clock (ns since [`REDIS_EPOCH_UNIX_S`]).
    pub at_ns: u64,
}

/// Health: up, or down until `retry_at` (local monotonic ns) with one
/// caller at a time allowed to try again.
///
/// Orderings: each word is a value of its own and publishes no other
/// memory, so nothing needs SeqCst. `failed` writes `backoff_ns` and
/// `retry_at` before it clears `probing` (Release), and the next prober
/// takes `probing` with Acquire, so it sees the backoff that ended the last
/// try and doubles that one; `up` is read with Acquire for the same reason
/// after a switch. The counters are statistics (Relaxed).
struct Health {
    up: AtomicBool,
    retry_at: AtomicU64,
    backoff_ns: AtomicU64,
    probing: AtomicBool,
}

#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    errors: AtomicU64,
    failovers: AtomicU64,
    recoveries: AtomicU64,
    fallback_decisions: AtomicU64,
    deny_cache_hits: AtomicU64,
    script_loads: AtomicU64,
}

/// A standalone server's client, a cluster's, or the sentinels that name
/// the master of a service.
enum Link {
    One(Client),
    Cluster(ClusterClient),
    Sentinel(Sentinels),
}

/// `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`:
/// every new connection asks the sentinels, in order, for the service's
/// master (`SENTINEL get-master-addr-by-name`) and checks that it says it
/// is one (`ROLE`). A failed call empties the pool, so that after a failover
/// the next try connects to the master the sentinels name then.
struct Sentinels {
    /// `host:port` of each sentinel (port 26379 if left out).
    nodes: Vec<String>,
    service: String,
    /// `user:password@` of the master, as in the URL (the sentinels are
    /// asked without it), or empty.
    auth: String,
    /// `/db`, or empty.
    db: String,
}

impl Sentinels {
    /// Parses a `redis+sentinel://` URL.
    fn parse(url: &str) -> Option<Sentinels> {
        let rest = url.strip_prefix("redis+sentinel://")?;
        let (authority, path) = rest.split_once('/')?;
        let (auth, hosts) = match authority.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), authority),
        };
        let mut nodes = Vec::new();
        for h in hosts.split(',').map(str::trim) {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) => (host, port.parse::<u16>().ok()?),
                None => (h, 26379),
            };
            if host.is_empty() {
                return None;
            }
            nodes.push(format!("{host}:{port}"));
        }
        let (service, db) = match path.split_once('/') {
            Some((s, d)) if d.parse::<u32>().is_ok() => (s, format!("/{d}")),
            Some((_, "")) => (path.trim_end_matches('/'), String::new()),
            Some(_) => return None,
            None => (path, String::new()),
        };
        if service.is_empty() || nodes.is_empty() {
            return None;
        }
        Some(Sentinels {
            nodes,
            service: service.into(),
            auth,
            db,
        })
    }

    /// A connection to the master the first sentinel that answers names.
    fn master(
        &self,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> redis::RedisResult<Connection> {
        let mut last = None;
        for node in &self.nodes {
            let asked = Client::open(format!("redis://{node}/")).and_then(|c| {
                let mut con = c.get_connection_with_timeout(connect_timeout)?;
                con.set_read_timeout(Some(timeout))?;
                con.set_write_timeout(Some(timeout))?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query::<Option<(String, u16)>>(&mut con)
            });
            let (host, port) = match asked {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the sentinel knows no such service",
                        format!("{} at {node}", self.service),
                    )));
                    continue;
                }
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let url = format!("redis://{}{host}:{port}{}", self.auth, self.db);
            let mut con = Client::open(url)?.get_connection_with_timeout(connect_timeout)?;
            con.set_read_timeout(Some(timeout))?;
            con.set_write_timeout(Some(timeout))?;
            let role: Vec<Value> = redis::cmd("ROLE").query(&mut con)?;
            if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
                // Demoted and not yet noticed by this sentinel: ask the next.
                last = Some(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the server the sentinel named is not a master",
                    format!("{host}:{port}"),
                )));
                continue;
            }
            return Ok(con);
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "no sentinel answered"))
        }))
    }
}

/// A connection of either kind.
enum Conn {
    One(Connection),
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    fn link(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::One(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }
}

/// The connection to Redis of one engine.
pub(crate) struct Remote {
    client: Link,
    /// The URL without its password, for messages.
    shown: String,
    pool: Mutex<Vec<Conn>>,
    /// The process the pooled connections belong to.
    pid: std::sync::atomic::AtomicU32,
    /// The script's SHA-1 (`EVALSHA`).
    sha: String,
    /// `_<version>`: the end of the library's name and of its functions'.
    suffix: String,
    /// `VIA_*`: functions until the server says it has none.
    via: std::sync::atomic::AtomicU8,
    pub options: RedisOptions,
    secret: OnceLock<[Seed; 2]>,
    /// Script arguments of each policy, by policy index.
    policies: Box<[OnceLock<RemotePolicy>]>,
    health: Health,
    counters: Counters,
    pub cache: DenyCache,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.shown).finish()
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split_once(':').map_or("", |(u, _)| u);
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.into(),
        },
        None => url.into(),
    }
}

impl Remote {
    /// Parses `url` and connects once: errors that retrying cannot fix
    /// (a bad URL, a refused password, a server that is not Redis) fail
    /// here; an unreachable server starts the engine on its failure policy.
    pub fn open(url: &str, options: RedisOptions) -> Result<Remote, Error> {
        if options.prefix.contains(['{', '}']) {
            return Err(Error::InvalidArgument(
                "the Redis key prefix may not contain '{' or '}' (they mark hash tags)".into(),
            ));
        }
        if options.connect_timeout.is_zero() || options.timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "Redis timeouts must be positive".into(),
            ));
        }
        if options.retry_min.is_zero() || options.retry_max < options.retry_min {
            return Err(Error::InvalidArgument(
                "retry_min must be positive and no longer than retry_max".into(),
            ));
        }
        if matches!(&options.hash_secret, Some(s) if s.len() < 16) {
            return Err(Error::InvalidArgument(
                "hash_secret must be at least 16 bytes".into(),
            ));
        }
        let shown = redact(url);
        let client = Self::client(url, &shown, &options)?;
        let secret = OnceLock::new();
        if let Some(s) = &options.hash_secret {
            let _ = secret.set(seeds_from(s));
        }
        let remote = Remote {
            client,
            shown,
            pool: Mutex::new(Vec::new()),
            pid: std::sync::atomic::AtomicU32::new(std::process::id()),
            sha: sha1_hex(SCRIPT.as_bytes()),
            suffix: format!("_{}", &sha1_hex(SCRIPT.as_bytes())[..12]),
            via: std::sync::atomic::AtomicU8::new(VIA_UNKNOWN),
            cache: DenyCache::new(options.deny_cache),
            options,
            secret,
            policies: (0..crate::MAX_POLICIES).map(|_| OnceLock::new()).collect(),
            health: Health {
                up: AtomicBool::new(true),
                retry_at: AtomicU64::new(0),
                backoff_ns: AtomicU64::new(0),
                probing: AtomicBool::new(false),
            },
            counters: Counters::default(),
        };
        let first = remote.connect().and_then(|mut con| {
            // A server that is not Redis shows itself here, not at the
            // first request.
            let _: String = redis::cmd("PING").query(con.link())?;
            remote.seeds(con.link())?;
            Ok(con)
        });
        match first {
            Ok(con) => remote.give_back(con),
            Err(e) if fatal(&e) => return Err(Error::Backend(remote.describe(&e))),
            Err(e) => remote.failed(&Down(remote.describe(&e))),
        }
        Ok(remote)
    }

    /// The client for `url` (one URL, or with `cluster` a comma-separated
    /// list of node URLs).
    fn client(url: &str, shown: &str, options: &RedisOptions) -> Result<Link, Error> {
        let bad_url =
            |e: redis::RedisError| Error::InvalidArgument(format!("bad Redis URL {shown:?}: {e}"));
        let certs = match &options.tls_ca_file {
            None => None,
            Some(path) => {
                if !url.split(',').all(|u| u.trim().starts_with("rediss://")) {
                    return Err(Error::InvalidArgument(format!(
                        "tls_ca_file is for rediss:// URLs, not {shown:?}"
                    )));
                }
                let pem = std::fs::read(path).map_err(|e| {
                    Error::InvalidArgument(format!("tls_ca_file {}: {e}", path.display()))
                })?;
                Some(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                })
            }
        };
        if url.starts_with("redis+sentinel://") {
            if options.cluster || certs.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{shown:?}: a sentinel URL is for one service, without cluster or tls_ca_file"
                )));
            }
            return Sentinels::parse(url).map(Link::Sentinel).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "bad Redis URL {shown:?}: expected \
                     redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]"
                ))
            });
        }
        if !options.cluster {
            if url.contains(',') {
                return Err(Error::InvalidArgument(format!(
                    "{shown:?} lists several servers: set `cluster` for a Redis Cluster"
                )));
            }
            return Ok(Link::One(match certs {
                None => Client::open(url).map_err(bad_url)?,
                Some(certs) => Client::build_with_tls(url, certs).map_err(bad_url)?,
            }));
        }
        let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
        let mut builder = ClusterClient::builder(nodes)
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.timeout)
            // MOVED/ASK while slots migrate are followed at once; an
            // unreachable node is the failure policy's business.
            .retries(2)
            .min_retry_wait(5)
            .max_retry_wait(50);
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        Ok(Link::Cluster(builder.build().map_err(bad_url)?))
    }

    /// True for a Redis Cluster: a call's keys must share a slot, so
    /// batches of several keys are one call per key.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Link::Cluster(_))
    }

    /// A message for a Redis error, naming the server.
    fn describe(&self, e: &redis::RedisError) -> String {
        let what = if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        {
            "authentication failed"
        } else if e.kind() == redis::ErrorKind::Parse {
            "the server did not answer as Redis does"
        } else if e.to_string().contains("invalid peer certificate") {
            "its TLS certificate is not trusted (see tls_ca_file)"
        } else if e.is_timeout() {
            "timed out"
        } else if e.is_connection_refusal() {
            "connection refused"
        } else {
            "error"
        };
        format!("Redis at {}: {what}: {e}", self.shown)
    }

    fn connect(&self) -> redis::RedisResult<Conn> {
        let t = Some(self.options.timeout);
        Ok(match &self.client {
            Link::One(client) => {
                let con = client.get_connection_with_timeout(self.options.connect_timeout)?;
                con.set_read_timeout(t)?;
                con.set_write_timeout(t)?;
                Conn::One(con)
            }
            Link::Cluster(client) => {
                let con = client.get_connection()?;
                con.set_read_timeout(t)?;
                con.set_write_timeout(t)?;
                Conn::Cluster(Box::new(con))
            }
            Link::Sentinel(sentinels) => {
                Conn::One(sentinels.master(self.options.connect_timeout, self.options.timeout)?)
            }
        })
    }

    fn give_back(&self, con: Conn) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.options.pool_size {
            pool.push(con);
        }
    }

    fn take(&self) -> redis::RedisResult<Conn> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        // Relaxed: read and written under the pool lock.
        if self.pid.swap(pid, Ordering::Relaxed) != pid {
            // A forked child: the pooled sockets are its parent's. Leave
            // them alone (closing or, for TLS, saying goodbye on them would
            // disturb the parent) and connect afresh.
            std::mem::forget(std::mem::take(&mut *pool));
        }
        let pooled = pool.pop();
        drop(pool);
        match pooled {
            Some(con) => Ok(con),
            None => self.connect(),
        }
    }

    /// The key-hash seeds, reading (or creating) the shared secret in
    /// Redis the first time.
    fn seeds(&self, con: &mut dyn ConnectionLike) -> redis::RedisResult<[Seed; 2]> {
        if let Some(s) = self.secret.get() {
            return Ok(*s);
        }
        let key = format!("{}secret", self.options.prefix);
        let mut fresh = [0u8; 32];
        crate::clock::fill_random(&mut fresh);
        let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let _: Value = redis::cmd("SET")
            .arg(&key)
            .arg(&fresh)
            .arg("NX")
            .query(con)?;
        let stored: String = redis::cmd("GET").arg(&key).query(con)?;
        let seeds = seeds_from(stored.as_bytes());
        let _ = self.secret.set(seeds);
        Ok(*self.secret.get().unwrap_or(&seeds))
    }

    /// The script arguments of policy `index` (set by `add_policy`).
    pub fn policy(&self, index: u32) -> Option<&RemotePolicy> {
        self.policies.get(index as usize)?.get()
    }

    /// Records the script arguments of policy `index`.
    pub fn set_policy(&self, index: u32, policy: RemotePolicy) {
        if let Some(slot) = self.policies.get(index as usize) {
            let _ = slot.set(policy);
        }
    }

    /// Whether a call may go to Redis now: always while up; while down,
    /// once the backoff has passed and no other caller is trying.
    fn may_try(&self) -> bool {
        // Orderings: see `Health`.
        if self.health.up.load(Ordering::Acquire) {
            return true;
        }
        if crate::clock::now_ns() < self.health.retry_at.load(Ordering::Acquire) {
            return false;
        }
        self.health
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn failed(&self, why: &Down) {
        // Orderings: see `Health`.
        // Relaxed: statistics only.
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let was_up = self.health.up.swap(false, Ordering::AcqRel);
        let backoff = if was_up {
            self.counters.failovers.fetch_add(1, Ordering::Relaxed);
            if self.options.log_switches {
                eprintln!(
                    "ratekeeper: {}; using the failure policy ({:?}) until it answers again",
                    why.0, self.options.on_failure
                );
            }
            self.options.retry_min.as_nanos() as u64
        } else {
            let last = self.health.backoff_ns.load(Ordering::Acquire);
            (last.saturating_mul(2)).clamp(
                self.options.retry_min.as_nanos() as u64,
                self.options.retry_max.as_nanos() as u64,
            )
        };
        self.health.backoff_ns.store(backoff, Ordering::Release);
        self.health.retry_at.store(
            crate::clock::now_ns().saturating_add(backoff),
            Ordering::Release,
        );
        self.health.probing.store(false, Ordering::Release);
    }

    fn recovered(&self) {
        // Orderings: see `Health`.
        if !self.health.up.swap(true, Ordering::AcqRel) {
            self.counters.recoveries.fetch_add(1, Ordering::Relaxed);
            if self.options.log_switches {
                eprintln!(
                    "ratekeeper: Redis at {} answers again; deciding there",
                    self.shown
                );
            }
        }
        self.health.probing.store(false, Ordering::Release);
    }

    /// Counts a decision made by the failure policy.
    pub fn fell_back(&self) {
        // Orderings: see `Health`.
        self.counters
            .fallback_decisions
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a denial answered by the deny cache.
    pub fn cache_hit(&self) {
        // Orderings: see `Health`.
        self.counters
            .deny_cache_hits
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How long until the next try at Redis (for fail-closed retry-after).
    pub fn until_retry_ns(&self) -> u64 {
        // Orderings: see `Health`.
        self.health
            .retry_at
            .load(Ordering::Acquire)
            .saturating_sub(crate::clock::now_ns())
    }

    pub fn stats(&self) -> RedisStats {
        // Orderings: see `Health`.
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            up: self.health.up.load(Ordering::Acquire),
            round_trips: get(&c.round_trips),
            errors: get(&c.errors),
            failovers: get(&c.failovers),
            recoveries: get(&c.recoveries),
            fallback_decisions: get(&c.fallback_decisions),
            deny_cache_hits: get(&c.deny_cache_hits),
            script_loads: get(&c.script_loads),
        }
    }

    /// Runs `f` on a pooled connection, if Redis may be tried now: the
    /// answer, or `Err` when Redis is down or the call failed (the caller
    /// applies the failure policy). Every failure is counted and may switch
    /// health; a success after failures switches back.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> redis::RedisResult<T>) -> Result<T, Down> {
        if !self.may_try() {
            return Err(Down("Redis is down".into()));
        }
        let result = self.take().and_then(|mut con| {
            let v = f(&mut con)?;
            self.give_back(con);
            Ok(v)
        });
        match result {
            Ok(v) => {
                // Relaxed: a statistic.
                self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
                self.recovered();
                Ok(v)
            }
            Err(e) => {
                // The pooled connections may be to the same dead or demoted
                // server: the next calls connect afresh (to the master the
                // sentinels name then).
                // (`take` has already left a forked parent's alone.)
                self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let down = Down(self.describe(&e));
                self.failed(&down);
                Err(down)
            }
        }
    }

    /// One round trip: the script with `op` over `items`, then `extra`.
    pub fn call(
        &self,
        op: &str,
        now: Option<u64>,
        items: &[Item<'_>],
        extra: &[String],
    ) -> Result<Value, Down> {
        self.with_conn(|con| {
            let seeds = self.seeds(con.link())?;
            let cmd = self.script(&seeds, op, now, items, extra);
            match cmd.query::<Value>(con.link()) {
                Err(e) if no_script(&e) => {
                    self.load(con.link())?;
                    self.script(&seeds, op, now, items, extra).query(con.link())
                }
                r => r,
            }
        })
    }

    /// One round trip on a cluster: the script with `op` once per item,
    /// item `i` at time `at(i)` (`None`: its node's clock), in one pipeline
    /// (each call goes to its key's node). The caller passes
    /// `retry` only for operations that change nothing (`peek`): a
    /// pipeline that hit a node without the script is then run again; a
    /// charging one is not, and fails (some items may have been charged:
    /// never admitted, so the error is on the strict side).
    pub fn call_each(
        &self,
        op: &str,
        items: &[Item<'_>],
        at: &dyn Fn(usize) -> Option<u64>,
        retry: bool,
    ) -> Result<Vec<Value>, Down> {
        self.with_conn(|con| {
            let seeds = self.seeds(con.link())?;
            let Conn::Cluster(cluster) = con else {
                return items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| {
                        let one = std::slice::from_ref(it);
                        self.script(&seeds, op, at(i), one, &[]).query(con.link())
                    })
                    .collect();
            };
            let pipe = || {
                let mut pipe = redis::cluster::cluster_pipe();
                for (i, it) in items.iter().enumerate() {
                    pipe.add_command(self.script(&seeds, op, at(i), std::slice::from_ref(it), &[]));
                }
                pipe
            };
            match pipe().query::<Vec<Value>>(cluster) {
                Err(e) if no_script(&e) => {
                    self.load(cluster)?;
                    if retry {
                        pipe().query(cluster)
                    } else {
                        Err(e)
                    }
                }
                r => r,
            }
        })
    }

    /// Loads the library (on every node of a cluster), or the script on a
    /// server without `FUNCTION` (from then on, calls are `EVALSHA`).
    fn load(&self, con: &mut dyn ConnectionLike) -> redis::RedisResult<()> {
        // Relaxed: `via` publishes nothing else, and either value works on
        // any server that has it (a stale read costs one more load).
        if self.via.load(Ordering::Relaxed) != VIA_SCRIPT {
            let library = format!(
                "#!lua name=ratekeeper{s}\nlocal SUFFIX = '{s}'\n{SCRIPT}",
                s = self.suffix
            );
            // REPLACE: another host may have loaded the same version.
            match redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(library)
                .query::<Value>(con)
            {
                Ok(_) => {
                    self.via.store(VIA_FUNCTIONS, Ordering::Relaxed);
                    self.counters.script_loads.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if unknown_command(&e) => self.via.store(VIA_SCRIPT, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        // Orderings: see `Health`.
        let _: Value = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query(con)?;
        self.counters.script_loads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The `FCALL` (or `EVALSHA`) of one script call (`PROTOCOL.md`,
    /// "Arguments").
    fn script(
        &self,
        seeds: &[Seed; 2],
        op: &str,
        now: Option<u64>,
        items: &[Item<'_>],
        extra: &[String],
    ) -> redis::Cmd {
        // Relaxed: see `load`.
        let script = self.via.load(Ordering::Relaxed) == VIA_SCRIPT;
        let mut cmd = if script {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.sha);
            cmd
        } else {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg(format!("rk_{op}{}", self.suffix));
            cmd
        };
        cmd.arg(items.len() * 2);
        for it in items {
            let tag = self.tag(seeds, it);
            let prefix = &self.options.prefix;
            cmd.arg(format!("{prefix}{{{tag}}}:{}", it.policy.state_suffix));
            cmd.arg(format!("{prefix}{{{tag}}}:o"));
        }
        if script {
            cmd.arg(op);
        }
        match now {
            Some(t) => cmd.arg(t.min(crate::MAX_TIME_NS)),
            None => cmd.arg(""),
        };
        cmd.arg(items.len());
        for it in items {
            cmd.arg(it.cost).arg(&it.policy.args);
        }
        cmd.arg(extra);
        cmd
    }

    /// The hash tag of an item: 128 bits of keyed hash of policy name and
    /// key, in hex (no raw key ever reaches Redis).
    fn tag(&self, seeds: &[Seed; 2], it: &Item<'_>) -> String {
        format!("{:032x}", key_hash(seeds, &it.policy.name, it.key))
    }

    /// The 128-bit hash of `key` under `policy`, once the secret is known
    /// (after the first successful round trip).
    pub fn hash_of(&self, policy: &RemotePolicy, key: &[u8]) -> Option<u128> {
        Some(key_hash(self.secret.get()?, &policy.name, Key::Raw(key)))
    }

    /// Registers a policy's definition in Redis (`<prefix>policy:<name>`)
    /// or checks it against the one there: two hosts must not share a
    /// policy name with different limits. Skipped while Redis is down.
    pub fn register(&self, name: &str, definition: &str) -> Result<(), Error> {
        let key = format!("{}policy:{name}", self.options.prefix);
        let existing = self.with_conn(|con| {
            let _: Value = redis::cmd("SET")
                .arg(&key)
                .arg(definition)
                .arg("NX")
                .query(con.link())?;
            redis::cmd("GET")
                .arg(&key)
                .query::<Option<String>>(con.link())
        });
        match existing {
            Ok(Some(e)) if e != definition => Err(Error::PolicyMismatch {
                name: name.into(),
                existing: e,
                requested: definition.into(),
            }),
            _ => Ok(()),
        }
    }
}

impl Remote {
    /// Deletes the state of every key of `policy` in Redis — every server
    /// of a cluster, every master — and returns how many keys were removed:
    /// `SCAN` for `<prefix>{*}:<policy hash>:c` (or `:s`) a page at a time,
    /// `UNLINK` of each page (overrides, under `:o`, stay). O(keys in
    /// Redis); keys written while it runs may stay. For tests and
    /// administration, not for the request path.
    pub fn delete_policy_state(&self, policy: &RemotePolicy) -> Result<u64, Down> {
        let pattern = format!(
            "{}{{*}}:{}",
            glob_escape(&self.options.prefix),
            policy.state_suffix
        );
        self.with_conn(|con| match con {
            Conn::One(c) => scan_and_unlink(
                c,
                &pattern,
                |c, cmd| cmd.query(c),
                |c, keys| redis::cmd("UNLINK").arg(keys).query(c),
            ),
            Conn::Cluster(cluster) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut **cluster)?;
                let mut removed = 0;
                let masters = cluster_masters(&nodes);
                if masters.is_empty() {
                    // Never a silent reset of nothing.
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "CLUSTER NODES names no master to reset",
                    )));
                }
                for (host, port) in masters {
                    let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port,
                    });
                    scan_and_unlink(
                        &mut **cluster,
                        &pattern,
                        |cluster, cmd| {
                            let v = cluster.route_command(cmd, at.clone())?;
                            Ok(redis::from_redis_value(v)?)
                        },
                        |cluster, keys| {
                            // The keys of a page sit in many slots: one
                            // UNLINK each, pipelined, each to its slot's node.
                            let mut pipe = redis::cluster::cluster_pipe();
                            for k in keys {
                                pipe.cmd("UNLINK").arg(k);
                            }
                            let counts: Vec<u64> = pipe.query(cluster)?;
                            Ok(counts.iter().sum())
                        },
                    )
                    .map(|n| removed += n)?;
                }
                Ok(removed)
            }
        })
    }
}

/// The server lacks the library or the script (first call, a restart,
/// `FUNCTION FLUSH`, `SCRIPT FLUSH`), or has no `FCALL` at all.
fn no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        || e.to_string().contains("Function not found")
        || unknown_command(e)
}

/// `ERR unknown command`: a server older than Redis 7 (no `FUNCTION`,
/// `FCALL`).
fn unknown_command(e: &redis::RedisError) -> bool {
    e.to_string().contains("unknown command")
}

/// Errors at open that retrying cannot fix.
fn fatal(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.kind() == redis::ErrorKind::Parse
        || e.kind() == redis::ErrorKind::InvalidClientConfig
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "ERR"))
        // rustls reports an untrusted server as an I/O error; it is a
        // configuration error all the same (the CA to trust).
        || e.to_string().contains("invalid peer certificate")
}

fn key_hash(seeds: &[Seed; 2], name: &str, key: Key<'_>) -> u128 {
    let key = match key {
        Key::Raw(k) => k,
        Key::Hashed(h) => return h,
    };
    let mut data = Vec::with_capacity(name.len() + 1 + key.len());
    data.extend_from_slice(name.as_bytes());
    data.push(0);
    data.extend_from_slice(key);
    u128::from(siphash13(seeds[0], &data)) << 64 | u128::from(siphash13(seeds[1], &data))
}

fn seeds_from(secret: &[u8]) -> [Seed; 2] {
    let base = Seed {
        k0: 0x7261_7465_6b65_6570,
        k1: 0x6572_2d72_6564_6973,
    };
    let word = |i: u64| {
        siphash13(
            Seed {
                k0: base.k0 ^ i,
                k1: base.k1,
            },
            secret,
        )
    };
    [
        Seed {
            k0: word(1),
            k1: word(2),
        },
        Seed {
            k0: word(3),
            k1: word(4),
        },
    ]
}

/// SHA-1 of the script, as `EVALSHA` names it.
fn sha1_hex(data: &[u8]) -> String {
    redis::Script::new(std::str::from_utf8(data).unwrap_or_default())
        .get_hash()
        .to_string()
}

/// Reads the script's integer array reply.
pub(crate) fn ints(v: &Value) -> Result<Vec<i64>, Down> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(Down(format!("unexpected script reply item {other:?}"))),
            })
            .collect(),
        Value::Int(i) => Ok(vec![*i]),
        other => Err(Down(format!("unexpected script reply {other:?}"))),
    }
}

/// Reads a `check`/`peek`/`acquire` reply (`PROTOCOL.md`, "Replies").
pub(crate) fn reply(v: &Value) -> Result<Reply, Down> {
    let r = ints(v)?;
    // The time (field 10) becomes the decision's `at_ns` and the time its
    // refund is placed at: never negative, never past the script's clamp.
    if r.len() != 11
        || r.iter().take(10).any(|&x| x < -1)
        || !(0..=crate::MAX_TIME_NS as i64).contains(&r[9])
    {
        return Err(Down(format!("malformed script reply {r:?}")));
    }
    let u = |i: usize| r[i] as u64;
    Ok(Reply {
        verdict: Verdict {
            allowed: r[0] == 1,
            limit: u(2),
            remaining: u(3),
            retry_after_ns: if r[4] == -1 { u64::MAX } else { u(4) },
            reset_after_ns: u(5),
            limit_index: r[6] as u32,
            banned: r[7] == 1,
            new_ban: r[8] == 1,
        },
        item: r[1] as usize,
        lease: u32::try_from(r[10]).ok(),
        at_ns: u(9),
    })
}

/// Denials answered locally, in the time domain of the call that stored
/// them (explicit `now`, or the engine clock): direct-mapped entries of a
/// key — or of a batch of up to [`BATCH_ITEMS`] keys — → the denial and the
/// time it holds until.
///
/// Only requests where every item costs 1 are kept and answered, and none
/// with a penalty box (every denial there is a strike Redis must count).
/// Then every figure of a cached answer is what Redis would say with no
/// other traffic on the keys: a denied request charges nothing, so until
/// the binding retry-after passes nothing changes but time — `remaining`
/// stays 0, retry-after and reset-after count down, and in a batch the item
/// with the longest retry-after stays the binding one.
///
/// Anything this engine does that changes a key (an allowed charge, a
/// refund, a reset, an override) drops the key's entry and bumps the key's
/// version; a batch entry holds only while the versions of all its keys
/// are the ones it saw.
pub(crate) struct DenyCache {
    /// Each shard's lock on a cache line of its own: threads checking
    /// different keys do not contend on one line.
    shards: Box<[CachePadded<Shard>]>,
    per_shard: usize,
    /// Versions of keys, by `tag % len` (a collision only drops a batch
    /// entry early).
    versions: Box<[AtomicU64]>,
}

/// One shard of the deny cache: direct-mapped entries under one lock.
type Shard = Mutex<Vec<Option<Cached>>>;

/// Most keys of a batch the deny cache keeps.
pub(crate) const BATCH_ITEMS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Cached {
    tag: u64,
    at: u64,
    until: u64,
    verdict: Verdict,
    /// The binding item (0 for a single key).
    index: usize,
    /// For a batch: each key's tag and version when stored.
    keys: [(u64, u64); BATCH_ITEMS],
    n: usize,
}

const CACHE_SHARDS: usize = 16;

impl DenyCache {
    fn new(entries: usize) -> DenyCache {
        let per_shard = entries.div_ceil(CACHE_SHARDS);
        DenyCache {
            shards: (0..if entries == 0 { 0 } else { CACHE_SHARDS })
                .map(|_| CachePadded::new(Mutex::new(vec![None; per_shard])))
                .collect(),
            per_shard,
            versions: (0..entries.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn place(&self, tag: u64) -> Option<(&Shard, usize)> {
        if self.shards.is_empty() {
            return None;
        }
        let shard: &Shard = &self.shards[(tag % CACHE_SHARDS as u64) as usize];
        Some((
            shard,
            ((tag / CACHE_SHARDS as u64) % self.per_shard as u64) as usize,
        ))
    }

    fn version(&self, tag: u64) -> &AtomicU64 {
        &self.versions[(tag % self.versions.len() as u64) as usize]
    }

    /// The tag of a batch: its keys' tags, in order.
    fn batch_tag(tags: &[u64]) -> u64 {
        tags.iter().fold(0xcbf2_9ce4_8422_2325, |h, &t| {
            (h ^ t).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29)
        })
    }

    /// The cached denial of a request of `costs` on the keys `tags` at
    /// `now`, with its binding item, if there is one that still holds.
    pub fn get(
        &self,
        tags: &[u64],
        mut costs: impl Iterator<Item = u32>,
        now: u64,
    ) -> Option<(Verdict, usize)> {
        if self.shards.is_empty() || tags.len() > BATCH_ITEMS || costs.any(|c| c != 1) {
            return None;
        }
        let tag = if tags.len() == 1 {
            tags[0]
        } else {
            Self::batch_tag(tags)
        };
        let (shard, i) = self.place(tag)?;
        let e = shard.lock().unwrap_or_else(|e| e.into_inner())[i]?;
        let n = if tags.len() == 1 { 0 } else { tags.len() };
        let same_keys = e.n == n
            && e.keys[..n]
                .iter()
                .zip(tags)
                // Acquire: pairs with the Release bump in `changed`.
                .all(|(&(t, v), &k)| t == k && self.version(t).load(Ordering::Acquire) == v);
        if e.tag != tag || !same_keys || now < e.at || now >= e.until {
            return None;
        }
        let gone = now - e.at;
        Some((
            Verdict {
                retry_after_ns: e.until - now,
                reset_after_ns: e.verdict.reset_after_ns.saturating_sub(gone),
                ..e.verdict
            },
            e.index,
        ))
    }

    /// Remembers a denial of a request of `costs` on the keys `tags` made
    /// at `now`, bound by item `index` (the caller leaves out requests on
    /// policies with a penalty box).
    pub fn put(
        &self,
        tags: &[u64],
        mut costs: impl Iterator<Item = u32>,
        now: u64,
        d: &Verdict,
        index: usize,
    ) {
        let retry = d.retry_after_ns;
        if d.allowed || retry == 0 || retry == u64::MAX || tags.len() > BATCH_ITEMS {
            return;
        }
        if costs.any(|c| c != 1) {
            return; // denied, so nothing changed: an entry there still holds
        }
        let (tag, n) = if tags.len() == 1 {
            (tags[0], 0)
        } else {
            (Self::batch_tag(tags), tags.len())
        };
        let mut keys = [(0, 0); BATCH_ITEMS];
        for (slot, &t) in keys.iter_mut().zip(tags).take(n) {
            // Acquire: pairs with the Release bump in `changed`.
            *slot = (t, self.version(t).load(Ordering::Acquire));
        }
        if let Some((shard, i)) = self.place(tag) {
            shard.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Cached {
                tag,
                at: now,
                until: now.saturating_add(retry),
                verdict: *d,
                index,
                keys,
                n,
            });
        }
    }

    /// Every key may have changed (a policy's keys were all reset): every
    /// entry goes.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter_mut()
                .for_each(|e| *e = None);
        }
    }

    /// The key `tag` changed (charged, refunded, reset, overridden): its
    /// entry goes, and so does every batch entry that includes it.
    pub fn changed(&self, tag: u64) {
        if let Some((shard, i)) = self.place(tag) {
            // Release: a batch entry stored after reading the old version is
            // refused by a reader that sees the new one.
            self.version(tag).fetch_add(1, Ordering::Release);
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            if s[i].is_some_and(|e| e.tag == tag && e.n == 0) {
                s[i] = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply of `n` integers, `now` in field 10 (the rest a plausible
    /// allowed decision).
    fn reply_of(now: i64, n: usize) -> Value {
        let mut r = vec![1, 0, 10, 9, 0, 1_000, 0, 0, 0, now, 0];
        r.resize(n, 0);
        Value::Array(r.into_iter().map(Value::Int).collect())
    }

    #[test]
    fn a_reply_with_a_time_out_of_range_is_malformed_not_a_decision() {
        let at = |now| reply(&reply_of(now, 11)).map(|r| r.at_ns);
        assert_eq!(at(0).unwrap(), 0);
        assert_eq!(at(crate::MAX_TIME_NS as i64).unwrap(), crate::MAX_TIME_NS);
        // -1 would read as u64::MAX; past MAX_TIME_NS the script never answers.
        for bad in [-1, -2, crate::MAX_TIME_NS as i64 + 1, i64::MAX] {
            assert!(at(bad).is_err(), "now = {bad}");
        }
        assert!(reply(&reply_of(5, 10)).is_err());
        assert!(reply(&reply_of(5, 12)).is_err());
    }

    #[test]
    fn glob_characters_of_a_prefix_match_only_themselves() {
        assert_eq!(glob_escape("rk:"), "rk:");
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }

    #[test]
    fn cluster_nodes_name_the_live_masters() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003,node-3.example master - 0 1426238318243 3 connected 10923-16383
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
6ec2 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238316232 5 disconnected
";
        assert_eq!(
            cluster_masters(nodes),
            [
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30003),
                ("127.0.0.1".to_string(), 30001),
            ]
        );
    }
}
