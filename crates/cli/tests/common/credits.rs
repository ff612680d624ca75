//! Helpers of the credits tests (`credits_story.rs`, `credits_api.rs`): plan documents with
//! credit packs, the calls of `shared/API.md` §8, and readers of its answers. They read the
//! answers of `shared/API.md` §8 and `briefs/credits.md`; a change of the credits API edits them,
//! not every test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

/// How long a test waits for the sweeper (it runs every second by default).
pub const SWEEP_WAIT: Duration = Duration::from_secs(15);
/// Largest ledger page (API: `limit` 1..=1000).
pub const LEDGER_PAGE_MAX: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Plan documents

/// A pack of one item `id` of `quantity` units matching each glob of `events`.
pub fn pack(
    id: &str,
    item: &str,
    quantity: u64,
    expires_after_days: Option<u32>,
    events: &[&str],
) -> Value {
    let rules: Vec<Value> = events.iter().map(|e| json!({ "event": e })).collect();
    json!({
        "id": id, "name": format!("pack {id}"), "expiresAfterDays": expires_after_days,
        "items": [{ "id": item, "unit": "count", "quantity": quantity, "match": rules }]
    })
}

/// `pack10`: 10 units of `image.*`, never expiring.
pub fn pack10() -> Value {
    pack("pack10", "imgs", 10, None, &["image.*"])
}

/// Free plan (default) with these limits and these credit packs.
pub fn free_with_packs(limits: Value, packs: Value) -> Value {
    let mut doc = free_plan(limits);
    doc["creditPacks"] = packs;
    doc
}

/// No default plan: a user without a subscription has no plan at all.
pub fn no_plan_with_packs(packs: Value) -> Value {
    json!({
        "plans": [{"id": "pro", "limits": [
            {"id": "images_pro", "quota": 1000, "window": daily(), "match": [{"event": "image.*"}]}
        ]}],
        "creditPacks": packs
    })
}

pub fn images_daily(quota: i64) -> Value {
    json!({"id": "images_daily", "label": "Images per day", "quota": quota,
           "window": daily(), "match": [{"event": "image.*"}]})
}

// ---------------------------------------------------------------------------------------------
// Calls

pub async fn grant(c: &Client, body: Value) -> Resp {
    c.post("/v1/credits/grants", body).await
}

/// Grants one `pack` to user `user` (a fresh grant); returns its only grant.
pub async fn grant_one(c: &Client, user: &str, pack: &str, external_ref: &str) -> Value {
    let a = grant(
        c,
        json!({"userId": user, "packId": pack, "externalRef": external_ref}),
    )
    .await
    .ok();
    assert_eq!(a["created"], true, "{a}");
    let grants = arr(&a["grants"]);
    assert_eq!(grants.len(), 1, "one item, one grant: {a}");
    grants[0].clone()
}

pub async fn revoke(c: &Client, body: Value) -> Resp {
    c.post("/v1/credits/revoke", body).await
}

pub async fn credits(c: &Client, user: &str) -> Value {
    let v = c.get(&format!("/v1/users/{user}/credits")).await.ok();
    assert_eq!(v["userId"], user, "{v}");
    for g in arr(&v["grants"]) {
        assert_grant_shape(&g);
    }
    v
}

pub async fn account_credits(c: &Client, account: &str) -> Value {
    let v = c.get(&format!("/v1/accounts/{account}/credits")).await.ok();
    assert_eq!(v["accountId"], account, "{v}");
    v
}

/// The whole ledger at `base` (`/v1/users/u1/credits/ledger`), newest first, in one page.
pub async fn ledger_at(c: &Client, base: &str) -> Vec<Value> {
    let page = c.get(&format!("{base}?limit={LEDGER_PAGE_MAX}")).await.ok();
    assert_eq!(
        page["nextCursor"],
        Value::Null,
        "one page holds it all: {page}"
    );
    let entries = arr(&page["entries"]);
    for e in &entries {
        assert_entry_shape(e);
    }
    entries
}

pub async fn ledger(c: &Client, user: &str) -> Vec<Value> {
    ledger_at(c, &format!("/v1/users/{user}/credits/ledger")).await
}

