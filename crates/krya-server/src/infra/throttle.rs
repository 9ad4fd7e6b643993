//! Failed-login throttling per account and per client address: after `limit` failures in
//! `window`, further attempts get 429 with `Retry-After` until the oldest failure ages out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins allowed per account, and per client address (more: people share
/// addresses), within 15 minutes.
pub struct LoginThrottle {
    pub account: Throttle,
    pub address: Throttle,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        let window = Duration::from_secs(15 * 60);
        Self {
            account: Throttle::new(5, window),
            address: Throttle::new(20, window),
        }
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

    /// `Err(seconds to wait)` when `key` has used up its failures.
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
