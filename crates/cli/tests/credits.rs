//! API.md §8 credits (issue 11), black-box over real HTTP: packs, grants idempotent on
//! `externalRef`, the append-only ledger, partial burns and refunds, release and expiry of holds,
//! grant expiry and rollover by the test clock, revoke, credits without a plan, account credits,
//! track, and a race of 64 clients over one user's last 10 credits.
//!
//! Every test starts at noon UTC (test clock), so no calendar day turns over unless a test moves
//! the clock on purpose. Helpers below read the answers of `shared/API.md` §8 and
//! `briefs/credits.md`; a change of the credits API edits them, not every test.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 64;
/// How long a test waits for the sweeper (it runs every second by default).
const SWEEP_WAIT: Duration = Duration::from_secs(15);
/// Largest ledger page (API: `limit` 1..=1000).
const LEDGER_PAGE_MAX: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Plan documents

/// A pack of one item `id` of `quantity` units matching each glob of `events`.
fn pack(
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
fn pack10() -> Value {
    pack("pack10", "imgs", 10, None, &["image.*"])
}

/// Free plan (default) with these limits and these credit packs.
fn free_with_packs(limits: Value, packs: Value) -> Value {
    let mut doc = free_plan(limits);
    doc["creditPacks"] = packs;
    doc
}

/// No default plan: a user without a subscription has no plan at all.
fn no_plan_with_packs(packs: Value) -> Value {
    json!({
        "plans": [{"id": "pro", "limits": [
            {"id": "images_pro", "quota": 1000, "window": daily(), "match": [{"event": "image.*"}]}
        ]}],
        "creditPacks": packs
    })
}

fn images_daily(quota: i64) -> Value {
    json!({"id": "images_daily", "label": "Images per day", "quota": quota,
           "window": daily(), "match": [{"event": "image.*"}]})
}

// ---------------------------------------------------------------------------------------------
// Calls

async fn grant(c: &Client, body: Value) -> Resp {
    c.post("/v1/credits/grants", body).await
}

/// Grants one `pack` to user `user` (a fresh grant); returns its only grant.
async fn grant_one(c: &Client, user: &str, pack: &str, external_ref: &str) -> Value {
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

async fn revoke(c: &Client, body: Value) -> Resp {
    c.post("/v1/credits/revoke", body).await
}

async fn credits(c: &Client, user: &str) -> Value {
    let v = c.get(&format!("/v1/users/{user}/credits")).await.ok();
    assert_eq!(v["userId"], user, "{v}");
    for g in arr(&v["grants"]) {
        assert_grant_shape(&g);
    }
    v
}

async fn account_credits(c: &Client, account: &str) -> Value {
    let v = c.get(&format!("/v1/accounts/{account}/credits")).await.ok();
    assert_eq!(v["accountId"], account, "{v}");
    v
}

/// The whole ledger at `base` (`/v1/users/u1/credits/ledger`), newest first, in one page.
async fn ledger_at(c: &Client, base: &str) -> Vec<Value> {
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

async fn ledger(c: &Client, user: &str) -> Vec<Value> {
    ledger_at(c, &format!("/v1/users/{user}/credits/ledger")).await
}

/// Polls the user's ledger until `done` holds (the sweeper runs on its own schedule).
async fn ledger_until(
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
async fn credits_until(c: &Client, user: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
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
async fn reserve_images(c: &Client, user: &str, quantity: u64) -> (String, Value) {
    let a = c.reserve_q(user, "image.render", quantity).await;
    (Client::must_allow(&a), a)
}

// ---------------------------------------------------------------------------------------------
// Reading answers

#[track_caller]
fn arr(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .clone()
}

#[track_caller]
fn id_of(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} should be a string in {v}"))
        .to_string()
}

/// `credits.grants` of a reserve or check answer as (grantId, quantity), in the answer's order.
#[track_caller]
fn drawn(answer: &Value) -> Vec<(String, i64)> {
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
fn held(answer: &Value) -> i64 {
    int(&answer["credits"], "held")
}

/// Asserts the credits a reserve (or check) answer holds: `held` and exactly these grants.
#[track_caller]
fn assert_drawn(answer: &Value, expected: &[(&str, i64)]) {
    let want: Vec<(String, i64)> = expected.iter().map(|(g, q)| (g.to_string(), *q)).collect();
    assert_eq!(drawn(answer), want, "credits.grants: {answer}");
    assert_eq!(
        held(answer),
        expected.iter().map(|(_, q)| q).sum::<i64>(),
        "credits.held = the sum of credits.grants: {answer}"
    );
}

/// The grant `grant_id` among `v["grants"]`, if listed.
fn listed<'a>(v: &'a Value, grant_id: &str) -> Option<&'a Value> {
    v["grants"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["grantId"] == grant_id))
}

/// The grant ids of `v["grants"]`, in the answer's order.
#[track_caller]
fn grant_ids(v: &Value) -> Vec<String> {
    arr(&v["grants"])
        .iter()
        .map(|g| id_of(g, "grantId"))
        .collect()
}

/// (available, held) of `pack_id` in a per-pack summary (`credits.packs` or usage `credits`),
/// summed over its items; (0, 0) when the pack is not listed.
#[track_caller]
fn pack_balance(packs: &Value, pack_id: &str) -> (i64, i64) {
    arr(packs)
        .iter()
        .filter(|p| p["packId"] == pack_id)
        .fold((0, 0), |(a, h), p| {
            (a + int(p, "available"), h + int(p, "held"))
        })
}

/// (remaining, held, available) of a grant JSON, with `available = remaining − held`.
#[track_caller]
fn balance(g: &Value) -> (i64, i64, i64) {
    let (r, h, a) = (int(g, "remaining"), int(g, "held"), int(g, "available"));
    assert_eq!(a, r - h, "available = remaining − held: {g}");
    (r, h, a)
}

/// Every field of a Grant (credits.md "Grant JSON").
#[track_caller]
fn assert_grant_shape(g: &Value) {
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
fn assert_entry_shape(e: &Value) {
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
fn assert_entry(
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
fn replay(entries: &[Value]) -> BTreeMap<String, (i64, i64)> {
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
fn of_type<'a>(entries: &'a [Value], kind: &str, grant_id: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["type"] == kind && e["grantId"] == grant_id)
        .collect()
}

/// The entry types, newest first.
fn types(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The story of issue 11

fn story_plans() -> Value {
    free_with_packs(
        json!([images_daily(10)]),
        json!([pack("pack50", "imgs", 50, Some(90), &["image.*"])]),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn story_plan_first_then_pack_refunds_idempotent_grants_spend_order_and_expiry() {
    let (_s, c) = TestServer::with_plans(story_plans()).await;
    let noon = c.advance_to_next_utc_hour(12).await;

    // A purchase: pack50 for u1, reference "order-1"; 90 days from the environment's now.
    let g1 = grant_one(&c, "u1", "pack50", "order-1").await;
    assert_grant_shape(&g1);
    let g1_id = id_of(&g1, "grantId");
    assert_eq!(g1["userId"], "u1", "{g1}");
    assert_eq!(
        (
            &g1["packId"],
            &g1["itemId"],
            &g1["unit"],
            &g1["source"],
            &g1["externalRef"],
            &g1["note"]
        ),
        (
            &json!("pack50"),
            &json!("imgs"),
            &json!("count"),
            &json!("purchase"),
            &json!("order-1"),
            &Value::Null
        ),
        "{g1}"
    );
    assert_eq!(
        (int(&g1, "quantity"), int(&g1, "priority")),
        (50, 0),
        "{g1}"
    );
    assert_eq!(balance(&g1), (50, 0, 50), "{g1}");
    assert_ts_near(
        &g1["expiresAt"],
        noon + 90 * DAY,
        30,
        "pack's expiresAfterDays from now",
    );
    assert_ts_near(&g1["createdAt"], noon, 30, "createdAt by the test clock");

    // 12 images: the first 10 from the plan, the 11th and 12th from the pack.
    for n in 1..=12 {
        let (id, a) = reserve_images(&c, "u1", 1).await;
        assert_eq!(a["planId"], "free");
        assert_counts(
            limit(&a, "images_daily"),
            10,
            (n - 1).min(10),
            i64::from(n <= 10),
        );
        if n <= 10 {
            assert_drawn(&a, &[]);
        } else {
            assert_drawn(&a, &[(&g1_id, 1)]);
        }
        let done = c.commit(&id, json!({})).await.ok();
        assert_eq!(int(&done, "quantity"), 1, "{done}");
        assert_eq!(int(&done, "overage"), 0, "{done}");
        assert_eq!(
            int(&done, "creditsUsed"),
            i64::from(n > 10),
            "image {n}: {done}"
        );
    }
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "images_daily"), 10, 10, 0);
    assert_eq!(
        pack_balance(&u["credits"], "pack50"),
        (48, 0),
        "usage credits: {u}"
    );
    let p = arr(&u["credits"]);
    assert_eq!(p.len(), 1, "{u}");
    assert_eq!(
        (&p[0]["itemId"], &p[0]["unit"]),
        (&json!("imgs"), &json!("count")),
        "{u}"
    );
    let cr = credits(&c, "u1").await;
    assert_eq!(grant_ids(&cr), vec![g1_id.clone()]);
    assert_eq!(balance(listed(&cr, &g1_id).unwrap()), (48, 0, 48), "{cr}");
    assert_eq!(pack_balance(&cr["packs"], "pack50"), (48, 0), "{cr}");

    // A reserve of 3 committed as 1: the pack holds 3, burns 3 and refunds 2.
    let (r3, a) = reserve_images(&c, "u1", 3).await;
    assert_drawn(&a, &[(&g1_id, 3)]);
    assert_counts(limit(&a, "images_daily"), 10, 10, 0);
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g1_id).unwrap()),
        (48, 3, 45),
        "held while pending: {cr}"
    );
    assert_eq!(pack_balance(&cr["packs"], "pack50"), (45, 3), "{cr}");
    let done = c.commit(&r3, json!({"quantity": 1})).await.ok();
    assert_eq!(int(&done, "creditsUsed"), 1, "{done}");
    assert_eq!(int(&done, "overage"), 0, "{done}");
    let event_id = id_of(&done, "eventId");
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack50"),
        (47, 0)
    );

    // The ledger tells every step, newest first, with the reservation of each.
    let entries = ledger(&c, "u1").await;
    assert_eq!(
        types(&entries),
        ["refund", "burn", "hold", "burn", "hold", "burn", "hold", "grant"],
        "{}",
        Value::Array(entries.clone())
    );
    assert_entry(&entries[0], "refund", &g1_id, 2, 47, 0);
    assert_entry(&entries[1], "burn", &g1_id, 3, 45, 0);
    assert_entry(&entries[2], "hold", &g1_id, 3, 48, 3);
    for e in &entries[..3] {
        assert_eq!(
            e["reservationId"],
            r3.as_str(),
            "each step names its reservation: {e}"
        );
        assert_eq!(e["userId"], "u1", "whose request: {e}");
    }
    for e in &entries[..2] {
        assert!(
            e["eventId"].is_null() || e["eventId"] == event_id.as_str(),
            "a burn or refund names the commit's usage event, if any: {e}"
        );
    }
    assert_entry(&entries[3], "burn", &g1_id, 1, 48, 0);
    assert_entry(&entries[4], "hold", &g1_id, 1, 49, 1);
    assert_eq!(entries[3]["reservationId"], entries[4]["reservationId"]);
    assert_entry(&entries[5], "burn", &g1_id, 1, 49, 0);
    assert_entry(&entries[6], "hold", &g1_id, 1, 50, 1);
    assert_ne!(entries[4]["reservationId"], entries[6]["reservationId"]);
    assert_entry(&entries[7], "grant", &g1_id, 50, 50, 0);
    assert_eq!(entries[7]["externalRef"], "order-1", "{}", entries[7]);
    assert_eq!(entries[7]["reservationId"], Value::Null);
    assert_eq!(replay(&entries)[&g1_id], (47, 0));

    // The purchase webhook is retried: nothing is granted again.
    let again = grant(
        &c,
        json!({"userId": "u1", "packId": "pack50", "externalRef": "order-1"}),
    )
    .await
    .ok();
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(
        grant_ids(&again),
        vec![g1_id.clone()],
        "the first grants: {again}"
    );
    let cr = credits(&c, "u1").await;
    assert_eq!(grant_ids(&cr), vec![g1_id.clone()]);
    assert_eq!(
        pack_balance(&cr["packs"], "pack50"),
        (47, 0),
        "balance unchanged: {cr}"
    );
    let entries = ledger(&c, "u1").await;
    assert_eq!(entries.len(), 8, "the retry wrote nothing");
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["type"] == "grant" && e["externalRef"] == "order-1")
            .count(),
        1
    );

    // A grant expiring tomorrow is spent before one expiring next month, though made later.
    let now = c.now().await;
    let tomorrow = now + DAY;
    let month = grant(
        &c,
        json!({"userId": "u1", "packId": "pack50", "externalRef": "order-2",
               "expiresAt": fmt_ts(now + 30 * DAY), "source": "grant", "note": "promo"}),
    )
    .await
    .ok();
    let g_month = arr(&month["grants"])[0].clone();
    let g_month_id = id_of(&g_month, "grantId");
    assert_ts(&g_month["expiresAt"], now + 30 * DAY, "expiresAt as given");
    assert_eq!(
        (&g_month["source"], &g_month["note"]),
        (&json!("grant"), &json!("promo"))
    );
    let soon = grant(
        &c,
        json!({"userId": "u1", "packId": "pack50", "externalRef": "order-3",
               "expiresAt": fmt_ts(tomorrow)}),
    )
    .await
    .ok();
    let g_soon_id = id_of(&arr(&soon["grants"])[0], "grantId");
    assert_ts(
        &arr(&soon["grants"])[0]["expiresAt"],
        tomorrow,
        "expiresAt as given",
    );
    let cr = credits(&c, "u1").await;
    assert_eq!(
        grant_ids(&cr),
        vec![g_soon_id.clone(), g_month_id.clone(), g1_id.clone()],
        "soonest expiry first: {cr}"
    );
    let (r, a) = reserve_images(&c, "u1", 1).await;
    assert_drawn(&a, &[(&g_soon_id, 1)]);
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 1);
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g_soon_id).unwrap()),
        (49, 0, 49),
        "{cr}"
    );
    assert_eq!(
        balance(listed(&cr, &g_month_id).unwrap()),
        (50, 0, 50),
        "{cr}"
    );
    assert_eq!(balance(listed(&cr, &g1_id).unwrap()), (47, 0, 47), "{cr}");
    assert_eq!(pack_balance(&cr["packs"], "pack50"), (146, 0), "{cr}");

    // Past tomorrow's expiry (test clock) that grant is gone from the balance at once, and the
    // ledger gets an `expire` entry for what was left (lazily or by the sweeper).
    c.advance_to(tomorrow + MINUTE).await;
    let cr = credits(&c, "u1").await;
    assert!(
        listed(&cr, &g_soon_id).is_none(),
        "an expired grant is not listed: {cr}"
    );
    assert_eq!(
        grant_ids(&cr),
        vec![g_month_id.clone(), g1_id.clone()],
        "{cr}"
    );
    assert_eq!(
        pack_balance(&cr["packs"], "pack50"),
        (97, 0),
        "available drops by 49: {cr}"
    );
    let u = c.usage("u1").await.ok();
    assert_eq!(pack_balance(&u["credits"], "pack50"), (97, 0), "{u}");
    let entries = ledger_until(&c, "u1", "the expire entry", |es| {
        !of_type(es, "expire", &g_soon_id).is_empty()
    })
    .await;
    let expired = of_type(&entries, "expire", &g_soon_id);
    assert_eq!(expired.len(), 1, "expired once");
    assert_entry(expired[0], "expire", &g_soon_id, 49, 0, 0);
    let balances = replay(&entries);
    assert_eq!(balances[&g_soon_id], (0, 0));
    assert_eq!(balances[&g_month_id], (50, 0));
    assert_eq!(balances[&g1_id], (47, 0));

    // The new day's quota comes first again; an expired grant is never spent.
    let (r, a) = reserve_images(&c, "u1", 10).await;
    assert_drawn(&a, &[]);
    c.commit(&r, json!({})).await.ok();
    let (_, a) = reserve_images(&c, "u1", 2).await;
    assert_drawn(&a, &[(&g_month_id, 2)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn story_rollover_of_unused_quota_is_a_grant_in_the_next_window() {
    let mut limit = images_daily(10);
    limit["rollover"] = json!({"maxQuantity": 5});
    let (_s, c) = TestServer::with_plans(free_with_packs(json!([limit]), json!([]))).await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let day = noon.div_euclid(DAY) * DAY;

    // Today: u1 uses 7 of 10 (3 unused), u2 uses 2 (8 unused, capped at 5), u3 nothing.
    let (r, _) = reserve_images(&c, "u1", 7).await;
    c.commit(&r, json!({})).await.ok();
    c.track_q("u2", "image.render", 2).await;
    assert_eq!(arr(&credits(&c, "u1").await["grants"]).len(), 0);

    // Tomorrow at 01:00: the next write (or the sweeper) makes the rollover grant.
    c.advance_to(day + DAY + HOUR).await;
    let (r, a) = reserve_images(&c, "u1", 1).await;
    assert_drawn(&a, &[]);
    c.commit(&r, json!({})).await.ok();
    let cr = credits_until(&c, "u1", "the rollover grant", |v| {
        arr(&v["grants"]).iter().any(|g| g["source"] == "rollover")
    })
    .await;
    let grants = arr(&cr["grants"]);
    assert_eq!(grants.len(), 1, "one rollover grant: {cr}");
    let g = &grants[0];
    let g_id = id_of(g, "grantId");
    assert_eq!(g["userId"], "u1", "{g}");
    assert_eq!(
        (&g["packId"], &g["itemId"], &g["source"]),
        (&Value::Null, &json!("images_daily"), &json!("rollover")),
        "{g}"
    );
    assert_eq!(int(g, "quantity"), 3, "the 3 unused units: {g}");
    assert_eq!(balance(g), (3, 0, 3), "{g}");
    assert_ts(
        &g["expiresAt"],
        day + 2 * DAY,
        "expires at the end of the next window",
    );
    let entries = ledger(&c, "u1").await;
    assert_eq!(
        types(&entries),
        ["rollover"],
        "a rollover grant's first entry: {}",
        Value::Array(entries.clone())
    );
    assert_entry(&entries[0], "rollover", &g_id, 3, 3, 0);

    // u2's unused 8 roll over as 5 (maxQuantity); u3 used nothing and gets nothing.
    c.track_q("u2", "image.render", 1).await;
    let cr2 = credits_until(&c, "u2", "u2's rollover grant", |v| {
        !arr(&v["grants"]).is_empty()
    })
    .await;
    let g2 = &arr(&cr2["grants"])[0];
    assert_eq!(
        (g2["source"].as_str(), int(g2, "quantity")),
        (Some("rollover"), 5),
        "{cr2}"
    );
    c.track_q("u3", "image.render", 1).await;
    assert_eq!(
        arr(&credits(&c, "u3").await["grants"]).len(),
        0,
        "no counter, no rollover"
    );

    // The rollover pays for what today's quota does not cover, like any credit.
    let (r, a) = reserve_images(&c, "u1", 9).await;
    assert_drawn(&a, &[]);
    c.commit(&r, json!({})).await.ok();
    let (r, a) = reserve_images(&c, "u1", 2).await;
    assert_drawn(&a, &[(&g_id, 2)]);
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 2);
    let entries = ledger(&c, "u1").await;
    assert_eq!(replay(&entries)[&g_id], (1, 0));

    // At the end of the next window it expires.
    c.advance_to(day + 2 * DAY + HOUR).await;
    let cr = credits(&c, "u1").await;
    assert!(
        listed(&cr, &g_id).is_none(),
        "the rollover grant expired: {cr}"
    );
    ledger_until(&c, "u1", "the rollover's expire entry", |es| {
        of_type(es, "expire", &g_id).len() == 1
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Races

/// Polls `user`'s credits until `stop`, asserting every grant's balance holds together.
fn monitor(
    c: &Client,
    user: &'static str,
    total: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let c = c.tolerating_overload();
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(SeqCst) {
            let r = c.get(&format!("/v1/users/{user}/credits")).await;
            if r.status == 200 {
                for g in arr(&r.body["grants"]) {
                    let (remaining, held, _) = balance(&g);
                    assert!(
                        held <= remaining && remaining <= total,
                        "a balance out of bounds mid-race: {g}"
                    );
                }
                samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    })
}

/// 64 clients each reserve 1 unit for `user` again and again (committing each at once when
/// `commit` is set) until denied; returns the admitted reservation ids.
async fn race(
    c: &Client,
    user: &'static str,
    grant_id: &str,
    commit: bool,
    denied: &'static str,
) -> Vec<String> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let c = c.clone();
            let grant_id = grant_id.to_string();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let a = post_retrying(
                        &c,
                        "/v1/reserve",
                        json!({"userId": user, "event": "image.render", "ttlSeconds": 3600}),
                    )
                    .await;
                    if a["allowed"] != true {
                        assert_eq!(strs(&a["reasons"]), vec![denied], "{a}");
                        assert_eq!(held(&a), 0, "a denial holds nothing: {a}");
                        return ids;
                    }
                    assert_drawn(&a, &[(&grant_id, 1)]);
                    let id = id_of(&a, "reservationId");
                    if commit {
                        let path = format!("/v1/reservations/{id}/commit");
                        let done = post_retrying(&c, &path, json!({})).await;
                        assert_eq!(int(&done, "creditsUsed"), 1, "{done}");
                    }
                    ids.push(id);
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in futures::future::join_all(tasks).await {
        ids.extend(t.expect("client task"));
    }
    ids
}

/// After a race over a 10-unit grant, all committed: the balance is 0 and the ledger is one
/// grant, 10 holds and 10 burns, one of each per admitted reservation.
async fn assert_all_ten_burned(c: &Client, user: &str, grant_id: &str, ids: &[String]) {
    let cr = credits(c, user).await;
    assert!(
        listed(&cr, grant_id).is_none(),
        "nothing remains, not listed: {cr}"
    );
    assert_eq!(pack_balance(&cr["packs"], "pack10"), (0, 0), "{cr}");
    let entries = ledger(c, user).await;
    assert_eq!(entries.len(), 21, "{}", Value::Array(entries.clone()));
    assert_eq!(replay(&entries)[grant_id], (0, 0));
    let admitted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    for kind in ["hold", "burn"] {
        let of_kind = of_type(&entries, kind, grant_id);
        assert_eq!(of_kind.len(), 10, "10 {kind} entries");
        assert!(of_kind.iter().all(|e| int(e, "quantity") == 1));
        let rsvs: HashSet<&str> = of_kind
            .iter()
            .map(|e| e["reservationId"].as_str().expect("reservationId"))
            .collect();
        assert_eq!(rsvs, admitted, "one {kind} per admitted reservation");
    }
    let granted: i64 = of_type(&entries, "grant", grant_id)
        .iter()
        .map(|e| int(e, "quantity"))
        .sum();
    let burned: i64 = of_type(&entries, "burn", grant_id)
        .iter()
        .map(|e| int(e, "quantity"))
        .sum();
    assert_eq!((granted, burned), (10, 10), "the ledger sums agree");
}

#[tokio::test(flavor = "multi_thread")]
async fn race_64_clients_over_the_last_10_credits_admit_exactly_10() {
    let (_s, c) = TestServer::with_plans(free_with_packs(
        json!([{"id": "images", "quota": 5, "window": lifetime(), "match": [{"event": "image.*"}]}]),
        json!([pack10()]),
    ))
    .await;
    let c = c.tolerating_overload();
    c.track_q("u1", "image.render", 5).await;
    let g = id_of(
        &grant_one(&c, "u1", "pack10", "order-race").await,
        "grantId",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(&c, "u1", 10, stop.clone());

    let ids = race(&c, "u1", &g, false, "limit_reached").await;
    assert_eq!(ids.len(), 10, "exactly the 10 credits are admitted");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        10,
        "unique reservations"
    );
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g).unwrap()),
        (10, 10, 0),
        "all held: {cr}"
    );
    assert_counts(&c.limit_state("u1", "images").await, 5, 5, 0);

    let commits: Vec<_> = ids
        .iter()
        .map(|id| {
            let c = c.clone();
            let path = format!("/v1/reservations/{id}/commit");
            tokio::spawn(async move { post_retrying(&c, &path, json!({})).await })
        })
        .collect();
    for done in futures::future::join_all(commits).await {
        let done = done.expect("commit task");
        assert_eq!(
            (done["status"].as_str(), int(&done, "creditsUsed")),
            (Some("committed"), 1),
            "{done}"
        );
    }
    stop.store(true, SeqCst);
    assert!(
        mon.await.expect("monitor") > 0,
        "the monitor took no sample"
    );
    assert_all_ten_burned(&c, "u1", &g, &ids).await;
    assert_counts(&c.limit_state("u1", "images").await, 5, 5, 0);
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn race_64_clients_reserving_and_committing_without_a_plan_burn_exactly_10() {
    let (_s, c) = TestServer::with_plans(no_plan_with_packs(json!([pack10()]))).await;
    let c = c.tolerating_overload();
    let g = id_of(
        &grant_one(&c, "u1", "pack10", "order-race").await,
        "grantId",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(&c, "u1", 10, stop.clone());

    let ids = race(&c, "u1", &g, true, "no_subscription").await;
    stop.store(true, SeqCst);
    assert!(
        mon.await.expect("monitor") > 0,
        "the monitor took no sample"
    );
    assert_eq!(ids.len(), 10, "exactly the 10 credits are admitted");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        10,
        "unique reservations"
    );
    assert_all_ten_burned(&c, "u1", &g, &ids).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Release and expiry return the hold

#[tokio::test(flavor = "multi_thread")]
async fn release_and_reservation_expiry_return_the_hold() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(2)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    c.track_q("u1", "image.render", 2).await;
    let g = id_of(&grant_one(&c, "u1", "pack10", "o-1").await, "grantId");

    // Release.
    let (r, a) = reserve_images(&c, "u1", 2).await;
    assert_drawn(&a, &[(&g, 2)]);
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (8, 2)
    );
    let rel = c
        .release(&r, json!({"reason": "provider_error"}))
        .await
        .ok();
    assert_eq!(rel["status"], "released", "{rel}");
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g).unwrap()),
        (10, 0, 10),
        "available restored: {cr}"
    );
    let entries = ledger(&c, "u1").await;
    assert_eq!(types(&entries), ["release", "hold", "grant"]);
    assert_entry(&entries[0], "release", &g, 2, 10, 0);
    assert_entry(&entries[1], "hold", &g, 2, 10, 2);
    assert_eq!(entries[0]["reservationId"], r.as_str());
    assert_eq!(entries[1]["reservationId"], r.as_str());

    // Expiry: past its TTL the hold counts for nothing at once, sweeper or not.
    let a = c
        .reserve(json!({"userId": "u1", "event": "image.render", "quantity": 3, "ttlSeconds": 1}))
        .await
        .ok();
    let expiring = Client::must_allow(&a);
    assert_drawn(&a, &[(&g, 3)]);
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (7, 3)
    );
    c.advance_clock(5).await;
    assert_eq!(c.get_reservation(&expiring).await.ok()["status"], "expired");
    // A balance is its ledger: the hold shows until the expiry's `release` entry is written
    // (by the sweeper, or by the user's next write) ...
    let cr = credits_until(&c, "u1", "the expired hold back", |cr| {
        listed(cr, &g).is_some_and(|l| balance(l) == (10, 0, 10))
    })
    .await;
    assert_eq!(pack_balance(&cr["packs"], "pack10"), (10, 0), "{cr}");
    // ... while a decision counts it as returned at once, swept or not.
    let chk = c
        .check(json!({"userId": "u1", "event": "image.render", "quantity": 10}))
        .await
        .ok();
    assert_eq!(chk["allowed"], true, "{chk}");
    assert_drawn(&chk, &[(&g, 10)]);
    let (all, a) = reserve_images(&c, "u1", 10).await;
    assert_drawn(&a, &[(&g, 10)]);
    let entries = ledger_until(&c, "u1", "the expired reservation's release", |es| {
        es.iter()
            .any(|e| e["type"] == "release" && e["reservationId"] == expiring.as_str())
    })
    .await;
    let back = entries
        .iter()
        .find(|e| e["type"] == "release" && e["reservationId"] == expiring.as_str())
        .unwrap();
    assert_eq!(int(back, "quantity"), 3, "{back}");
    assert!(
        back["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("expir"),
        "the reason says it expired: {back}"
    );
    assert_eq!(replay(&entries)[&g], (10, 10));
    c.release(&all, json!({})).await.ok();
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (10, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_that_expires_while_held_expires_its_held_part_after_the_release() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(2)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    c.track_q("u2", "image.render", 2).await;
    let now = c.now().await;
    let a = grant(
        &c,
        json!({"userId": "u2", "packId": "pack10", "expiresAt": fmt_ts(now + 10 * MINUTE)}),
    )
    .await
    .ok();
    let g = id_of(&arr(&a["grants"])[0], "grantId");
    assert_eq!(a["grants"][0]["externalRef"], Value::Null, "{a}");
    let r = Client::must_allow(
        &c.reserve(
            json!({"userId": "u2", "event": "image.render", "quantity": 4, "ttlSeconds": 3600}),
        )
        .await
        .ok(),
    );

    c.advance_clock(20 * MINUTE).await;
    let cr = credits(&c, "u2").await;
    assert!(listed(&cr, &g).is_none(), "expired, not listed: {cr}");
    assert_eq!(
        pack_balance(&cr["packs"], "pack10").0,
        0,
        "nothing available: {cr}"
    );
    let entries = ledger_until(&c, "u2", "the expire entry", |es| {
        !of_type(es, "expire", &g).is_empty()
    })
    .await;
    assert_eq!(
        types(&entries),
        ["expire", "hold", "grant"],
        "{}",
        Value::Array(entries.clone())
    );
    assert_entry(&entries[0], "expire", &g, 6, 4, 4);

    // The held part returns on release and expires right after it.
    c.release(&r, json!({})).await.ok();
    let entries = ledger_until(&c, "u2", "the held part's expiry", |es| {
        of_type(es, "expire", &g).len() == 2
    })
    .await;
    assert_eq!(
        types(&entries),
        ["expire", "release", "expire", "hold", "grant"]
    );
    assert_entry(&entries[0], "expire", &g, 4, 0, 0);
    assert_entry(&entries[1], "release", &g, 4, 4, 0);
    assert_eq!(replay(&entries)[&g], (0, 0));
    assert_eq!(c.reserve_q("u2", "image.render", 1).await["allowed"], false);
}

// ---------------------------------------------------------------------------------------------
// 4. Revoke

#[tokio::test(flavor = "multi_thread")]
async fn revoke_by_grant_and_by_reference_removes_what_is_not_held() {
    let bundle = json!({"id": "bundle", "items": [
        {"id": "imgs", "quantity": 10, "match": [{"event": "image.*"}]},
        {"id": "texts", "quantity": 20, "match": [{"event": "text.*"}]}
    ]});
    let (s, c) = TestServer::with_plans(no_plan_with_packs(json!([pack10(), bundle]))).await;
    let g_a = id_of(&grant_one(&c, "u1", "pack10", "order-a").await, "grantId");
    // A second later, so the two grants' createdAt (the spend order's last key) differ.
    c.advance_clock(1).await;
    let b = grant(
        &c,
        json!({"userId": "u1", "packId": "bundle", "externalRef": "order-b"}),
    )
    .await
    .ok();
    let bundle_grants = arr(&b["grants"]);
    assert_eq!(bundle_grants.len(), 2, "one grant per item: {b}");
    let mut b_ids: Vec<(String, i64)> = bundle_grants
        .iter()
        .map(|g| (id_of(g, "grantId"), int(g, "quantity")))
        .collect();
    b_ids.sort();
    assert_eq!(b_ids.iter().map(|(_, q)| *q).sum::<i64>(), 30, "{b}");

    // 3 of g_a held (oldest of equal priority and expiry goes first), then g_a is revoked.
    let (r, a) = reserve_images(&c, "u1", 3).await;
    assert_eq!(a["planId"], Value::Null, "{a}");
    assert_drawn(&a, &[(&g_a, 3)]);
    let rv = revoke(&c, json!({"grantId": g_a, "reason": "chargeback"}))
        .await
        .ok();
    assert_eq!(
        rv["revoked"],
        json!([{"grantId": g_a, "quantity": 7}]),
        "what remained unheld"
    );
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g_a).unwrap()),
        (3, 3, 0),
        "the hold survives: {cr}"
    );
    let entries = ledger(&c, "u1").await;
    assert_entry(&entries[0], "revoke", &g_a, 7, 3, 3);
    // The held units are still spent by their commit; nothing else comes from g_a.
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 3);
    let (_, a) = reserve_images(&c, "u1", 1).await;
    assert_drawn(&a, &[(&b_ids.iter().find(|(_, q)| *q == 10).unwrap().0, 1)]);

    // By reference: every grant made with it; the held unit stays.
    let rv = revoke(&c, json!({"externalRef": "order-b"})).await.ok();
    let mut got: Vec<(String, i64)> = arr(&rv["revoked"])
        .iter()
        .map(|x| (id_of(x, "grantId"), int(x, "quantity")))
        .collect();
    got.sort();
    let want: Vec<(String, i64)> = b_ids
        .iter()
        .map(|(id, q)| (id.clone(), if *q == 10 { 9 } else { 20 }))
        .collect();
    assert_eq!(got, want, "{rv}");
    let cr = credits(&c, "u1").await;
    assert_eq!(pack_balance(&cr["packs"], "bundle").0, 0, "{cr}");
    let entries = ledger(&c, "u1").await;
    replay(&entries);
    let revokes: Vec<&Value> = entries.iter().filter(|e| e["type"] == "revoke").collect();
    assert_eq!(revokes.len(), 3, "{}", Value::Array(entries.clone()));
    // Nothing left to revoke: 200 with 0.
    let rv = revoke(&c, json!({"grantId": g_a})).await.ok();
    assert_eq!(
        rv["revoked"],
        json!([{"grantId": g_a, "quantity": 0}]),
        "{rv}"
    );

    // Unknown: 404. Both or neither: 400.
    revoke(&c, json!({"grantId": "grt_unknown"}))
        .await
        .err(404, "not_found");
    revoke(&c, json!({"externalRef": "no-such-order"}))
        .await
        .err(404, "not_found");
    revoke(&c, json!({"grantId": g_a, "externalRef": "order-a"}))
        .await
        .err(400, "invalid_request");
    revoke(&c, json!({})).await.err(400, "invalid_request");
    revoke(&c, json!({"reason": "x"}))
        .await
        .err(400, "invalid_request");
    revoke(&c, json!({"grantId": g_a, "reason": "r".repeat(501)}))
        .await
        .invalid("reason");
    revoke(&c, json!({"grantId": g_a, "reason": "r".repeat(500)}))
        .await
        .ok();
    revoke(&c, json!({"grantId": g_a, "reasn": "x"}))
        .await
        .invalid("reasn");
    s.publishable()
        .post("/v1/credits/revoke", json!({"grantId": g_a}))
        .await
        .err(403, "requires_secret_key");
}