/// Polls the user's ledger until `done` holds (the sweeper runs on its own schedule).
pub async fn ledger_until(
    c: &Client,
    user: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let entries = ledger(c, user).await;
        if done(&entries) {
            return entries;
        }
        assert!(
            start.elapsed() < SWEEP_WAIT,
            "{what}: not in {user}'s ledger after {SWEEP_WAIT:?}: {}",
            Value::Array(entries)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the user's credits until `done` holds.
pub async fn credits_until(
    c: &Client,
    user: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let v = credits(c, user).await;
        if done(&v) {
            return v;
        }
        assert!(
            start.elapsed() < SWEEP_WAIT,
            "{what}: not in {user}'s credits after {SWEEP_WAIT:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reserve `quantity` of `image.render` for `user`; must be allowed.
pub async fn reserve_images(c: &Client, user: &str, quantity: u64) -> (String, Value) {
    let a = c.reserve_q(user, "image.render", quantity).await;
    (Client::must_allow(&a), a)
}

// ---------------------------------------------------------------------------------------------
// Reading answers

#[track_caller]
pub fn arr(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .clone()
}

#[track_caller]
pub fn id_of(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} should be a string in {v}"))
        .to_string()
}

/// `credits.grants` of a reserve or check answer as (grantId, quantity), in the answer's order.
#[track_caller]
pub fn drawn(answer: &Value) -> Vec<(String, i64)> {
    let credits = &answer["credits"];
    assert!(
        credits.is_object(),
        "answer has no `credits` object: {answer}"
    );
    arr(&credits["grants"])
        .iter()
        .map(|g| (id_of(g, "grantId"), int(g, "quantity")))
        .collect()
}

/// `credits.held` of a reserve or check answer.
#[track_caller]
pub fn held(answer: &Value) -> i64 {
    int(&answer["credits"], "held")
}

/// Asserts the credits a reserve (or check) answer holds: `held` and exactly these grants.
#[track_caller]
pub fn assert_drawn(answer: &Value, expected: &[(&str, i64)]) {
    let want: Vec<(String, i64)> = expected.iter().map(|(g, q)| (g.to_string(), *q)).collect();
    assert_eq!(drawn(answer), want, "credits.grants: {answer}");
    assert_eq!(
        held(answer),
        expected.iter().map(|(_, q)| q).sum::<i64>(),
        "credits.held = the sum of credits.grants: {answer}"
    );
}

/// The grant `grant_id` among `v["grants"]`, if listed.
pub fn listed<'a>(v: &'a Value, grant_id: &str) -> Option<&'a Value> {
    v["grants"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["grantId"] == grant_id))
}

/// The grant ids of `v["grants"]`, in the answer's order.
#[track_caller]
pub fn grant_ids(v: &Value) -> Vec<String> {
    arr(&v["grants"])
        .iter()
        .map(|g| id_of(g, "grantId"))
        .collect()
}

/// (available, held) of `pack_id` in a per-pack summary (`credits.packs` or usage `credits`),
/// summed over its items; (0, 0) when the pack is not listed.
#[track_caller]
pub fn pack_balance(packs: &Value, pack_id: &str) -> (i64, i64) {
    arr(packs)
        .iter()
        .filter(|p| p["packId"] == pack_id)
        .fold((0, 0), |(a, h), p| {
            (a + int(p, "available"), h + int(p, "held"))
        })
}

/// (remaining, held, available) of a grant JSON, with `available = remaining − held`.
#[track_caller]
pub fn balance(g: &Value) -> (i64, i64, i64) {
    let (r, h, a) = (int(g, "remaining"), int(g, "held"), int(g, "available"));
    assert_eq!(a, r - h, "available = remaining − held: {g}");
    (r, h, a)
}

/// Every field of a Grant (credits.md "Grant JSON").
#[track_caller]
pub fn assert_grant_shape(g: &Value) {
    assert!(id_of(g, "grantId").starts_with("grt_"), "{g}");
    let owners = [g.get("userId"), g.get("accountId")]
        .iter()
        .filter(|o| o.is_some_and(|v| v.is_string()))
        .count();
    assert_eq!(owners, 1, "exactly one of userId / accountId: {g}");
    for field in ["itemId", "unit", "source", "createdAt"] {
        assert!(g[field].is_string(), "{field}: {g}");
    }
    ts_ms(&g["createdAt"]);
    for field in ["packId", "expiresAt", "externalRef", "note"] {
        assert!(g.get(field).is_some(), "{field} present (maybe null): {g}");
    }
    if !g["expiresAt"].is_null() {
        ts_ms(&g["expiresAt"]);
    }
    for field in ["quantity", "priority"] {
        int(g, field);
    }
    let (remaining, held, _) = balance(g);
    assert!(held >= 0 && held <= remaining, "0 ≤ held ≤ remaining: {g}");
}

