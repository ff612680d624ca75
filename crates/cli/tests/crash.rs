//! Crash acceptance criterion: SIGKILL in the middle of a concurrent load loses nothing that was
//! acknowledged and leaves nothing half-applied; pending holds from before the crash still
//! expire on schedule.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const TASKS: usize = 16;
const USERS: usize = 4;
const QUOTA: i64 = 10_000;
const TTL_SECONDS: i64 = 600;

#[derive(Clone, Debug)]
struct Reserved {
    id: String,
    user: String,
    quantity: i64,
}

#[derive(Default)]
struct Acks {
    /// Every reservation whose reserve answered 200 with `allowed: true`.
    reserved: Vec<Reserved>,
    /// Reservation id → quantity, for every commit that answered 200.
    committed: HashMap<String, i64>,
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_load_loses_nothing_acknowledged() {
    sigkill_mid_load(TestServer::start().await).await;
}

/// The same on the hot-path engine: every acknowledged command is in the engine's state after
/// the restart (read back through the API), and in the tables once they caught up (the usage
/// read after the restart comes from state loaded from them).
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_load_loses_nothing_acknowledged_on_the_engine() {
    if !matches!(Backend::from_env(), Backend::Sqlite) {
        eprintln!("skipped: the engine is for the embedded store");
        return;
    }
    let server = TestServer::builder().serve_arg("--engine").start().await;
    sigkill_mid_load(server).await;
}

async fn sigkill_mid_load(mut server: TestServer) {
    server
        .client()
        .put_plans(free_plan(json!([
            {"id": "jobs", "quota": QUOTA, "window": lifetime(), "match": [{"event": "job.*"}]}
        ])))
        .await
        .ok();
    let c = server.client().tolerating_overload();
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(AtomicBool::new(false));

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (c, acks, stop) = (c.clone(), acks.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(SeqCst) {
                    i += 1;
                    let user = format!("u{}", (t + i) % USERS);
                    // Distinct, known quantities: 1..=9 varying by task and iteration.
                    let quantity = 1 + ((t * 131 + i * 7) % 9) as i64;
                    let body = json!({"userId": user, "event": "job.run", "quantity": quantity, "ttlSeconds": TTL_SECONDS});
                    let Ok(r) = c.try_call(Method::POST, "/v1/reserve", Some(body)).await else { return };
                    if r.status != 200 || r.body["allowed"] != true {
                        continue;
                    }
                    let id = r.body["reservationId"].as_str().expect("id").to_string();
                    acks.lock().unwrap().reserved.push(Reserved { id: id.clone(), user, quantity });
                    if i % 5 == 4 {
                        continue; // left pending on purpose
                    }
                    let path = format!("/v1/reservations/{id}/commit");
                    let Ok(r) = c.try_call(Method::POST, &path, Some(json!({"quantity": quantity}))).await else { return };
                    if r.status == 200 {
                        assert_eq!(int(&r.body, "quantity"), quantity, "{}", r.text);
                        acks.lock().unwrap().committed.insert(id, quantity);
                    }
                }
            })
        })
        .collect();

    // At least 300 ms of load, and enough of it that some reservations were left pending on
    // purpose (every 5th of each task) and some commits acknowledged, however slow the machine.
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let enough = {
            let acks = acks.lock().unwrap();
            acks.reserved.len() >= 8 * TASKS && !acks.committed.is_empty()
        };
        if enough && started.elapsed() >= Duration::from_millis(300) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load acknowledged too little in 60 s"
        );
    }
    server.kill9().await;
    stop.store(true, SeqCst);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("load task did not notice the kill")
            .expect("load task panicked");
    }
    let (reserved, committed) = {
        let acks = acks.lock().unwrap();
        (acks.reserved.clone(), acks.committed.clone())
    };
    eprintln!(
        "before the kill: {} reservations, {} commits acknowledged",
        reserved.len(),
        committed.len()
    );
    assert!(
        !committed.is_empty(),
        "the load acknowledged no commit: the test proves nothing"
    );

    server.restart().await;
    let c = server.client();

    // Every acknowledged reservation exists; every acknowledged commit is committed with its
    // quantity; nothing is in a state it could not have reached.
    let mut committed_by_user: HashMap<String, i64> = HashMap::new();
    let mut acked_commits_by_user: HashMap<String, i64> = HashMap::new();
    let mut pending = Vec::new();
    for r in &reserved {
        let g = c.get_reservation(&r.id).await;
        assert_eq!(
            g.status, 200,
            "acknowledged reservation {} lost: {}",
            r.id, g.text
        );
        let g = g.body;
        assert_eq!(g["userId"], r.user.as_str(), "{g}");
        assert_eq!(int(&g, "quantity"), r.quantity, "{g}");
        match g["status"].as_str() {
            Some("committed") => {
                assert!(
                    g["eventId"].as_str().is_some_and(|e| e.starts_with("evt_")),
                    "{g}"
                );
                *committed_by_user.entry(r.user.clone()).or_default() += r.quantity;
            }
            Some("pending") => {
                assert!(
                    !committed.contains_key(&r.id),
                    "acknowledged commit {} is back to pending",
                    r.id
                );
                pending.push(r.id.clone());
            }
            other => panic!("reservation {} is {other:?} after the restart: {g}", r.id),
        }
        if let Some(q) = committed.get(&r.id) {
            assert_eq!(g["status"], "committed", "acknowledged commit lost: {g}");
            *acked_commits_by_user.entry(r.user.clone()).or_default() += q;
        }
    }
    assert!(
        !pending.is_empty(),
        "every 5th reservation was left pending on purpose"
    );

    for u in 0..USERS {
        let user = format!("u{u}");
        let l = c.limit_state(&user, "jobs").await;
        let used = int(&l, "used");
        let expected = committed_by_user.get(&user).copied().unwrap_or(0);
        let acked = acked_commits_by_user.get(&user).copied().unwrap_or(0);
        assert!(
            used >= acked,
            "{user}: used {used} < acknowledged commits {acked}"
        );
        assert_eq!(
            used, expected,
            "{user}: used must equal the sum of its committed reservations"
        );
        assert!(used + int(&l, "reserved") <= QUOTA, "{l}");
    }

    // Pending holds from before the crash expire on schedule and then hold nothing.
    c.advance_clock(TTL_SECONDS + 1).await;
    for id in &pending {
        let g = c.get_reservation(id).await.ok();
        assert_eq!(g["status"], "expired", "{g}");
    }
    for u in 0..USERS {
        let user = format!("u{u}");
        let l = c.limit_state(&user, "jobs").await;
        assert_counts(
            &l,
            QUOTA,
            committed_by_user.get(&user).copied().unwrap_or(0),
            0,
        );
    }

    // And the server works normally.
    let id = Client::must_allow(&c.reserve_q("u0", "job.run", 1).await);
    c.commit(&id, json!({})).await.ok();
}
