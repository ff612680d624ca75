//! The wire types of Tollgate's HTTP API (`API.md`): every request and response body, as serde
//! structs that the server, the CLI and the Rust SDK share, with the OpenAPI schema derived from
//! them.
//!
//! Serialization is a boundary: domain types in `tollgate-core` derive nothing of serde, and the
//! conversions between the two are written out here by hand. Requests convert into core
//! newtypes ("parse, don't validate"); a refusal is a [`FieldError`] naming the JSON path of the
//! offending field. This crate knows JSON, not HTTP: status codes belong to the server.

pub mod admin;
pub mod analytics;
pub mod billers;
pub mod browser;
mod convert;
pub mod credits;
pub mod error;
pub mod field;
pub mod metering;
pub mod plans;
pub mod promote;
pub mod schema;
pub mod subscriptions;
pub mod time;

pub use admin::*;
pub use analytics::*;
pub use billers::*;
pub use browser::*;
pub use credits::*;
pub use error::*;
pub use field::{from_json_str, from_json_value, FieldError};
pub use metering::*;
pub use plans::*;
pub use promote::*;
pub use subscriptions::*;
pub use time::{format_timestamp, parse_timestamp};
