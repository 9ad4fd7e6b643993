//! Row ids and time (`krya_core::ids`).

pub use krya_core::ids::{now, now_ms, random_id};
