//! Issue 3 acceptance: several `tollgate serve` nodes on one PostgreSQL database stay exact.
//! Two real server processes share a fresh database; clients spread their requests across both,
//! so every race between them is settled by the database, never by one node's memory.
//!
//! Runs only when `TOLLGATE_TEST_POSTGRES_URL` is set; otherwise each test says it was skipped.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const SKIP: &str = "skipped: TOLLGATE_TEST_POSTGRES_URL is not set";
/// How often a request answered `503` is sent again before the test calls it a fault.
const RETRIES_503_MAX: usize = 200;
/// Pause between two tries of a request that answered `503`.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// Faults kept word for word; the rest are only counted.
const FAULTS_KEPT_MAX: usize = 20;
/// Sweep interval of both nodes: short, so that their sweepers race on every expiry.
const SWEEP_INTERVAL_MS: &str = "100";

/// Two nodes on one fresh database: the first ran `init`, the second shares its keys. Nodes are
/// dropped (killed) before the database.
struct Cluster {
    nodes: Vec<TestServer>,
    _db: Arc<PgDatabase>,
}

impl Cluster {
    async fn start(admin_url: &str) -> Cluster {
        let db = Arc::new(PgDatabase::create(admin_url).await);
        let a = TestServer::builder()
            .database(db.clone())
            .serve_arg("--sweep-interval-ms")
            .serve_arg(SWEEP_INTERVAL_MS)
            .start()
            .await;
        let b = TestServer::builder()
            .database(db.clone())
            .keys(a.keys.clone())
            .serve_arg("--sweep-interval-ms")
            .serve_arg(SWEEP_INTERVAL_MS)
            .start()
            .await;
        assert_ne!(a.addr, b.addr, "two nodes, two ports");
        Cluster {
            nodes: vec![a, b],
            _db: db,
        }
    }

    /// One client per node, each returning every status for the test to judge.
    fn clients(&self) -> Vec<Client> {
        self.nodes
            .iter()
            .map(|n| n.client().accepting_any_status())
            .collect()
    }
}

/// What went wrong anywhere in a load, kept to report at the end (a panic inside a client task
/// would hide every other fault).
#[derive(Clone, Default)]
struct Faults(Arc<Mutex<(usize, Vec<String>)>>);

impl Faults {
    fn record(&self, fault: String) {
        let mut f = self.0.lock().unwrap();
        f.0 += 1;
        if f.1.len() < FAULTS_KEPT_MAX {
            f.1.push(fault);
        }
    }

    #[track_caller]
    fn assert_none(&self) {
        let f = self.0.lock().unwrap();
        assert!(
            f.0 == 0,
            "{} faults, the first ones:\n{}",
            f.0,
            f.1.join("\n")
        );
    }
}

/// Counters of the retried `503`s, to report.
#[derive(Default)]
struct Retried(AtomicUsize);

/// Sends the request until it answers something else than a well-formed `503 unavailable` and
/// returns that answer. A fault is recorded for a `503` without `Retry-After` or with another
/// code, any 5xx, an answer that mentions a deadlock, a transport error, or `503`s without end.
async fn call_raw(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
    faults: &Faults,
    retried: &Retried,
) -> Option<Resp> {
    for _ in 0..RETRIES_503_MAX {
        let r = match c.try_call(method.clone(), path, body.clone()).await {
            Ok(r) => r,
            Err(e) => {
                faults.record(format!(
                    "{method} {path} on {}: transport error {e}",
                    c.base
                ));
                return None;
            }
        };
        if r.text.to_ascii_lowercase().contains("deadlock") || r.text.contains("40P01") {
            faults.record(format!(
                "{method} {path} on {}: a deadlock reached the client: {} {}",
                c.base, r.status, r.text
            ));
        }
        if r.status != 503 {
            if r.status >= 500 {
                faults.record(format!(
                    "{method} {path} on {}: answered {}: {}",
                    c.base, r.status, r.text
                ));
                return None;
            }
            return Some(r);
        }
        if r.body["error"]["code"] != "unavailable" || !r.headers.contains_key("retry-after") {
            faults.record(format!(
                "{method} {path} on {}: 503 without code `unavailable` and Retry-After: {:?} {}",
                c.base, r.headers, r.text
            ));
            return None;
        }
        retried.0.fetch_add(1, SeqCst);
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    faults.record(format!(
        "{method} {path} on {}: still 503 after {RETRIES_503_MAX} tries",
        c.base
    ));
    None
}

/// [`call_raw`] that expects a `200` and returns its body; another answer is a fault.
async fn call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
    faults: &Faults,
    retried: &Retried,
) -> Option<Value> {
    let r = call_raw(c, method, path, body, faults, retried).await?;
    if r.status != 200 {
        faults.record(format!(
            "{} on {}: answered {}: {}",
            r.what, c.base, r.status, r.text
        ));
        return None;
    }
    Some(r.body)
}

