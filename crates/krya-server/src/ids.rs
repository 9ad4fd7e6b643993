//! Row ids and time.

/// A new row id, 24 hex digits: milliseconds since the epoch (12 digits), then 6 random
/// bytes. Ids sort in creation order, so lists ordered by `(created_at, id)` (seconds)
/// keep generations made within the same second in the order they were made.
pub fn random_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("{:012x}{}", ms & 0xffff_ffff_ffff, crate::auth::random_hex(6))
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
