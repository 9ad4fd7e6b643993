//! Row ids and time.

/// Lowercase hex of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new row id, 24 hex digits: milliseconds since the epoch (12 digits), then 6 random
/// bytes. Ids sort in creation order, so lists ordered by `(created_at, id)` (seconds)
/// keep rows made within the same second in the order they were made.
pub fn random_id() -> String {
    format!(
        "{:012x}{}",
        now_ms() as u64 & 0xffff_ffff_ffff,
        random_hex(6)
    )
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    now_ms().div_euclid(1000)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_sort_in_creation_order() {
        let a = super::random_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::random_id();
        assert_eq!((a.len(), b.len()), (24, 24));
        assert!(a < b, "{a} then {b}");
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
