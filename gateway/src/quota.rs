//! [`Leases`]: this gateway's share of a Redis rate-limit window, taken a
//! chunk at a time, so most requests are counted without a round trip.
//!
//! Redis keeps the window's count, as before; a gateway adds a whole
//! chunk to it (`INCRBY`) and then hands out that chunk's requests
//! locally. The count in Redis is never below what all gateways let
//! through, so a limit is never exceeded; a gateway's unused rest of a
//! chunk is lost to the others for that window (at most one chunk per
//! gateway). A chunk is a sixtieth of the limit (ten of 600/min), and one
//! request for limits under 120/min, which are therefore counted exactly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::redis_keys::Verdict;

/// What is left of one window's lease.
struct Lease {
    window_ends: Instant,
    /// Requests leased and not yet let through.
    unused: u32,
    /// Requests of the window let through by all gateways, as far as this
    /// one knows: the leased total in Redis at its last lease.
    counted: u64,
}

#[derive(Default)]
pub struct Leases {
    leases: Mutex<HashMap<String, Lease>>,
}

/// Requests leased at once under `limit`.
pub fn chunk(limit: u32) -> u32 {
    (limit / 60).clamp(1, 50)
}

impl Leases {
    /// Lets one request through from a live lease on `key`, if any.
    pub fn take(&self, key: &str, limit: u32) -> Option<Verdict> {
        let mut leases = self.leases.lock().expect("leases poisoned");
        let now = Instant::now();
        let lease = leases.get_mut(key)?;
        if lease.window_ends <= now || lease.unused == 0 {
            return None;
        }
        lease.unused -= 1;
        Some(verdict(limit, lease, now))
    }

    /// Records a lease of `chunk` requests that brought the window's count
    /// in Redis to `count`, `ttl` before the window ends; returns the
    /// verdict on the request that took it.
    pub fn grant(&self, key: &str, limit: u32, chunk: u32, count: u64, ttl: Duration) -> Verdict {
        let limit64 = u64::from(limit);
        let granted = if count <= limit64 {
            chunk
        } else {
            limit64.saturating_sub(count - u64::from(chunk)) as u32
        };
        let now = Instant::now();
        if granted == 0 {
            return Verdict::of(limit, count, ttl.as_millis() as i64);
        }
        let mut leases = self.leases.lock().expect("leases poisoned");
        let window_ends = now + ttl;
        let counted = count.min(limit64);
        let lease = leases.entry(key.to_owned()).or_insert(Lease {
            window_ends,
            unused: 0,
            counted,
        });
        if lease.window_ends <= now {
            *lease = Lease {
                window_ends,
                unused: 0,
                counted,
            };
        }
        // A concurrent lease of the same window adds to this one.
        lease.unused += granted - 1;
        lease.counted = lease.counted.max(counted);
        if leases.len() > 100_000 {
            leases.retain(|_, l| l.window_ends > now);
        }
        let lease = &leases[key];
        verdict(limit, lease, now)
    }
}

fn verdict(limit: u32, lease: &Lease, now: Instant) -> Verdict {
    let used = lease.counted.saturating_sub(u64::from(lease.unused));
    let ttl_ms = lease.window_ends.saturating_duration_since(now).as_millis() as i64;
    Verdict::of(limit, used, ttl_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn small_limits_are_counted_one_by_one() {
        assert_eq!(chunk(10), 1);
        assert_eq!(chunk(119), 1);
        assert_eq!(chunk(600), 10);
        assert_eq!(chunk(1_000_000), 50);
    }

    #[test]
    fn a_lease_is_spent_locally_then_asks_again() {
        let leases = Leases::default();
        assert!(leases.take("k", 600).is_none(), "nothing leased yet");
        let first = leases.grant("k", 600, 10, 10, MINUTE);
        assert!(first.allowed);
        assert_eq!(first.remaining, 600 - 1);
        for n in 2..=10 {
            let v = leases.take("k", 600).expect("leased");
            assert_eq!(v.remaining, 600 - n);
        }
        assert!(leases.take("k", 600).is_none(), "the chunk is spent");
    }

    #[test]
    fn the_last_chunk_is_cut_to_the_limit_and_then_refused() {
        let leases = Leases::default();
        // Others took 15 of 20: this chunk of 10 brings Redis to 25.
        let v = leases.grant("k", 20, 10, 25, MINUTE);
        assert!(v.allowed);
        for _ in 0..4 {
            assert!(leases.take("k", 20).unwrap().allowed);
        }
        assert!(leases.take("k", 20).is_none());
        let refused = leases.grant("k", 20, 10, 35, MINUTE);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
    }

    #[test]
    fn an_expired_window_starts_afresh() {
        let leases = Leases::default();
        leases.grant("k", 600, 10, 10, Duration::ZERO);
        assert!(leases.take("k", 600).is_none());
        let v = leases.grant("k", 600, 10, 10, MINUTE);
        assert_eq!(v.remaining, 599);
    }
}
