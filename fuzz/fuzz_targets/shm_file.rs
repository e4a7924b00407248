//! The shared file as hostile input. A valid file with five policies (GCRA,
//! a composite `10/second;100/minute`, `sliding_log 3/10 seconds`,
//! `concurrency 2`, and one with a penalty box) and some state is built
//! once; each input is a list of mutations (an area of the file — header,
//! directory, a policy's counters and wait words, its deny ring, its
//! override table, its table of intents and slots, or anywhere — an offset
//! and bytes) applied to a fresh copy, then `open_shared`, the same
//! `add_policy` calls and a bounded sequence of operations at explicit
//! times. Pass: no crash, no sanitizer report, no hang (libFuzzer's
//! `-timeout`). Errors are fine: a corrupt file may be refused.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ratekeeper::{Engine, EngineOptions, Penalty, Permit, PolicyId, PolicyOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_000 * S;

/// File layout (src/shm/mod.rs, src/engine/policies.rs): header fields, directory
/// entries, and within a policy's region the head (counters, wait words),
/// the deny ring, the override table, then the table.
use ratekeeper::__private::layout;
const HEADER_FIELDS: usize = layout::DIR;
const SEED: u64 = layout::SEED as u64;
const DIR: usize = layout::DIR;
const ENTRY_BYTES: usize = layout::ENTRY_BYTES;
const E_REGION_OFFSET: usize = layout::ENTRY_REGION_OFFSET;
const E_REGION_BYTES: usize = layout::ENTRY_REGION_BYTES;
const HEAD_BYTES: usize = layout::RING_IN_REGION;
const RING_BYTES: usize = layout::OVERRIDES_IN_REGION - layout::RING_IN_REGION;
const OVERRIDE_BYTES: usize = layout::TABLE_IN_REGION - layout::OVERRIDES_IN_REGION;
const TABLE_AT: usize = layout::TABLE_IN_REGION;

fn opts() -> EngineOptions {
    EngineOptions {
        capacity: 16,
        shared_max_bytes: 1 << 20,
        ..Default::default()
    }
}

fn add_all(e: &Engine) -> Vec<PolicyId> {
    let penalty = PolicyOptions {
        penalty: Some(Penalty {
            strikes: 3,
            window_ns: 60 * S,
            ban_ns: 10 * S,
            max_ban_ns: 100 * S,
        }),
        record_keys: true,
        ..Default::default()
    };
    [
        e.add_policy("gcra", "10/second"),
        e.add_policy("composite", "10/second;100/minute"),
        e.add_policy("log", "sliding_log 3/10 seconds"),
        e.add_policy("conc", "concurrency 2"),
        e.add_policy_with("pen", "5/minute", penalty),
    ]
    .into_iter()
    .filter_map(Result::ok)
    .collect()
}

