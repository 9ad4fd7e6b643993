//! Throttling. Failed sign-ins are throttled per account *and* address with growing
//! delays, so a wrong password typed from one address never locks the owner out from
//! another, and per address (many accounts tried from one place). Requests are limited per
//! user and per address in fixed windows (`Throttle`), answered with 429 and
//! `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sign-in failures: per account-and-address pair, a few free tries, then each further
/// attempt waits twice as long as the one before (up to 15 minutes); per address, at most
/// 20 failures in 15 minutes.
pub struct LoginThrottle {
    pub pair: Backoff,
    pub address: Throttle,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        let window = Duration::from_secs(15 * 60);
        Self {
            pair: Backoff::new(5, Duration::from_secs(1), window),
            address: Throttle::new(20, window),
        }
    }
}

/// Growing delays per key: after `free` failures the key waits `first` from its last
/// failure, and twice as long after each further one (at most `max`). A key idle for
/// `max` starts over.
pub struct Backoff {
    free: u32,
    first: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Backoff {
    pub fn new(free: u32, first: Duration, max: Duration) -> Self {
        Self {
            free,
            first,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn delay(&self, n: u32) -> Duration {
        if n < self.free {
            return Duration::ZERO;
        }
        let doublings = (n - self.free).min(30);
        (self.first * 2u32.pow(doublings)).min(self.max)
    }

    /// `Err(seconds to wait)` while `key` is waiting.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let map = self.failures.lock().unwrap();
        let Some((n, last)) = map.get(key) else {
            return Ok(());
        };
        let since = last.elapsed();
        if since >= self.max {
            return Ok(());
        }
        let wait = self.delay(*n);
        if since >= wait {
            Ok(())
        } else {
            Err((wait - since).as_secs_f64().ceil().max(1.0) as u64)
        }
    }

    pub fn fail(&self, key: &str) {
        let mut map = self.failures.lock().unwrap();
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (_, t)| now.duration_since(*t) < self.max);
        }
        let e = map.entry(key.to_string()).or_insert((0, now));
        if now.duration_since(e.1) >= self.max {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = now;
    }

    pub fn reset(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

pub struct Throttle {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Throttle {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when `key` has used up its events in the window.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap();
        let now = Instant::now();
        let Some(list) = map.get_mut(key) else {
            return Ok(());
        };
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() < self.limit {
            return Ok(());
        }
        let oldest = list[0];
        Err((self.window - now.duration_since(oldest)).as_secs().max(1))
    }

    /// Counts an event for `key` unless it has used up the window: `Err(seconds to wait)`.
    /// A limit of 0 is no limit.
    pub fn hit(&self, key: &str) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut map = self.failures.lock().unwrap();
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, v| {
                v.last()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let list = map.entry(key.to_string()).or_default();
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() >= self.limit {
            return Err((self.window - now.duration_since(list[0])).as_secs().max(1));
        }
        list.push(now);
        Ok(())
    }

    pub fn fail(&self, key: &str) {
        let mut map = self.failures.lock().unwrap();
        // Bound memory under a flood of distinct keys: forget entries with nothing recent.
        if map.len() > 100_000 {
            let now = Instant::now();
            map.retain(|_, v| {
                v.last()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        map.entry(key.to_string()).or_default().push(Instant::now());
    }

    pub fn reset(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_tries_and_reset_on_success() {
        let b = Backoff::new(2, Duration::from_millis(100), Duration::from_secs(60));
        assert!(b.check("k").is_ok());
        b.fail("k");
        assert!(b.check("k").is_ok(), "two free tries");
        b.fail("k");
        assert_eq!(b.delay(2), Duration::from_millis(100));
        assert_eq!(b.delay(4), Duration::from_millis(400));
        assert_eq!(b.delay(40), Duration::from_secs(60));
        assert!(b.check("k").is_err());
        assert!(b.check("other").is_ok(), "keys are apart");
        std::thread::sleep(Duration::from_millis(120));
        assert!(b.check("k").is_ok());
        b.fail("k");
        assert!(b.check("k").is_err());
        b.reset("k");
        assert!(b.check("k").is_ok());
    }

    #[test]
    fn blocks_after_the_limit_until_the_window_passes() {
        let t = Throttle::new(2, Duration::from_millis(200));
        t.fail("a");
        assert!(t.check("a").is_ok());
        t.fail("a");
        assert!(t.check("a").is_err());
        assert!(t.check("b").is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check("a").is_ok());
        t.fail("a");
        t.fail("a");
        t.reset("a");
        assert!(t.check("a").is_ok());
    }
}
