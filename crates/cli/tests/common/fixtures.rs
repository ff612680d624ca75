//! Inputs the tests build: plan documents, and a small deterministic PRNG (no `rand` among the
//! dev-deps) for randomized sequences that replay from a seed.

use serde_json::{json, Value};

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// `{"defaultPlan": "free", "plans": [{"id": "free", "name": "Free", "limits": limits}]}`.
pub fn free_plan(limits: Value) -> Value {
    json!({
        "defaultPlan": "free",
        "plans": [{ "id": "free", "name": "Free", "limits": limits }]
    })
}

/// A daily UTC calendar window.
pub fn daily() -> Value {
    json!({"type": "calendar", "period": "day", "timezone": "UTC"})
}

pub fn lifetime() -> Value {
    json!({"type": "lifetime"})
}
