//! Abuse control as pure functions: the penalty box and retry jitter.
//!
//! **Penalty box.** Every denial of a key is a *strike*; strikes are
//! counted by a GCRA of `strikes` per `window` (so they also decay
//! smoothly). The strike that exceeds the budget bans the key for
//! `ban`, doubled for each ban since the key was last left alone for
//! `max_ban`, and never longer than `max_ban`. A banned key is denied
//! without touching its limits, with the ban's remaining time as
//! retry-after.
//!
//! Words (appended to the policy's slot):
//!
//! | word    | `a`                 | `b`                                  |
//! |---------|---------------------|--------------------------------------|
//! | strikes | unused              | strike TAT in ns (0 right after a ban) |
//! | ban     | bans so far (level) | banned until, ns (0: never banned)   |

use crate::algo::Payload;
use crate::Error;

/// Penalty-box settings of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Penalty {
    /// Denials that trigger a ban...
    pub strikes: u32,
    /// ...within this window (ns).
    pub window_ns: u64,
    /// Length of the first ban (ns); each further ban doubles it.
    pub ban_ns: u64,
    /// Longest ban (ns); also how long a key must stay unbanned for its
    /// escalation to start over.
    pub max_ban_ns: u64,
}

impl Penalty {
    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("penalty: {m}")));
        if self.strikes == 0 {
            return bad("strikes must be at least 1");
        }
        if self.window_ns / self.strikes as u64 == 0 {
            return bad("window must be at least one nanosecond per strike");
        }
        if self.ban_ns == 0 || self.max_ban_ns < self.ban_ns {
            return bad("ban must be positive and no longer than max_ban");
        }
        if self.max_ban_ns > u64::MAX / 4 || self.window_ns > u64::MAX / 4 {
            return bad("durations overflow the clock");
        }
        Ok(())
    }

    fn step(&self) -> u64 {
        self.window_ns / self.strikes as u64
    }
}

/// Until when the key is banned (`0` or past: not banned).
#[inline(always)]
pub(crate) fn banned_until(ban: Payload) -> u64 {
    ban.b
}

/// The strike word after one more denial at `now`; `b == 0` means this
/// strike triggers a ban (and the strike count starts over).
pub(crate) fn strike(p: &Penalty, strikes: Payload, now: u64) -> Payload {
    let step = p.step();
    let tat = strikes.b.max(now).saturating_add(step);
    // GCRA with a burst of `strikes - 1`: the `strikes`-th denial at one
    // instant is the first that does not conform.
    if tat - now > step * (p.strikes as u64 - 1) {
        Payload::default()
    } else {
        Payload { a: 0, b: tat }
    }
}

/// The ban word after a ban starting at `now`.
pub(crate) fn ban(p: &Penalty, ban: Payload, now: u64) -> Payload {
    let forgiven = ban.b == 0 || now >= ban.b.saturating_add(p.max_ban_ns);
    let level = if forgiven { 0 } else { ban.a.min(62) };
    let length = p.ban_ns.saturating_mul(1u64 << level).min(p.max_ban_ns);
    Payload {
        a: level + 1,
        b: now.saturating_add(length),
    }
}

/// A small per-thread random source for retry jitter (xorshift64*, seeded
/// from the kernel once per thread). Not for anything secret.
pub(crate) fn jitter(max_ns: u64) -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    if max_ns == 0 {
        return 0;
    }
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            let mut b = [0u8; 8];
            crate::clock::fill_random(&mut b);
            x = u64::from_le_bytes(b) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % (max_ns.saturating_add(1)).max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: u64 = 1_000_000_000;

    fn login() -> Penalty {
        // Ban 15 minutes after 3 breaches in 10 minutes, up to 4 hours.
        Penalty {
            strikes: 3,
            window_ns: 600 * S,
            ban_ns: 900 * S,
            max_ban_ns: 4 * 3600 * S,
        }
    }

    #[test]
    fn the_third_strike_within_the_window_triggers_a_ban() {
        let p = login();
        let s1 = strike(&p, Payload::default(), 10 * S);
        assert_ne!(s1.b, 0);
        let s2 = strike(&p, s1, 20 * S);
        assert_ne!(s2.b, 0);
        assert_eq!(strike(&p, s2, 30 * S).b, 0, "third strike bans");
    }

    #[test]
    fn strikes_spread_over_more_than_the_window_never_ban() {
        let p = login();
        let mut s = Payload::default();
        for i in 0..100 {
            s = strike(&p, s, i * 200 * S);
            assert_ne!(s.b, 0, "strike {i}");
        }
    }

    #[test]
    fn bans_double_until_the_cap_and_reset_after_a_quiet_period() {
        let p = login();
        let mut b = Payload::default();
        let mut now = 1000 * S;
        let mut lengths = vec![];
        for _ in 0..6 {
            b = ban(&p, b, now);
            lengths.push((b.b - now) / S);
            now = b.b + 60 * S; // banned again a minute after the ban ends
        }
        assert_eq!(lengths, vec![900, 1800, 3600, 7200, 14400, 14400]);
        // Left alone for max_ban after the ban: back to the first length.
        let b2 = ban(&p, b, b.b + p.max_ban_ns);
        assert_eq!(b2.b - (b.b + p.max_ban_ns), 900 * S);
        assert_eq!(b2.a, 1);
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..10_000 {
            assert!(jitter(1000) <= 1000);
        }
        assert_eq!(jitter(0), 0);
        let distinct: std::collections::HashSet<u64> = (0..100).map(|_| jitter(1 << 40)).collect();
        assert!(distinct.len() > 90);
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut p = login();
        p.strikes = 0;
        assert!(p.validate().is_err());
        let mut p = login();
        p.max_ban_ns = p.ban_ns - 1;
        assert!(p.validate().is_err());
        assert!(login().validate().is_ok());
    }
}