/// Every field of a ledger Entry (credits.md).
#[track_caller]
pub fn assert_entry_shape(e: &Value) {
    assert!(id_of(e, "entryId").starts_with("led_"), "{e}");
    ts_ms(&e["at"]);
    let kinds = [
        "grant", "hold", "release", "burn", "refund", "expire", "revoke", "rollover",
    ];
    assert!(
        kinds.contains(&e["type"].as_str().unwrap_or("")),
        "type: {e}"
    );
    assert!(id_of(e, "grantId").starts_with("grt_"), "{e}");
    assert!(int(e, "quantity") > 0, "quantity > 0: {e}");
    assert!(int(e, "remainingAfter") >= 0, "{e}");
    assert!(
        (0..=int(e, "remainingAfter")).contains(&int(e, "heldAfter")),
        "0 ≤ heldAfter ≤ remainingAfter: {e}"
    );
    for field in ["reservationId", "eventId", "externalRef"] {
        assert!(e.get(field).is_some(), "{field} present (maybe null): {e}");
    }
    assert!(
        e["reason"].as_str().is_some_and(|r| !r.trim().is_empty()),
        "every entry says why, for a person: {e}"
    );
}

/// Asserts one entry: type, grant, quantity and the grant's balance after it.
#[track_caller]
pub fn assert_entry(
    e: &Value,
    kind: &str,
    grant_id: &str,
    quantity: i64,
    remaining_after: i64,
    held_after: i64,
) {
    assert_eq!(
        (
            e["type"].as_str().unwrap_or("?"),
            e["grantId"].as_str().unwrap_or("?"),
            int(e, "quantity"),
            int(e, "remainingAfter"),
            int(e, "heldAfter"),
        ),
        (kind, grant_id, quantity, remaining_after, held_after),
        "(type, grantId, quantity, remainingAfter, heldAfter) of {e}"
    );
}

/// Replays a complete ledger (newest first, every entry of every grant in it) oldest first and
/// asserts each entry moves its grant's balance the way its type says, lands on its
/// `remainingAfter`/`heldAfter`, and never goes negative. Returns each grant's final
/// (remaining, held).
#[track_caller]
pub fn replay(entries: &[Value]) -> BTreeMap<String, (i64, i64)> {
    let mut balances: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in entries.iter().rev() {
        let grant_id = id_of(e, "grantId");
        let q = int(e, "quantity");
        let kind = e["type"].as_str().unwrap_or("?");
        let (after_r, after_h) = (int(e, "remainingAfter"), int(e, "heldAfter"));
        let (r, h) = match (kind, balances.get(&grant_id)) {
            ("grant" | "rollover", None) => (0, 0),
            ("grant" | "rollover", Some(_)) => panic!("a second first entry for a grant: {e}"),
            (_, None) => panic!("an entry before its grant's first entry: {e}"),
            (_, Some(b)) => *b,
        };
        match kind {
            "grant" | "rollover" | "refund" => assert_eq!((after_r, after_h), (r + q, h), "{e}"),
            "hold" => assert_eq!((after_r, after_h), (r, h + q), "{e}"),
            "release" => assert_eq!((after_r, after_h), (r, h - q), "{e}"),
            "expire" | "revoke" => assert_eq!((after_r, after_h), (r - q, h), "{e}"),
            // −remaining, and −held for the part that was held (at most all of it).
            "burn" => {
                assert_eq!(after_r, r - q, "{e}");
                assert!(
                    after_h <= h && after_h >= h - q,
                    "a burn frees at most its quantity: {e}"
                );
            }
            _ => panic!("unknown entry type: {e}"),
        }
        assert!(
            after_h >= 0 && after_h <= after_r,
            "balance never negative: {e}"
        );
        balances.insert(grant_id, (after_r, after_h));
    }
    balances
}

/// Entries of one type for one grant.
pub fn of_type<'a>(entries: &'a [Value], kind: &str, grant_id: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["type"] == kind && e["grantId"] == grant_id)
        .collect()
}

/// The entry types, newest first.
pub fn types(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}
