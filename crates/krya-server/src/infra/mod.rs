//! What every part uses: settings, errors, ids and time, credits, throttling.

pub mod config;
pub mod credits;
pub mod error;
pub mod ids;
pub mod net;
pub mod outbound;
pub mod throttle;
