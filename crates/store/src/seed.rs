//! Synthetic usage events for benchmarks (`tollgate seed-events`, `tollgate bench
//! --seed-events`): the same deterministic rows for every backend, shaped like an AI app's
//! traffic so analytics queries meet realistic groups.
//!
//! Rows are spread evenly over the [`SEED_DAYS`] days before `now`, times rising with the row
//! number as a real log's do. A fifth of the rows go to the heaviest 1 % of users (`seed_u0`
//! is one of them, so it has events in every hour); the rest spread over all users. Half are
//! images (`image.render`, four models, two of them `tier: premium`), three in ten LLM tokens
//! (`llm.tokens`, 100 to 4,099 a call, three models), two in ten chat messages; 90 % committed,
//! 7 % tracked, 2 % released, 1 % denied. Users whose number ends in 0 are on `pro`, the rest on
//! `free`. Costs follow per-model prices, as a cost table would set them.

/// The seeded events spread over this many days before now.
pub const SEED_DAYS: i64 = 30;

/// One synthetic usage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedEvent {
    pub event_id: String,
    pub at_ms: i64,
    pub user_id: String,
    pub event: &'static str,
    pub quantity: i64,
    /// A JSON object.
    pub metadata: &'static str,
    pub cost_micros: Option<i64>,
    pub status: &'static str,
    pub plan_id: &'static str,
    /// The deny reasons, a JSON array (`limit_reached` for a denial).
    pub reasons: &'static str,
}

/// SplitMix64: a cheap, good spread, the same on every machine.
fn mix(i: u64, salt: u64) -> u64 {
    let mut z = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Image models: (metadata, micros per image).
const IMAGES: [(&str, i64); 4] = [
    (r#"{"model":"flux-pro","tier":"premium"}"#, 40_000),
    (r#"{"model":"dall-e-3","tier":"premium"}"#, 40_000),
    (r#"{"model":"sdxl","tier":"standard"}"#, 4_000),
    (r#"{"model":"imagen-3","tier":"standard"}"#, 20_000),
];
/// LLM models: (metadata, micros per token).
const LLMS: [(&str, i64); 3] = [
    (r#"{"model":"gpt-4o"}"#, 5),
    (r#"{"model":"claude-sonnet"}"#, 3),
    (r#"{"model":"llama-3"}"#, 1),
];

/// Row `i` of `events` over `users` users, the newest at `now_ms`.
pub fn seed_event(i: u64, events: u64, users: u64, now_ms: i64) -> SeedEvent {
    let span_ms = SEED_DAYS * 86_400_000;
    let at_ms = now_ms - span_ms + ((i as i128 * span_ms as i128) / events.max(1) as i128) as i64;
    let users = users.max(1);
    let heavy = (users / 100).max(1);
    let r = mix(i, 1);
    let user = if r.is_multiple_of(5) {
        mix(i, 2) % heavy
    } else {
        mix(i, 2) % users
    };
    let kind = mix(i, 3) % 10;
    let pick = mix(i, 4);
    let (event, quantity, metadata, cost) = match kind {
        0..=4 => {
            let (m, price) = IMAGES[(pick % 4) as usize];
            ("image.render", 1, m, Some(price))
        }
        5..=7 => {
            let (m, price) = LLMS[(pick % 3) as usize];
            let tokens = 100 + (mix(i, 5) % 4_000) as i64;
            ("llm.tokens", tokens, m, Some(tokens * price))
        }
        _ => ("chat.message", 1, "{}", None),
    };
    let status = match mix(i, 6) % 100 {
        0..=89 => "committed",
        90..=96 => "tracked",
        97..=98 => "released",
        _ => "denied",
    };
    let counted = matches!(status, "committed" | "tracked");
    SeedEvent {
        event_id: format!("evt_seed{i:016}"),
        at_ms,
        user_id: format!("seed_u{user}"),
        event,
        quantity,
        metadata,
        cost_micros: cost.filter(|_| counted),
        status,
        plan_id: if user % 10 == 0 { "pro" } else { "free" },
        reasons: if status == "denied" {
            r#"["limit_reached"]"#
        } else {
            "[]"
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_deterministic_and_spread_as_documented() {
        let n = 100_000;
        let now = 1_800_000_000_000;
        let rows: Vec<SeedEvent> = (0..n).map(|i| seed_event(i, n, 10_000, now)).collect();
        assert_eq!(rows[7], seed_event(7, n, 10_000, now));
        assert!(rows.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(rows[0].at_ms >= now - SEED_DAYS * 86_400_000);
        assert!(rows[n as usize - 1].at_ms <= now);
        let share =
            |f: &dyn Fn(&SeedEvent) -> bool| rows.iter().filter(|r| f(r)).count() as f64 / n as f64;
        assert!((share(&|r| r.event == "image.render") - 0.5).abs() < 0.01);
        assert!((share(&|r| r.status == "committed") - 0.9).abs() < 0.01);
        // seed_u0 is heavy: about 0.2 % of rows, 0.01 % uniform plus 20 % over 100 heavy users.
        assert!((share(&|r| r.user_id == "seed_u0") - 0.0021).abs() < 0.0006);
        assert!(rows
            .iter()
            .all(|r| r.cost_micros.is_none() || matches!(r.status, "committed" | "tracked")));
    }
}