struct Template {
    bytes: Vec<u8>,
    /// (offset, bytes) of each policy's region.
    regions: Vec<(usize, usize)>,
    work: PathBuf,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("rk-fuzz-shm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("template");
        let _ = std::fs::remove_file(&path);
        // A fixed hash seed (header bytes 40..56), so that an input does
        // the same in every process (keys land in the same buckets).
        drop(Engine::open_shared(&path, opts()).unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&[0x5a; 16], SEED)
            .unwrap();
        {
            let e = Engine::open_shared(&path, opts()).unwrap();
            let ids = add_all(&e);
            assert_eq!(ids.len(), 5);
            let mut permits = Vec::new();
            for r in 0..40u64 {
                for &id in &ids {
                    let key = [b'k', (r % 5) as u8];
                    e.check_at(id, &key, 1, T0 + r * S / 4);
                    if let Ok((_, Some(p))) = e.acquire_at(id, &key, T0 + r * S / 4) {
                        permits.push(p);
                    }
                    let _ = e.set_override(id, &key, 1.5);
                }
            }
            // Some permits stay held, some are released.
            for p in permits.into_iter().step_by(2) {
                let _ = e.release(p);
            }
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let regions = (0..5)
            .map(|i| {
                let e = DIR + i * ENTRY_BYTES;
                (word(e + E_REGION_OFFSET), word(e + E_REGION_BYTES))
            })
            .collect();
        Template {
            bytes,
            regions,
            work: dir.join("work"),
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Area {
    Header,
    Directory(u8),
    /// Counters and wait words of policy n.
    Head(u8),
    Ring(u8),
    Overrides(u8),
    /// Intents and slots.
    Table(u8),
    Anywhere,
}

#[derive(Arbitrary, Debug)]
struct Mutation {
    area: Area,
    offset: u32,
    bytes: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Check { p: u8, key: u8, cost: u8 },
    Peek { p: u8, key: u8, cost: u8 },
    Refund { p: u8, key: u8, cost: u8 },
    Reset { p: u8, key: u8 },
    Acquire { p: u8, key: u8 },
    Release { i: u8 },
    Stats { p: u8 },
    Denials { p: u8, since: u64 },
    SetOverride { p: u8, key: u8, factor: u16 },
    ClearOverride { p: u8, key: u8 },
    Advance { ms: u16 },
    Policies,
}

#[derive(Arbitrary, Debug)]
struct Input {
    mutations: Vec<Mutation>,
    ops: Vec<Op>,
}

fn apply(t: &Template, file: &mut [u8], m: &Mutation) {
    let region = |n: u8| t.regions[n as usize % t.regions.len()];
    let (start, len) = match m.area {
        Area::Header => (0, HEADER_FIELDS),
        Area::Directory(n) => (DIR + (n as usize % 5) * ENTRY_BYTES, ENTRY_BYTES),
        Area::Head(n) => (region(n).0, HEAD_BYTES),
        Area::Ring(n) => (region(n).0 + HEAD_BYTES, RING_BYTES),
        Area::Overrides(n) => (region(n).0 + HEAD_BYTES + RING_BYTES, OVERRIDE_BYTES),
        Area::Table(n) => {
            let (at, bytes) = region(n);
            (at + TABLE_AT, bytes.saturating_sub(TABLE_AT).max(1))
        }
        Area::Anywhere => (0, file.len()),
    };
    let at = start + m.offset as usize % len;
    for (i, &b) in m.bytes.iter().take(16).enumerate() {
        if let Some(x) = file.get_mut(at + i) {
            *x = b;
        }
    }
}

fuzz_target!(|input: Input| {
    let t = template();
    let mut file = t.bytes.clone();
    for m in input.mutations.iter().take(32) {
        apply(t, &mut file, m);
    }
    let _ = std::fs::remove_file(&t.work);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&t.work)
        .unwrap();
    f.write_all_at(&file, 0).unwrap();
    drop(f);

    let Ok(e) = Engine::open_shared(&t.work, opts()) else {
        return;
    };
    let ids = add_all(&e);
    if ids.is_empty() {
        return;
    }
    let pick = |p: u8| ids[p as usize % ids.len()];
    let mut now = T0 + 20 * S;
    let mut permits: Vec<Permit> = Vec::new();
    for op in input.ops.iter().take(64) {
        match *op {
            Op::Check { p, key, cost } => {
                e.check_at(pick(p), &[key % 8], cost as u32 % 4, now);
            }
            Op::Peek { p, key, cost } => {
                let _ = e.peek_at(pick(p), &[key % 8], cost as u32 % 4, now);
            }
            Op::Refund { p, key, cost } => {
                let _ = e.refund_at(pick(p), &[key % 8], cost as u32 % 4, now);
            }
            Op::Reset { p, key } => {
                let _ = e.reset(pick(p), &[key % 8]);
            }
            Op::Acquire { p, key } => {
                if let Ok((_, Some(permit))) = e.acquire_at(pick(p), &[key % 8], now) {
                    permits.push(permit);
                }
            }
            Op::Release { i } => {
                if !permits.is_empty() {
                    let permit = permits.swap_remove(i as usize % permits.len());
                    let _ = e.release(permit);
                }
            }
            Op::Stats { p } => {
                let _ = e.stats(pick(p));
            }
            Op::Denials { p, since } => {
                let _ = e.recent_denials(pick(p), since);
            }
            Op::SetOverride { p, key, factor } => {
                let _ = e.set_override(pick(p), &[key % 8], (factor % 10_000) as f64 / 1000.0);
            }
            Op::ClearOverride { p, key } => {
                let _ = e.clear_override(pick(p), &[key % 8]);
            }
            Op::Advance { ms } => now += ms as u64 * 1_000_000,
            Op::Policies => {
                let _ = e.policies();
            }
        }
    }
});