// ---------------------------------------------------------------------------------------------
// 5. No plan, concurrency and soft limits

#[tokio::test(flavor = "multi_thread")]
async fn without_a_plan_credits_alone_pay_and_without_credits_it_is_no_subscription() {
    let (_s, c) = TestServer::with_plans(no_plan_with_packs(json!([pack10()]))).await;
    let g = id_of(&grant_one(&c, "rich", "pack10", "o-rich").await, "grantId");

    let (r, a) = reserve_images(&c, "rich", 4).await;
    assert_eq!(a["planId"], Value::Null, "no plan: {a}");
    assert_eq!(a["limits"], json!([]), "{a}");
    assert_drawn(&a, &[(&g, 4)]);
    let done = c.commit(&r, json!({})).await.ok();
    assert_eq!(int(&done, "creditsUsed"), 4, "{done}");

    let d = c.reserve_q("poor", "image.render", 1).await;
    assert_eq!(
        (d["allowed"].clone(), d["reservationId"].clone()),
        (json!(false), Value::Null),
        "{d}"
    );
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"], "{d}");
    assert_eq!(held(&d), 0, "{d}");

    // More than is left, or an event no credit matches: no_subscription, nothing held.
    let d = c.reserve_q("rich", "image.render", 7).await;
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"], "{d}");
    assert_eq!(held(&d), 0, "{d}");
    let d = c.reserve_q("rich", "text.write", 1).await;
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"], "{d}");

    // check answers what a reserve would hold, and holds nothing.
    let chk = c
        .check(json!({"userId": "rich", "event": "image.render", "quantity": 6}))
        .await
        .ok();
    assert_eq!(chk["allowed"], true, "{chk}");
    assert_drawn(&chk, &[(&g, 6)]);
    let cr = credits(&c, "rich").await;
    assert_eq!(
        balance(listed(&cr, &g).unwrap()),
        (6, 0, 6),
        "check wrote nothing: {cr}"
    );
    assert_eq!(ledger(&c, "rich").await.len(), 3, "grant, hold, burn");
    let t = c.track_q("rich", "image.render", 2).await;
    assert_eq!(
        (t["recorded"].clone(), int(&t, "creditsUsed")),
        (json!(true), 2),
        "{t}"
    );
    assert_eq!(
        pack_balance(&credits(&c, "rich").await["packs"], "pack10"),
        (4, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_denial_is_never_funded_by_credits() {
    let (_s, c) = TestServer::with_plans(free_with_packs(
        json!([
            images_daily(3),
            {"id": "inflight", "kind": "concurrency", "quota": 1, "window": lifetime(),
             "match": [{"event": "image.*"}]}
        ]),
        json!([pack10()]),
    ))
    .await;
    c.advance_to_next_utc_hour(12).await;
    let g1 = id_of(&grant_one(&c, "u1", "pack10", "o-1").await, "grantId");
    let g2 = id_of(&grant_one(&c, "u2", "pack10", "o-2").await, "grantId");

    // u1: quota used; the concurrency limit admits, so credits pay for the image.
    c.track_q("u1", "image.render", 3).await;
    let (r, a) = reserve_images(&c, "u1", 1).await;
    assert_drawn(&a, &[(&g1, 1)]);
    assert_eq!(int(limit(&a, "inflight"), "reserved"), 1, "{a}");
    // A second one in flight is refused by concurrency; credits do not help.
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(d["allowed"], false, "{d}");
    assert!(
        strs(&d["reasons"]).contains(&"concurrency_limit_reached".to_string()),
        "{d}"
    );
    assert!(
        strs(&d["deniedBy"]).contains(&"inflight".to_string()),
        "{d}"
    );
    assert_eq!(held(&d), 0, "{d}");
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g1).unwrap()),
        (10, 1, 9),
        "only the first hold: {cr}"
    );
    c.commit(&r, json!({})).await.ok();

    // u2: quota left, one in flight: the second is refused and draws nothing.
    let (r2, a) = reserve_images(&c, "u2", 1).await;
    assert_drawn(&a, &[]);
    let d = c.reserve_q("u2", "image.render", 1).await;
    assert_denied(&d, "free", &["concurrency_limit_reached"], &["inflight"]);
    assert_eq!(held(&d), 0, "{d}");
    let chk = c
        .check(json!({"userId": "u2", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(chk["allowed"], false, "{chk}");
    assert_eq!(held(&chk), 0, "{chk}");
    c.release(&r2, json!({})).await.ok();
    assert_eq!(
        balance(listed(&credits(&c, "u2").await, &g2).unwrap()),
        (10, 0, 10)
    );
    assert_eq!(types(&ledger(&c, "u2").await), ["grant"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_limit_never_draws_credits_and_counts_only_the_plan_share() {
    let both = pack("pack10", "imgs", 10, None, &["image.*", "text.*"]);
    let (_s, c) = TestServer::with_plans(free_with_packs(
        json!([
            {"id": "images_hard", "quota": 5, "window": daily(), "match": [{"event": "image.*"}]},
            {"id": "images_soft", "quota": 2, "enforcement": "soft", "window": daily(),
             "match": [{"event": "image.*"}]},
            {"id": "texts_soft", "quota": 1, "enforcement": "soft", "window": daily(),
             "match": [{"event": "text.*"}]}
        ]),
        json!([both]),
    ))
    .await;
    c.advance_to_next_utc_hour(12).await;
    let g = id_of(&grant_one(&c, "u1", "pack10", "o-1").await, "grantId");

    // Past the soft quota but within the hard one: the plan pays, no credits.
    let (r, a) = reserve_images(&c, "u1", 5).await;
    assert_drawn(&a, &[]);
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 0);
    // Only a soft limit matches: the plan pays all of it.
    let a = c.reserve_q("u1", "text.write", 3).await;
    let rt = Client::must_allow(&a);
    assert_drawn(&a, &[]);
    assert_eq!(int(&c.commit(&rt, json!({})).await.ok(), "creditsUsed"), 0);
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (10, 0)
    );

    // The hard quota is used: credits pay, and the soft limit counts only the plan's share (0).
    let (r, a) = reserve_images(&c, "u1", 2).await;
    assert_drawn(&a, &[(&g, 2)]);
    assert_counts(limit(&a, "images_soft"), 2, 5, 0);
    let done = c.commit(&r, json!({})).await.ok();
    assert_eq!(int(&done, "creditsUsed"), 2, "{done}");
    assert_counts(&c.limit_state("u1", "images_soft").await, 2, 5, 0);
    assert_counts(&c.limit_state("u1", "images_hard").await, 5, 5, 0);
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (8, 0)
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Input errors and the ledger's pages

#[tokio::test(flavor = "multi_thread")]
async fn grant_and_ledger_inputs_are_checked_at_their_limits() {
    let huge = pack("huge", "units", 1 << 50, None, &["image.*"]);
    let (s, c) = TestServer::with_plans(free_with_packs(
        json!([images_daily(10)]),
        json!([pack10(), huge]),
    ))
    .await;
    let ok = |edit: fn(&mut Value)| {
        let mut body = json!({"userId": "u1", "packId": "pack10"});
        edit(&mut body);
        body
    };

    grant(&c, ok(|b| b["packId"] = json!("nope")))
        .await
        .err(404, "not_found");
    grant(&c, ok(|b| b["quantity"] = json!(0)))
        .await
        .invalid("quantity");
    grant(&c, ok(|b| b["quantity"] = json!(10_001)))
        .await
        .invalid("quantity");
    let a = grant(&c, ok(|b| b["quantity"] = json!(10_000))).await.ok();
    assert_eq!(
        int(&a["grants"][0], "quantity"),
        100_000,
        "item quantity × packs: {a}"
    );
    // item.quantity × packs past 2^53 − 1.
    grant(&c, json!({"userId": "u1", "packId": "huge", "quantity": 8}))
        .await
        .invalid("quantity");
    let a = grant(&c, json!({"userId": "u1", "packId": "huge", "quantity": 7}))
        .await
        .ok();
    assert_eq!(int(&a["grants"][0], "quantity"), 7 << 50, "{a}");

    grant(&c, ok(|b| b["externalRef"] = json!("r".repeat(257))))
        .await
        .invalid("externalRef");
    grant(&c, ok(|b| b["externalRef"] = json!("")))
        .await
        .invalid("externalRef");
    grant(&c, ok(|b| b["externalRef"] = json!("a\nb")))
        .await
        .invalid("externalRef");
    grant(&c, ok(|b| b["externalRef"] = json!("r".repeat(256))))
        .await
        .ok();
    grant(&c, ok(|b| b["quantiy"] = json!(2)))
        .await
        .invalid("quantiy");
    grant(&c, ok(|b| b["expiresAt"] = json!("2020-01-01T00:00:00Z")))
        .await
        .invalid("expiresAt");
    grant(&c, ok(|b| b["expiresAt"] = json!("tomorrow")))
        .await
        .invalid("expiresAt");
    let a = grant(&c, ok(|b| b["expiresAt"] = Value::Null)).await.ok();
    assert_eq!(a["grants"][0]["expiresAt"], Value::Null, "null: never: {a}");
    grant(&c, ok(|b| b["source"] = json!("rollover")))
        .await
        .invalid("source");
    grant(&c, ok(|b| b["source"] = json!("gift")))
        .await
        .invalid("source");
    for source in ["purchase", "grant", "refund", "manual"] {
        let a = grant(
            &c,
            json!({"userId": "u1", "packId": "pack10", "source": source}),
        )
        .await
        .ok();
        assert_eq!(a["grants"][0]["source"], source, "{a}");
    }
    grant(&c, ok(|b| b["note"] = json!("n".repeat(501))))
        .await
        .invalid("note");
    grant(&c, ok(|b| b["note"] = json!("n".repeat(500))))
        .await
        .ok();
    grant(&c, ok(|b| b["userId"] = json!("u".repeat(257))))
        .await
        .invalid("userId");
    grant(&c, json!({"packId": "pack10"}))
        .await
        .err(400, "invalid_request");
    grant(&c, ok(|b| b["accountId"] = json!("acme")))
        .await
        .err(400, "invalid_request");
    grant(&c, json!({"userId": "u1"}))
        .await
        .err(400, "invalid_request");

    // The same reference for another owner or another pack is a conflict.
    grant(
        &c,
        json!({"userId": "u1", "packId": "pack10", "externalRef": "order-x"}),
    )
    .await
    .ok();
    grant(
        &c,
        json!({"userId": "u2", "packId": "pack10", "externalRef": "order-x"}),
    )
    .await
    .err(409, "idempotency_conflict");
    grant(
        &c,
        json!({"userId": "u1", "packId": "huge", "externalRef": "order-x"}),
    )
    .await
    .err(409, "idempotency_conflict");
    s.publishable()
        .post(
            "/v1/credits/grants",
            json!({"userId": "u1", "packId": "pack10"}),
        )
        .await
        .err(403, "requires_secret_key");
    s.publishable()
        .get("/v1/users/u1/credits/ledger")
        .await
        .err(403, "requires_secret_key");

    // The ledger's limit and cursor.
    let base = "/v1/users/u1/credits/ledger";
    c.get(&format!("{base}?limit=0")).await.invalid("limit");
    c.get(&format!("{base}?limit=1001")).await.invalid("limit");
    c.get(&format!("{base}?limit=1000")).await.ok();
    c.get(&format!("{base}?cursor=nonsense"))
        .await
        .invalid("cursor");

    // Pages of 2 walk every entry exactly once, newest first.
    grant_one(&c, "u9", "pack10", "o-9").await;
    c.track_q("u9", "image.render", 10).await;
    for q in [3, 2] {
        let (r, _) = reserve_images(&c, "u9", q).await;
        c.commit(&r, json!({"quantity": 1})).await.ok();
    }
    let all = ledger(&c, "u9").await;
    assert_eq!(
        types(&all),
        ["refund", "burn", "hold", "refund", "burn", "hold", "grant"]
    );
    let full = c.get("/v1/users/u9/credits/ledger").await.ok();
    assert_eq!(
        arr(&full["entries"]),
        all,
        "default limit 100 holds them all"
    );
    let mut seen: Vec<Value> = Vec::new();
    let mut path = "/v1/users/u9/credits/ledger?limit=2".to_string();
    loop {
        let page = c.get(&path).await.ok();
        let entries = arr(&page["entries"]);
        assert!(entries.len() <= 2, "{page}");
        seen.extend(entries);
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/v1/users/u9/credits/ledger?limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(seen.len() <= all.len(), "pages run past the ledger");
    }
    assert_eq!(seen, all, "every entry once, newest first");
    let at: Vec<i64> = all.iter().map(|e| ts_ms(&e["at"])).collect();
    assert!(
        at.windows(2).all(|w| w[0] >= w[1]),
        "`at` never grows down the ledger: {at:?}"
    );
    assert_eq!(
        all.iter()
            .map(|e| id_of(e, "entryId"))
            .collect::<HashSet<_>>()
            .len(),
        all.len(),
        "entry ids are unique"
    );
    // A user with no credits has an empty ledger and empty balances.
    let none = c.get("/v1/users/nobody/credits/ledger").await.ok();
    assert_eq!(
        (none["entries"].clone(), none["nextCursor"].clone()),
        (json!([]), Value::Null)
    );
    let cr = credits(&c, "nobody").await;
    assert_eq!(
        (cr["grants"].clone(), cr["packs"].clone()),
        (json!([]), json!([])),
        "{cr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Account credits

#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_credits_are_spent_by_its_members() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(1)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    c.put("/v1/accounts/acme/members/u1", json!({})).await.ok();
    let a = grant(
        &c,
        json!({"accountId": "acme", "packId": "pack10", "externalRef": "acme-1"}),
    )
    .await
    .ok();
    let g = &arr(&a["grants"])[0];
    assert_grant_shape(g);
    assert_eq!(g["accountId"], "acme", "{g}");
    assert!(
        g.get("userId").is_none_or(Value::is_null),
        "an account's grant: {g}"
    );
    let g = id_of(g, "grantId");

    // A member spends them once the plan's quota is used; another user cannot.
    c.track_q("u1", "image.render", 1).await;
    let (r, a) = reserve_images(&c, "u1", 3).await;
    assert_drawn(&a, &[(&g, 3)]);
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 3);
    c.track_q("u2", "image.render", 1).await;
    let d = c.reserve_q("u2", "image.render", 1).await;
    assert_denied(&d, "free", &["limit_reached"], &["images_daily"]);
    assert_eq!(held(&d), 0, "{d}");

    let ac = account_credits(&c, "acme").await;
    assert_eq!(grant_ids(&ac), vec![g.clone()]);
    assert_eq!(balance(listed(&ac, &g).unwrap()), (7, 0, 7), "{ac}");
    assert_eq!(pack_balance(&ac["packs"], "pack10"), (7, 0), "{ac}");
    // The member sees the account's credits in their own balance and usage.
    let cr = credits(&c, "u1").await;
    assert_eq!(pack_balance(&cr["packs"], "pack10"), (7, 0), "{cr}");
    assert!(listed(&cr, &g).is_some(), "{cr}");
    let u = c.usage("u1").await.ok();
    assert_eq!(pack_balance(&u["credits"], "pack10"), (7, 0), "{u}");
    assert_eq!(
        pack_balance(&credits(&c, "u2").await["packs"], "pack10"),
        (0, 0)
    );

    // The account's ledger has every entry; the member's has those of their requests.
    let entries = ledger_at(&c, "/v1/accounts/acme/credits/ledger").await;
    assert_eq!(types(&entries), ["burn", "hold", "grant"]);
    assert_entry(&entries[0], "burn", &g, 3, 7, 0);
    assert_entry(&entries[1], "hold", &g, 3, 10, 3);
    assert_entry(&entries[2], "grant", &g, 10, 10, 0);
    assert_eq!(entries[1]["userId"], "u1", "whose request: {}", entries[1]);
    assert_eq!(entries[1]["reservationId"], r.as_str());
    assert_eq!(replay(&entries)[&g], (7, 0));
    let mine = ledger(&c, "u1").await;
    assert_eq!(
        types(&mine),
        ["burn", "hold"],
        "{}",
        Value::Array(mine.clone())
    );
    assert_eq!(ledger(&c, "u2").await, Vec::<Value>::new());

    // A member's own grant expiring sooner goes first, then the account's.
    let now = c.now().await;
    let own = grant(
        &c,
        json!({"userId": "u1", "packId": "pack10", "expiresAt": fmt_ts(now + DAY)}),
    )
    .await
    .ok();
    let own = id_of(&own["grants"][0], "grantId");
    let (_, a) = reserve_images(&c, "u1", 12).await;
    assert_drawn(&a, &[(&own, 10), (&g, 2)]);
    assert_eq!(
        pack_balance(&account_credits(&c, "acme").await["packs"], "pack10"),
        (5, 2)
    );
    c.get("/v1/accounts/acme/credits/ledger?limit=0")
        .await
        .invalid("limit");
}

// ---------------------------------------------------------------------------------------------
// 8. Track (and commits of more than reserved)

#[tokio::test(flavor = "multi_thread")]
async fn track_draws_credits_after_the_plan_and_enforce_denies_what_they_do_not_cover() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(5)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    let g = id_of(&grant_one(&c, "u1", "pack10", "o-1").await, "grantId");

    let t = c.track_q("u1", "image.render", 4).await;
    assert_eq!(int(&t, "creditsUsed"), 0, "{t}");
    // 3 with 1 unit of plan left: 1 from the plan, 2 from credits.
    let t = c.track_q("u1", "image.render", 3).await;
    assert_eq!(
        (t["recorded"].clone(), t["allowed"].clone()),
        (json!(true), json!(true)),
        "{t}"
    );
    assert_eq!((int(&t, "creditsUsed"), int(&t, "overage")), (2, 0), "{t}");
    assert_counts(limit(&t, "images_daily"), 5, 5, 0);
    let tracked = id_of(&t, "eventId");
    let entries = ledger(&c, "u1").await;
    assert_eq!(types(&entries), ["burn", "grant"]);
    assert_entry(&entries[0], "burn", &g, 2, 8, 0);
    assert_eq!(
        entries[0]["eventId"],
        tracked.as_str(),
        "a track's burn names its event"
    );
    assert_eq!(entries[0]["reservationId"], Value::Null);

    // Enforced and not covered by plan + credits: denied, nothing recorded.
    let d = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 9, "enforce": true}))
        .await
        .ok();
    assert_eq!(
        (
            d["allowed"].clone(),
            d["recorded"].clone(),
            d["eventId"].clone()
        ),
        (json!(false), json!(false), Value::Null),
        "{d}"
    );
    assert_eq!(strs(&d["reasons"]), vec!["limit_reached"], "{d}");
    assert_eq!(ledger(&c, "u1").await.len(), 2, "nothing written");
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (8, 0)
    );
    let t = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 8, "enforce": true}))
        .await
        .ok();
    assert_eq!(
        (
            t["allowed"].clone(),
            int(&t, "creditsUsed"),
            int(&t, "overage")
        ),
        (json!(true), 8, 0),
        "{t}"
    );
    // Not enforced with nothing left: recorded as overage, no credits.
    let t = c.track_q("u1", "image.render", 3).await;
    assert_eq!((int(&t, "creditsUsed"), int(&t, "overage")), (0, 3), "{t}");
    assert!(listed(&credits(&c, "u1").await, &g).is_none());

    let events = c.get("/v1/events?userId=u1&status=tracked").await.ok();
    // Events of the same millisecond may list in either order: compare them as a set.
    let mut got: Vec<(i64, i64)> = arr(&events["events"])
        .iter()
        .map(|e| (int(e, "quantity"), int(e, "creditsUsed")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [(3, 0), (3, 2), (4, 0), (8, 8)],
        "usage events carry creditsUsed: {events}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_of_more_than_reserved_takes_plan_room_then_credits_then_overage() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(5)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    let g = id_of(&grant_one(&c, "u2", "pack10", "o-2").await, "grantId");
    c.track_q("u2", "image.render", 3).await;

    // Held 1 from the plan, commit 5: 1 more fits the plan, 3 come from credits.
    let (r, a) = reserve_images(&c, "u2", 1).await;
    assert_drawn(&a, &[]);
    let done = c.commit(&r, json!({"quantity": 5})).await.ok();
    assert_eq!(
        (int(&done, "creditsUsed"), int(&done, "overage")),
        (3, 0),
        "{done}"
    );
    assert_counts(limit(&done, "images_daily"), 5, 5, 0);
    let e1 = id_of(&done, "eventId");

    // Held 1 from credits, commit 10: 1 held + 6 more from credits, 3 overage.
    let (r, a) = reserve_images(&c, "u2", 1).await;
    assert_drawn(&a, &[(&g, 1)]);
    let done = c.commit(&r, json!({"quantity": 10})).await.ok();
    assert_eq!(
        (int(&done, "creditsUsed"), int(&done, "overage")),
        (7, 3),
        "{done}"
    );
    assert_counts(limit(&done, "images_daily"), 5, 8, 0);
    let e2 = id_of(&done, "eventId");
    assert!(
        listed(&credits(&c, "u2").await, &g).is_none(),
        "all 10 spent"
    );

    let entries = ledger(&c, "u2").await;
    assert_eq!(replay(&entries)[&g], (0, 0));
    let burned_for = |rsv: &str| -> i64 {
        entries
            .iter()
            .filter(|e| e["type"] == "burn" && e["reservationId"] == rsv)
            .map(|e| int(e, "quantity"))
            .sum()
    };
    assert_eq!(burned_for(&r), 7, "{}", Value::Array(entries.clone()));
    assert_eq!(entries.iter().filter(|e| e["type"] == "refund").count(), 0);

    let events = c.get("/v1/events?userId=u2&status=committed").await.ok();
    let mut got: Vec<(String, i64)> = arr(&events["events"])
        .iter()
        .map(|e| (id_of(e, "eventId"), int(e, "creditsUsed")))
        .collect();
    got.sort();
    let mut want = vec![(e2, 7), (e1, 3)];
    want.sort();
    assert_eq!(got, want, "{events}");
}
