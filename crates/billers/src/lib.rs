//! Stripe and Polar webhooks, read into Tollgate's biller events.
//!
//! The server hands this crate a delivery's raw body and headers; [`verify`] says whether the
//! biller signed it, then [`stripe`] or [`polar`] reads it into a
//! [`tollgate_core::biller::BillerEvent`], which the store applies. Everything here is pure and
//! synchronous: no I/O, no clock (`now` is a parameter), no async. [`samples`] builds
//! real-shaped payloads for tests in this and other crates.

mod error;
pub mod polar;
pub mod samples;
mod sources;
pub mod stripe;
pub mod verify;

pub use error::ParseError;
pub use polar::parse_polar;
pub use sources::{
    Sources, ACCOUNT_ID_FROM, PAYLOAD_ID_BYTES_MAX, POLAR_USER_ID_FROM, STRIPE_USER_ID_FROM,
};
pub use stripe::parse_stripe;
pub use verify::{sign_standard, sign_stripe, verify_standard, verify_stripe, SignatureError};
