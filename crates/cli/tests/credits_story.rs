//! API.md §8 credits (issue 11), black-box over real HTTP, as stories: packs, grants idempotent
//! on `externalRef`, the append-only ledger, partial burns and refunds, grant expiry and rollover
//! by the test clock, a race of 64 clients over one user's last 10 credits, and release and
//! expiry of holds.
//!
//! Every test starts at noon UTC (test clock), so no calendar day turns over unless a test moves
//! the clock on purpose. The helpers live in `common/credits.rs`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::credits::*;
use common::*;

const CLIENTS: usize = 64;

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
