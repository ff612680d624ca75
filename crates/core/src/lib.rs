//! The domain core of Tollgate: plans, limits, windows, matching and the metering decisions.
//!
//! Everything here is pure and synchronous: no I/O, no clock, no randomness. Time and ids are
//! parameters, so every decision is a deterministic function of (state, command, now) and the
//! store crates only load state, call into this crate, and persist what it decided.

/// `as_str` and `parse` for an enum of names, as the plan document, the answers and the stores
/// spell them.
macro_rules! named_enum {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

pub mod analytics;
pub mod biller;
pub mod credits;
pub mod decision;
pub mod input;
pub mod plan;
pub mod recommend;
pub mod subscription;
pub mod window;

pub use jiff::Timestamp;
