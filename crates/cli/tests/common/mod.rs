//! The one helper every black-box test goes through (STYLE.md 12).
//!
//! It starts the real `tollgate` binary on port 0 with a fresh data dir (`init --json`, then
//! `serve`), drains its stderr so it never blocks, and offers a typed HTTP client whose helpers
//! follow `shared/API.md`. A change of the API then edits this module, not every test.
//!
//! Two rules are enforced here for every test: a 5xx answer fails the test at once (API.md §2:
//! a 5xx never appears in normal operation), and every non-2xx answer checked with `Resp::err`
//! must have the body `{"error": {"code", "message"}}`.
//!
//! The storage backend follows the environment: by default every server runs on the embedded
//! SQLite store in its data dir; with `TOLLGATE_TEST_BACKEND=postgres` every server gets a fresh
//! PostgreSQL database (`tg_t_<random>`, created through `TOLLGATE_TEST_POSTGRES_URL` and dropped
//! with the server), so the whole suite runs unchanged against PostgreSQL.
//!
//! This file is the root: it declares the topics below and re-exports their items, so a test
//! names everything as `common::…` (or `use common::*`) whatever file it lives in.
//! - `server`: starting, restarting and stopping the binary ([`TestServer`], [`ServerBuilder`]);
//! - `backend`: SQLite or PostgreSQL, and the PostgreSQL database of each server;
//! - `client`: the HTTP client ([`Client`]) and its answers ([`Resp`]);
//! - `answers`: reading and asserting answers;
//! - `calendar`: timestamps and calendar math;
//! - `fixtures`: plan documents and a deterministic PRNG;
//! - `credits`: the helpers of the credits tests (named `common::credits::…`);
//! - `secrets`: the secrets a test saw, which no server may log.
//! - `self_tests`: tests of these helpers (`cargo test` runs them in every test binary).
#![allow(dead_code)]

mod answers;
mod backend;
mod calendar;
mod client;
pub mod credits;
mod fixtures;
mod secrets;
#[cfg(test)]
mod self_tests;
mod server;

// Every test binary compiles this module and uses its own part of it: the re-exports it leaves
// unused must not warn, as `dead_code` is allowed above for the items themselves.
#[allow(unused_imports)]
pub use answers::*;
#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use calendar::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use reqwest::header::HeaderMap;
#[allow(unused_imports)]
pub use reqwest::Method;
#[allow(unused_imports)]
pub use serde_json::{json, Value};
#[allow(unused_imports)]
pub use server::*;

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;
/// 2^53 - 1, the largest quantity the API accepts.
pub const QUANTITY_MAX: u64 = (1 << 53) - 1;
