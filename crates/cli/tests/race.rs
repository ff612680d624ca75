//! Race acceptance criteria (PRODUCT.md: "atomically and race-safely"): many clients hitting one
//! user at once never get more than the quota, all-or-nothing holds stay all-or-nothing, and a
//! concurrency limit never has more in flight than its quota.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 64;

async fn reserve(c: &Client, user: &str, event: &str, quantity: u64, metadata: Value) -> Value {
    post_retrying(
        c,
        "/v1/reserve",
        json!({"userId": user, "event": event, "quantity": quantity, "metadata": metadata, "ttlSeconds": 3600}),
    )
    .await
}

/// Polls the usage endpoint until `stop`, asserting `check` on every sample of `limit_id`.
fn monitor(
    c: &Client,
    user: &'static str,
    limit_id: &'static str,
    stop: Arc<AtomicBool>,
    check: fn(&Value),
) -> tokio::task::JoinHandle<usize> {
    let c = c.tolerating_overload();
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(SeqCst) {
            let r = c.usage(user).await;
            if r.status == 200 {
                check(limit(&r.body, limit_id));
                samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_quota_admits_exactly_100_among_64_racing_clients() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "images", "quota": 100, "window": lifetime(), "match": [{"event": "image.*"}]}
    ])))
    .await;
    let c = c.tolerating_overload();
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(&c, "u1", "images", stop.clone(), |l| {
        let held = int(l, "used") + int(l, "reserved");
        assert!(
            held <= 100,
            "used + reserved over the hard quota mid-race: {l}"
        );
    });

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let a = reserve(&c, "u1", "image.render", 1, json!({})).await;
                    if a["allowed"] != true {
                        assert_eq!(strs(&a["reasons"]), vec!["limit_reached"], "{a}");
                        assert_eq!(a["reservationId"], Value::Null);
                        return ids;
                    }
                    let l = limit(&a, "images");
                    assert!(
                        int(l, "reserved") <= 100,
                        "an answer shows more than the quota held: {a}"
                    );
                    ids.push(a["reservationId"].as_str().expect("id").to_string());
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in futures::future::join_all(tasks).await {
        ids.extend(t.expect("client task"));
    }
    stop.store(true, SeqCst);
    assert!(
        mon.await.expect("monitor") > 0,
        "the monitor took no sample"
    );

    assert_eq!(ids.len(), 100, "exactly the quota is admitted");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        100,
        "reservation ids are unique"
    );
    assert_counts(&c.limit_state("u1", "images").await, 100, 0, 100);

    // Commit them all, concurrently: used lands exactly on the quota.
    let commits: Vec<_> = ids
        .iter()
        .map(|id| {
            let c = c.clone();
            let path = format!("/v1/reservations/{id}/commit");
            tokio::spawn(async move { post_retrying(&c, &path, json!({})).await })
        })
        .collect();
    for a in futures::future::join_all(commits).await {
        assert_eq!(a.expect("commit task")["status"], "committed");
    }
    assert_counts(&c.limit_state("u1", "images").await, 100, 100, 0);
    assert_eq!(
        reserve(&c, "u1", "image.render", 1, json!({})).await["allowed"],
        false
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_commits_and_releases_sum_exactly() {
    const QUOTA: i64 = 300;
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "images", "quota": QUOTA, "window": lifetime(), "match": [{"event": "image.*"}]}
    ])))
    .await;
    let c = c.tolerating_overload();
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(&c, "u1", "images", stop.clone(), |l| {
        // Commits never exceed what was reserved, so the hard quota is never overrun.
        assert!(
            int(l, "used") + int(l, "reserved") <= 300,
            "over quota mid-race: {l}"
        );
    });

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(n as u64 + 1);
                let (mut committed, mut admitted, mut denied) = (0i64, 0, 0);
                for _ in 0..8 {
                    let q = rng.range(1, 5);
                    let a = reserve(&c, "u1", "image.render", q, json!({})).await;
                    if a["allowed"] != true {
                        denied += 1;
                        continue;
                    }
                    admitted += 1;
                    let id = a["reservationId"].as_str().expect("id").to_string();
                    if rng.chance(60) {
                        let final_q = rng.range(0, q);
                        let path = format!("/v1/reservations/{id}/commit");
                        let ans = post_retrying(&c, &path, json!({"quantity": final_q})).await;
                        assert_eq!(ans["status"], "committed", "{ans}");
                        assert_eq!(
                            int(&ans, "overage"),
                            0,
                            "a final ≤ reserved has no overage: {ans}"
                        );
                        committed += int(&ans, "quantity");
                    } else {
                        let path = format!("/v1/reservations/{id}/release");
                        let ans = post_retrying(&c, &path, json!({})).await;
                        assert_eq!(ans["status"], "released", "{ans}");
                    }
                }
                (committed, admitted, denied)
            })
        })
        .collect();
    let (mut committed, mut admitted, mut denied) = (0, 0, 0);
    for t in futures::future::join_all(tasks).await {
        let (c, a, d) = t.expect("client task");
        committed += c;
        admitted += a;
        denied += d;
    }
    stop.store(true, SeqCst);
    mon.await.expect("monitor");

    assert!(admitted > 0, "nothing admitted");
    let l = c.limit_state("u1", "images").await;
    assert_counts(&l, QUOTA, committed, 0);
    assert!(committed <= QUOTA);
    eprintln!("mixed race: {admitted} admitted, {denied} denied, {committed} committed");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_limits_stay_all_or_nothing_under_races() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "total", "quota": 50, "window": lifetime(), "match": [{"event": "image.*"}]},
        {"id": "premium", "quota": 10, "window": lifetime(),
         "match": [{"event": "image.*", "metadata": {"model": "premium"}}]}
    ])))
    .await;
    let c = c.tolerating_overload();
    let stop = Arc::new(AtomicBool::new(false));
    let mon_total = monitor(&c, "u1", "total", stop.clone(), |l| {
        assert!(
            int(l, "used") + int(l, "reserved") <= 50,
            "total over quota: {l}"
        );
    });
    let mon_premium = monitor(&c, "u1", "premium", stop.clone(), |l| {
        assert!(
            int(l, "used") + int(l, "reserved") <= 10,
            "premium over quota: {l}"
        );
    });
    let premium = json!({"model": "premium"});
    let standard = json!({"model": "standard"});

    // Phase 1: 40 standard attempts in all (each must fit: total ≤ 40 + 10) and premium attempts
    // until premium is full. Exactly 10 premium and 40 standard get in, however they interleave.
    let std_budget = Arc::new(AtomicI64::new(40));
    let premium_full = Arc::new(AtomicBool::new(false));
    let std_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (c, std_budget, premium_full, std_ids) = (
                c.clone(),
                std_budget.clone(),
                premium_full.clone(),
                std_ids.clone(),
            );
            let (premium, standard) = (premium.clone(), standard.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(1000 + n as u64);
                let mut prem_admitted = 0;
                loop {
                    if std_budget.load(SeqCst) <= 0 && premium_full.load(SeqCst) {
                        return prem_admitted;
                    }
                    if rng.chance(50) && std_budget.fetch_sub(1, SeqCst) > 0 {
                        let a = reserve(&c, "u1", "image.render", 1, standard.clone()).await;
                        assert_eq!(
                            a["allowed"], true,
                            "a standard image always fits in phase 1: {a}"
                        );
                        assert_eq!(limit_ids(&a), vec!["total"]);
                        std_ids
                            .lock()
                            .unwrap()
                            .push(a["reservationId"].as_str().unwrap().to_string());
                    } else {
                        let a = reserve(&c, "u1", "image.render", 1, premium.clone()).await;
                        if a["allowed"] == true {
                            assert_eq!(limit_ids(&a), vec!["premium", "total"]);
                            prem_admitted += 1;
                        } else {
                            assert!(strs(&a["deniedBy"]).contains(&"premium".to_string()), "{a}");
                            premium_full.store(true, SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    let mut prem_admitted = 0;
    for t in futures::future::join_all(tasks).await {
        prem_admitted += t.expect("client task");
    }
    let std_ids = std_ids.lock().unwrap().clone();
    assert_eq!(prem_admitted, 10, "premium admitted exactly its quota");
    assert_eq!(std_ids.len(), 40);
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "total"), 50, 0, 50);
    assert_counts(limit(&u, "premium"), 10, 0, 10);

    // Phase 2: everything full; a racing mix is all denied and holds nothing anywhere.
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let c = c.clone();
            let (premium, standard) = (premium.clone(), standard.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(2000 + n as u64);
                for _ in 0..3 {
                    let is_premium = rng.chance(50);
                    let meta = if is_premium {
                        premium.clone()
                    } else {
                        standard.clone()
                    };
                    let a = reserve(&c, "u1", "image.render", 1, meta).await;
                    assert_eq!(a["allowed"], false, "{a}");
                    let expected = if is_premium {
                        sorted(&["premium", "total"])
                    } else {
                        sorted(&["total"])
                    };
                    assert_eq!(strs(&a["deniedBy"]), expected, "{a}");
                }
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.expect("client task");
    }
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "total"), 50, 0, 50);
    assert_counts(limit(&u, "premium"), 10, 0, 10);

    // Phase 3: free 5 standard slots; racing premium attempts must not take them (premium is
    // still full), so exactly 5 standard get in.
    for id in &std_ids[..5] {
        c.release(id, json!({})).await.ok();
    }
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let c = c.clone();
            let (premium, standard) = (premium.clone(), standard.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(3000 + n as u64);
                let mut std_admitted = 0;
                for _ in 0..3 {
                    let is_premium = rng.chance(50);
                    let meta = if is_premium {
                        premium.clone()
                    } else {
                        standard.clone()
                    };
                    let a = reserve(&c, "u1", "image.render", 1, meta).await;
                    if is_premium {
                        assert_eq!(a["allowed"], false, "premium is full: {a}");
                        assert!(strs(&a["deniedBy"]).contains(&"premium".to_string()), "{a}");
                    } else if a["allowed"] == true {
                        std_admitted += 1;
                    }
                }
                std_admitted
            })
        })
        .collect();
    let mut std_admitted = 0;
    for t in futures::future::join_all(tasks).await {
        std_admitted += t.expect("client task");
    }
    stop.store(true, SeqCst);
    mon_total.await.expect("monitor");
    mon_premium.await.expect("monitor");
    assert_eq!(
        std_admitted, 5,
        "exactly the 5 released slots are taken again"
    );
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "total"), 50, 0, 50);
    assert_counts(limit(&u, "premium"), 10, 0, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_never_has_4_in_flight() {
    const RACERS: usize = 32;
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "streams", "kind": "concurrency", "quota": 3, "window": lifetime(),
         "match": [{"event": "llm.stream"}]}
    ])))
    .await;
    let c = c.tolerating_overload();
    let stop = Arc::new(AtomicBool::new(false));
    let mon = monitor(&c, "u1", "streams", stop.clone(), |l| {
        assert_eq!(int(l, "used"), 0, "{l}");
        assert!(int(l, "reserved") <= 3, "more than 3 in flight: {l}");
    });
    let in_flight = Arc::new(AtomicI64::new(0));
    let max_in_flight = Arc::new(AtomicI64::new(0));
    let deadline = Instant::now() + Duration::from_millis(1500);

    let tasks: Vec<_> = (0..RACERS)
        .map(|n| {
            let (c, in_flight, max_in_flight) =
                (c.clone(), in_flight.clone(), max_in_flight.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(4000 + n as u64);
                let (mut admitted, mut denied) = (0, 0);
                while Instant::now() < deadline {
                    let a = reserve(&c, "u1", "llm.stream", 1, json!({})).await;
                    if a["allowed"] != true {
                        assert_eq!(
                            strs(&a["reasons"]),
                            vec!["concurrency_limit_reached"],
                            "{a}"
                        );
                        denied += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    admitted += 1;
                    // Counted from the answer until just before the release is sent: never more
                    // than the server holds.
                    let now = in_flight.fetch_add(1, SeqCst) + 1;
                    max_in_flight.fetch_max(now, SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.range(2, 8))).await;
                    in_flight.fetch_sub(1, SeqCst);
                    let id = a["reservationId"].as_str().expect("id");
                    let r = post_retrying(&c, &format!("/v1/reservations/{id}/release"), json!({}))
                        .await;
                    assert_eq!(r["status"], "released");
                }
                (admitted, denied)
            })
        })
        .collect();
    let (mut admitted, mut denied) = (0, 0);
    for t in futures::future::join_all(tasks).await {
        let (a, d) = t.expect("client task");
        admitted += a;
        denied += d;
    }
    stop.store(true, SeqCst);
    assert!(mon.await.expect("monitor") > 0);
    let max = max_in_flight.load(SeqCst);
    eprintln!("concurrency race: {admitted} admitted, {denied} denied, max in flight {max}");
    assert!(
        max <= 3,
        "{max} reservations in flight at once with a concurrency quota of 3"
    );
    assert!(
        admitted >= 3 && denied > 0,
        "the race did not contend ({admitted} admitted, {denied} denied)"
    );
    assert_counts(&c.limit_state("u1", "streams").await, 3, 0, 0);
}
