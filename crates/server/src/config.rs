//! The server's own settings, already resolved from defaults, file, environment and flags by the
//! binary; the server only reads them.

use std::time::Duration;

/// How often the sweeper expires overdue reservations, in milliseconds, by default.
pub const SWEEP_INTERVAL_MS_DEFAULT: u64 = 1000;
/// Longest a request may run before it answers `503` (`outcome_unknown` for a write), in
/// milliseconds, by default.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub sweep_interval: Duration,
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_millis(SWEEP_INTERVAL_MS_DEFAULT),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT),
        }
    }
}