async fn post(
    c: &Client,
    path: &str,
    body: Value,
    faults: &Faults,
    retried: &Retried,
) -> Option<Value> {
    call(c, Method::POST, path, Some(body), faults, retried).await
}

async fn get(c: &Client, path: &str, faults: &Faults, retried: &Retried) -> Option<Value> {
    call(c, Method::GET, path, None, faults, retried).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_admit_exactly_the_quota() {
    const CLIENTS: usize = 64;
    const QUOTA: i64 = 100;
    let Some(admin_url) = postgres_url_from_env() else {
        eprintln!("{SKIP}");
        return;
    };
    let started = Instant::now();
    let cluster = Cluster::start(&admin_url).await;
    let nodes = cluster.clients();
    nodes[0]
        .put_plans(free_plan(json!([
            {"id": "images", "quota": QUOTA, "window": lifetime(), "match": [{"event": "image.*"}]}
        ])))
        .await
        .ok();
    // The plan applied through node 0 is in force on node 1 at once.
    let check = nodes[1]
        .check(json!({"userId": "someone_else", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(
        (check["allowed"].clone(), limit_ids(&check)),
        (json!(true), vec!["images".to_string()]),
        "node 1 does not see the plan applied through node 0: {check}"
    );

    let faults = Faults::default();
    let retried = Arc::new(Retried::default());
    let stop = Arc::new(AtomicBool::new(false));
    // A monitor on each node: used + reserved never passes the quota, whoever is asked.
    let monitors: Vec<_> = nodes
        .iter()
        .map(|c| {
            let (c, stop, faults) = (c.clone(), stop.clone(), faults.clone());
            tokio::spawn(async move {
                let mut samples = 0;
                while !stop.load(SeqCst) {
                    let r = c.usage("u1").await;
                    if r.status == 200 {
                        let l = limit(&r.body, "images");
                        if int(l, "used") + int(l, "reserved") > QUOTA {
                            faults.record(format!("{}: over the quota mid-race: {l}", c.base));
                        }
                        samples += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                samples
            })
        })
        .collect();

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let c = nodes[i % 2].clone();
            let (faults, retried) = (faults.clone(), retried.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let body = json!({"userId": "u1", "event": "image.render", "quantity": 1, "ttlSeconds": 3600});
                loop {
                    let Some(a) = post(&c, "/v1/reserve", body.clone(), &faults, &retried).await
                    else {
                        return ids;
                    };
                    if a["allowed"] != true {
                        if strs(&a["reasons"]) != vec!["limit_reached"]
                            || a["reservationId"] != Value::Null
                        {
                            faults.record(format!("{}: odd denial: {a}", c.base));
                        }
                        return ids;
                    }
                    match a["reservationId"].as_str() {
                        Some(id) => ids.push(id.to_string()),
                        None => faults.record(format!("{}: allowed without an id: {a}", c.base)),
                    }
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut per_node = [0usize; 2];
    for (i, t) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        let got = t.expect("client task");
        per_node[i % 2] += got.len();
        ids.extend(got);
    }
    stop.store(true, SeqCst);
    for m in monitors {
        assert!(m.await.expect("monitor") > 0, "a monitor took no sample");
    }
    faults.assert_none();
    eprintln!(
        "two nodes: admitted {} (node 0: {}, node 1: {}), {} retried 503s",
        ids.len(),
        per_node[0],
        per_node[1],
        retried.0.load(SeqCst)
    );
    assert_eq!(
        ids.len(),
        QUOTA as usize,
        "64 clients on two nodes must be admitted exactly the quota"
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "reservation ids are unique across nodes"
    );
    assert!(
        per_node[0] > 0 && per_node[1] > 0,
        "both nodes admitted some: {per_node:?}"
    );
    for c in &nodes {
        assert_counts(&c.limit_state("u1", "images").await, QUOTA, 0, QUOTA);
    }

    // Commit every reservation through the node that did not (necessarily) make it.
    let commits: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(j, id)| {
            let c = nodes[j % 2].clone();
            let path = format!("/v1/reservations/{id}/commit");
            let (faults, retried) = (faults.clone(), retried.clone());
            tokio::spawn(async move { post(&c, &path, json!({}), &faults, &retried).await })
        })
        .collect();
    for a in futures::future::join_all(commits).await {
        if let Some(a) = a.expect("commit task") {
            assert_eq!(a["status"], "committed", "{a}");
        }
    }
    faults.assert_none();
    for c in &nodes {
        assert_counts(&c.limit_state("u1", "images").await, QUOTA, QUOTA, 0);
        assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);
    }
    eprintln!(
        "two_nodes_admit_exactly_the_quota took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// What a client does with a reservation after making it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Commit,
    Release,
    Expire,
}

#[derive(Default)]
struct Ledger {
    /// user → sum of the final quantities of commits that answered 200.
    committed: HashMap<String, i64>,
    /// Every user a reserve was made for.
    touched: HashSet<String>,
    /// Reservations left to expire (ttlSeconds 1): (id, user).
    expiring: Vec<(String, String)>,
    /// Reservations released: (id, user).
    released: Vec<(String, String)>,
    ops: [usize; 3],
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_workload_over_10000_users_is_exact() {
    const USERS: u64 = 10_000;
    /// A few users take a fifth of the traffic, so that the nodes do contend on some rows.
    const HOT_USERS: u64 = 10;
    const CLIENTS: usize = 32;
    const OPS_MAX: usize = 20_000;
    const RUN_FOR: Duration = Duration::from_secs(10);
    const QUOTA: i64 = 1_000_000_000_000;
    let Some(admin_url) = postgres_url_from_env() else {
        eprintln!("{SKIP}");
        return;
    };
    let started = Instant::now();
    let cluster = Cluster::start(&admin_url).await;
    let nodes = cluster.clients();
    // Two limits on every event: each metering transaction locks two counters.
    nodes[1]
        .put_plans(free_plan(json!([
            {"id": "jobs", "quota": QUOTA, "window": lifetime(), "match": [{"event": "job.*"}]},
            {"id": "jobs_all", "quota": QUOTA, "window": lifetime(), "match": [{"event": "*"}]}
        ])))
        .await
        .ok();

    let faults = Faults::default();
    let retried = Arc::new(Retried::default());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let ops_started = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + RUN_FOR;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let nodes = nodes.clone();
            let (faults, retried, ledger, ops_started) = (
                faults.clone(),
                retried.clone(),
                ledger.clone(),
                ops_started.clone(),
            );
            tokio::spawn(async move {
                let mut rng = Rng::new(7000 + n as u64);
                while Instant::now() < deadline && ops_started.fetch_add(1, SeqCst) < OPS_MAX {
                    let user = if rng.chance(20) {
                        format!("u_{}", rng.range(0, HOT_USERS - 1))
                    } else {
                        format!("u_{}", rng.range(0, USERS - 1))
                    };
                    let fate = match rng.range(0, 99) {
                        0..=54 => Fate::Commit,
                        55..=79 => Fate::Release,
                        _ => Fate::Expire,
                    };
                    let quantity = rng.range(1, 10);
                    let ttl = if fate == Fate::Expire { 1 } else { 300 };
                    let reserving = &nodes[rng.range(0, 1) as usize];
                    let settling = &nodes[rng.range(0, 1) as usize];
                    ledger.lock().unwrap().touched.insert(user.clone());
                    let body = json!({"userId": user, "event": "job.run", "quantity": quantity, "ttlSeconds": ttl});
                    let Some(a) = post(reserving, "/v1/reserve", body, &faults, &retried).await
                    else {
                        continue;
                    };
                    let Some(id) = a["reservationId"].as_str().filter(|_| a["allowed"] == true)
                    else {
                        faults.record(format!("a generous quota denied a reserve: {a}"));
                        continue;
                    };
                    let id = id.to_string();
                    match fate {
                        Fate::Commit => {
                            let fin = rng.range(0, 15) as i64;
                            let path = format!("/v1/reservations/{id}/commit");
                            let body = json!({"quantity": fin});
                            if let Some(c) = post(settling, &path, body, &faults, &retried).await {
                                if c["status"] != "committed"
                                    || c["quantity"] != fin
                                    || c["overage"] != 0
                                {
                                    faults.record(format!("commit of {fin}: odd answer {c}"));
                                }
                                *ledger.lock().unwrap().committed.entry(user).or_default() += fin;
                            }
                        }
                        Fate::Release => {
                            let path = format!("/v1/reservations/{id}/release");
                            if let Some(r) = post(settling, &path, json!({}), &faults, &retried).await
                            {
                                if r["status"] != "released" {
                                    faults.record(format!("release: odd answer {r}"));
                                }
                                ledger.lock().unwrap().released.push((id, user));
                            }
                        }
                        Fate::Expire => ledger.lock().unwrap().expiring.push((id, user)),
                    }
                    ledger.lock().unwrap().ops[fate as usize] += 1;
                }
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.expect("client task");
    }
    let load_took = started.elapsed();
    faults.assert_none();
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("tasks are done")
        .into_inner()
        .unwrap();
    let done: usize = ledger.ops.iter().sum();
    eprintln!(
        "mixed load: {done} reservations ({:?} commit/release/expire) over {} users in {:.1} s, \
         {} retried 503s",
        ledger.ops,
        ledger.touched.len(),
        load_took.as_secs_f64(),
        retried.0.load(SeqCst)
    );
    assert!(
        done >= 300 && ledger.ops.iter().all(|&n| n > 0),
        "too little load to prove anything: {:?}",
        ledger.ops
    );

    // Every pending reservation is past its TTL: on the test clock (moved through node 0, read
    // by both) and in real time (for sweepers that run on it). Both sweepers race on them.
    nodes[0].advance_clock(2).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Each left-to-expire reservation reads `expired` from either node; every other one is
    // raced by a commit on one node and a release on the other (lazy expiry against both
    // sweepers): both refuse with `reservation_not_pending`, status `expired`.
    let faults = Faults::default();
    let checks: Vec<_> = ledger
        .expiring
        .chunks(ledger.expiring.len().div_ceil(CLIENTS))
        .enumerate()
        .map(|(k, chunk)| {
            let (nodes, faults, retried) = (nodes.clone(), faults.clone(), retried.clone());
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for (j, (id, _)) in chunk.iter().enumerate() {
                    let node = &nodes[(k + j) % 2];
                    let path = format!("/v1/reservations/{id}");
                    if let Some(g) = get(node, &path, &faults, &retried).await {
                        if g["status"] != "expired" {
                            faults.record(format!("a let-expire reservation is not expired: {g}"));
                        }
                    }
                    if j % 2 == 1 {
                        continue;
                    }
                    let other = &nodes[(k + j + 1) % 2];
                    let (commit, release) = (format!("{path}/commit"), format!("{path}/release"));
                    let (c, r) = tokio::join!(
                        call_raw(
                            node,
                            Method::POST,
                            &commit,
                            Some(json!({})),
                            &faults,
                            &retried
                        ),
                        call_raw(
                            other,
                            Method::POST,
                            &release,
                            Some(json!({})),
                            &faults,
                            &retried
                        )
                    );
                    for r in [c, r].into_iter().flatten() {
                        let ok = r.status == 409
                            && r.body["error"]["code"] == "reservation_not_pending"
                            && r.body["error"]["status"] == "expired";
                        if !ok {
                            faults.record(format!(
                                "{} of an expired reservation: {} {}",
                                r.what, r.status, r.text
                            ));
                        }
                    }
                }
            })
        })
        .collect();
    for t in futures::future::join_all(checks).await {
        t.expect("expiry check task");
    }
    // Released ones stay released (a sample, through the other node).
    for (j, (id, _)) in ledger.released.iter().step_by(50).enumerate() {
        let g = nodes[j % 2].get_reservation(id).await.ok();
        assert_eq!(g["status"], "released", "{g}");
    }
    faults.assert_none();

    // For every user touched: used = the sum of its acknowledged commits, on both limits, and
    // nothing is held any more, whichever node is asked.
    let users: Vec<String> = ledger.touched.iter().cloned().collect();
    let committed = Arc::new(ledger.committed);
    let checks: Vec<_> = users
        .chunks(users.len().div_ceil(CLIENTS))
        .enumerate()
        .map(|(k, chunk)| {
            let (nodes, faults, retried, committed) = (
                nodes.clone(),
                faults.clone(),
                retried.clone(),
                committed.clone(),
            );
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for (j, user) in chunk.iter().enumerate() {
                    let node = &nodes[(k + j) % 2];
                    let path = format!("/v1/users/{user}/usage");
                    let Some(u) = get(node, &path, &faults, &retried).await else {
                        continue;
                    };
                    let want = committed.get(user).copied().unwrap_or(0);
                    for id in ["jobs", "jobs_all"] {
                        let l = limit(&u, id);
                        let got = (int(l, "used"), int(l, "reserved"), int(l, "remaining"));
                        if got != (want, 0, QUOTA - want) {
                            faults.record(format!(
                                "{user} on {}: (used, reserved, remaining) of {id} is {got:?}, \
                                 expected ({want}, 0, {})",
                                node.base,
                                QUOTA - want
                            ));
                        }
                    }
                }
            })
        })
        .collect();
    for t in futures::future::join_all(checks).await {
        t.expect("usage check task");
    }
    faults.assert_none();
    eprintln!(
        "mixed_workload_over_10000_users_is_exact took {:.1} s ({} users checked, {} expiries)",
        started.elapsed().as_secs_f64(),
        users.len(),
        ledger.expiring.len()
    );
}

/// A key revoked through one node stops working on the other within the key cache's second
/// (`AUTH_CACHE_MS`), even though that node had just used (and cached) it.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_on_one_node_is_refused_by_the_other_within_a_second() {
    let Some(url) = postgres_url_from_env() else {
        eprintln!("{SKIP}");
        return;
    };
    let cluster = Cluster::start(&url).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let created = a
        .admin()
        .post(
            &format!("/admin/v1/projects/{}/keys", a.keys.project_id),
            json!({"environment": "test", "kind": "secret", "name": "revoked-elsewhere"}),
        )
        .await
        .ok();
    let key = created["key"].as_str().expect("key").to_string();
    // Node b knows the key from its first use on; node a revokes it.
    b.client_with(&key).usage("u1").await.ok();
    let revoked_at = Instant::now();
    a.admin()
        .delete(&format!(
            "/admin/v1/keys/{}",
            created["keyId"].as_str().unwrap()
        ))
        .await
        .ok();
    a.client_with(&key)
        .usage("u1")
        .await
        .err(401, "invalid_key");
    let on_b = b.client_with(&key);
    loop {
        let status = on_b.get("/v1/users/u1/usage").await.status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200, "node b answered {status}");
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1_500),
            "node b still accepts a key revoked {:?} ago",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A test-clock advance answered by one node is in force on the other at once: its clock reads
/// the new offset, and a reservation made through it expires by the advanced clock.
#[tokio::test(flavor = "multi_thread")]
async fn a_test_clock_advanced_on_one_node_is_the_others_at_once() {
    let Some(url) = postgres_url_from_env() else {
        eprintln!("{SKIP}");
        return;
    };
    let cluster = Cluster::start(&url).await;
    let (a, b) = (cluster.nodes[0].client(), cluster.nodes[1].client());
    a.put_plans(free_plan(json!([
        {"id": "images", "quota": 5, "window": lifetime(), "match": [{"event": "image.*"}]}
    ])))
    .await
    .ok();
    // Node b has used (and would have cached) the key before the advance.
    assert_eq!(b.clock().await.ok()["offsetSeconds"], 0);
    let r = b
        .reserve(json!({"userId": "u1", "event": "image.render", "quantity": 2, "ttlSeconds": 60}))
        .await
        .ok();
    let id = r["reservationId"].as_str().unwrap().to_string();
    let advanced = a.advance_clock(3600).await;
    assert_eq!(advanced["offsetSeconds"], 3600);
    assert_eq!(
        b.clock().await.ok()["offsetSeconds"],
        3600,
        "node b reads the advance at once"
    );
    let view = b.get(&format!("/v1/reservations/{id}")).await.ok();
    assert_eq!(view["status"], "expired", "{view}");
    b.commit(&id, json!({}))
        .await
        .err(409, "reservation_not_pending");
    let usage = b.usage("u1").await.ok();
    assert_counts(limit(&usage, "images"), 5, 0, 0);
}
