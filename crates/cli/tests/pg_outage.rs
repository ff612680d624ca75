//! Issue 3 acceptance: PostgreSQL going away under load. A TCP proxy in this test stands between
//! the server and PostgreSQL; cutting it (listener closed, every forwarded connection reset) is
//! the database vanishing, and listening again on the same port is it coming back. Clients must
//! see only `200` or a `503` with `Retry-After` (`unavailable`, or `outcome_unknown` for a
//! commit cut while in flight), `/readyz` must turn red and green
//! again, the node must recover without a restart, and no acknowledged commit may be lost.
//!
//! Runs only when `TOLLGATE_TEST_POSTGRES_URL` is set; otherwise it says it was skipped.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const SKIP: &str = "skipped: TOLLGATE_TEST_POSTGRES_URL is not set";
const CLIENTS: usize = 4;
/// The server's request deadline: no answer may take (much) longer, database or not.
const REQUEST_TIMEOUT_MS: u64 = 4000;
/// Slack on top of the deadline for scheduling on a loaded machine.
const ANSWER_SLACK: Duration = Duration::from_secs(2);
const WARM_UP: Duration = Duration::from_millis(1500);
const OUTAGE: Duration = Duration::from_secs(3);
/// `/readyz` may still say ready this long after the cut (a connection may be mid-check).
const READY_GRACE: Duration = Duration::from_secs(1);
/// The node must be ready and serving again this soon after the database returns.
const RECOVERY_MAX: Duration = Duration::from_secs(10);
const AFTER_RECOVERY: Duration = Duration::from_millis(1500);
/// Pause of a client after a `503` (shorter than any `Retry-After`, to keep the load on).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const QUOTA: i64 = 1_000_000_000_000;

/// A TCP forwarder `127.0.0.1:PORT` → PostgreSQL that can be cut and resumed on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: (String, u16),
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let mut proxy = Proxy {
            addr: "127.0.0.1:0".parse().expect("addr"),
            upstream,
            accept: None,
            connections: Arc::default(),
        };
        proxy.listen().await;
        proxy
    }

    /// Listens on `addr` (a fresh port the first time, the same one afterwards).
    async fn listen(&mut self) {
        assert!(self.accept.is_none(), "the proxy already listens");
        let mut last_error = None;
        let mut listener = None;
        for _ in 0..100 {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            match socket.bind(self.addr).and_then(|()| socket.listen(128)) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = listener.unwrap_or_else(|| {
            panic!("proxy cannot listen on {} again: {last_error:?}", self.addr)
        });
        self.addr = listener.local_addr().expect("local addr");
        let (upstream, connections) = (self.upstream.clone(), self.connections.clone());
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)).await
                    else {
                        return;
                    };
                    // A cut then resets both sides at once instead of closing them politely.
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut all = connections.lock().unwrap();
                all.retain(|t| !t.is_finished());
                all.push(task);
            }
        }));
    }

    /// Closes the listener and resets every forwarded connection.
    async fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let connections: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        for c in &connections {
            c.abort();
        }
        for c in connections {
            let _ = c.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// One answer a load client got.
struct Seen {
    what: &'static str,
    started: Instant,
    took: Duration,
    /// `None`: a transport error (the text says which).
    status: Option<u16>,
    text: String,
    /// A `503` with `Retry-After` and code `unavailable` or `outcome_unknown`.
    well_formed_503: bool,
}

#[derive(Default)]
struct Load {
    seen: Vec<Seen>,
    /// (reservation id, quantity) of every reserve answered `200 allowed`.
    reserved: Vec<(String, i64)>,
    /// (reservation id, quantity) of every commit answered `200`, and when it was sent.
    committed: Vec<(String, i64, Instant)>,
}

async fn send(c: &Client, what: &'static str, path: &str, body: Value, load: &Mutex<Load>) -> Resp {
    let started = Instant::now();
    let r = c.try_call(Method::POST, path, Some(body)).await;
    let took = started.elapsed();
    let (status, text, resp) = match r {
        Ok(r) => (Some(r.status), r.text.clone(), Some(r)),
        Err(e) => (None, format!("transport error: {e}"), None),
    };
    let well_formed_503 = resp.as_ref().is_some_and(|r| {
        r.status == 503
            && matches!(
                r.body["error"]["code"].as_str(),
                Some("unavailable" | "outcome_unknown")
            )
            && r.headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().parse::<u64>().is_ok())
    });
    load.lock().unwrap().seen.push(Seen {
        what,
        started,
        took,
        status,
        text: text.clone(),
        well_formed_503,
    });
    resp.unwrap_or(Resp {
        what: what.to_string(),
        status: 0,
        headers: HeaderMap::new(),
        text,
        body: Value::Null,
    })
}

/// Reserve, then commit the same quantity, retrying the commit after a `503` until it answers
/// `200` or the test stops the load for good.
async fn client_loop(
    c: Client,
    n: usize,
    load: Arc<Mutex<Load>>,
    stop: Arc<AtomicBool>,
    halt: Arc<AtomicBool>,
) {
    let mut rng = Rng::new(9000 + n as u64);
    while !stop.load(SeqCst) {
        let quantity = rng.range(1, 9) as i64;
        let body =
            json!({"userId": "u1", "event": "job.run", "quantity": quantity, "ttlSeconds": 3600});
        let r = send(&c, "reserve", "/v1/reserve", body, &load).await;
        if r.status != 200 {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        let Some(id) = r.body["reservationId"]
            .as_str()
            .filter(|_| r.body["allowed"] == true)
        else {
            panic!("a generous quota denied a reserve: {}", r.text);
        };
        let id = id.to_string();
        load.lock().unwrap().reserved.push((id.clone(), quantity));
        let path = format!("/v1/reservations/{id}/commit");
        while !halt.load(SeqCst) {
            let sent = Instant::now();
            let r = send(&c, "commit", &path, json!({"quantity": quantity}), &load).await;
            match r.status {
                200 => {
                    load.lock()
                        .unwrap()
                        .committed
                        .push((id.clone(), quantity, sent));
                    break;
                }
                503 => tokio::time::sleep(RETRY_PAUSE).await,
                _ => break, // recorded in `seen`; the assertions name it
            }
        }
    }
}

/// One `/readyz` answer.
struct Probe {
    started: Instant,
    ended: Instant,
    status: Option<u16>,
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_answers_503_and_recovers_without_losing_commits() {
    let Some(admin_url) = postgres_url_from_env() else {
        eprintln!("{SKIP}");
        return;
    };
    let test_started = Instant::now();
    let db = Arc::new(PgDatabase::create(&admin_url).await);
    let mut proxy = Proxy::start(db.pg_url().socket()).await;
    let via_proxy = db
        .pg_url()
        .with_host_port(&proxy.addr.to_string())
        .to_string();
    let mut server = TestServer::builder()
        .database(db.clone())
        .database_url(via_proxy)
        .serve_arg("--request-timeout-ms")
        .serve_arg(REQUEST_TIMEOUT_MS.to_string())
        .start()
        .await;
    let c = server.client();
    c.put_plans(free_plan(json!([
        {"id": "jobs", "quota": QUOTA, "window": lifetime(), "match": [{"event": "job.*"}]}
    ])))
    .await
    .ok();
    let raw = c.accepting_any_status();

    // /readyz, polled all along.
    let probes = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let halt = Arc::new(AtomicBool::new(false));
    let prober = {
        let (anon, probes, halt) = (
            server.anonymous().accepting_any_status(),
            probes.clone(),
            halt.clone(),
        );
        tokio::spawn(async move {
            while !halt.load(SeqCst) {
                let started = Instant::now();
                let status = anon
                    .try_call(Method::GET, "/readyz", None)
                    .await
                    .ok()
                    .map(|r| r.status);
                probes.lock().unwrap().push(Probe {
                    started,
                    ended: Instant::now(),
                    status,
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            tokio::spawn(client_loop(
                raw.clone(),
                n,
                load.clone(),
                stop.clone(),
                halt.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(WARM_UP).await;
    let acked_before = load.lock().unwrap().committed.len();
    assert!(
        acked_before > 0,
        "no commit acknowledged before the cut: the test proves nothing"
    );

    let cut_at = Instant::now();
    proxy.cut().await;
    tokio::time::sleep(OUTAGE).await;
    let back_at = Instant::now();
    proxy.listen().await;

    // Ready again, and serving again, within RECOVERY_MAX of the database's return.
    let (mut ready_after, mut serving_after) = (None, None);
    while back_at.elapsed() < RECOVERY_MAX && (ready_after.is_none() || serving_after.is_none()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if ready_after.is_none() {
            ready_after = probes
                .lock()
                .unwrap()
                .iter()
                .find(|p| p.started >= back_at && p.status == Some(200))
                .map(|p| p.ended - back_at);
        }
        if serving_after.is_none() {
            serving_after = load
                .lock()
                .unwrap()
                .committed
                .iter()
                .find(|(_, _, sent)| *sent >= back_at)
                .map(|_| back_at.elapsed());
        }
    }
    tokio::time::sleep(AFTER_RECOVERY).await;
    stop.store(true, SeqCst);
    // Pending commit retries get a moment to land, then everything stops.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    halt.store(true, SeqCst);
    for t in clients {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a load client hung")
            .expect("a load client panicked");
    }
    prober.await.expect("prober");
    let load = std::mem::take(&mut *load.lock().unwrap());
    let probes = std::mem::take(&mut *probes.lock().unwrap());

    let count = |f: &dyn Fn(&Seen) -> bool| load.seen.iter().filter(|s| f(s)).count();
    let n200 = count(&|s| s.status == Some(200));
    let n503 = count(&|s| s.status == Some(503));
    let slowest = load.seen.iter().map(|s| s.took).max().unwrap_or_default();
    let during = count(&|s| s.started >= cut_at && s.started < back_at);
    eprintln!(
        "outage: {} answers ({n200} 200, {n503} 503, {during} sent during the outage), slowest \
         {:.2} s; {} reservations, {} commits acknowledged ({acked_before} before the cut); \
         ready again after {ready_after:?}, serving again after {serving_after:?}",
        load.seen.len(),
        slowest.as_secs_f64(),
        load.reserved.len(),
        load.committed.len()
    );

    // Only 200 or a well-formed 503, and never a hang past the request deadline.
    let bad: Vec<String> = load
        .seen
        .iter()
        .filter(|s| !(s.status == Some(200) || s.well_formed_503))
        .take(10)
        .map(|s| {
            format!(
                "{} sent {:.2} s after the cut: {:?} {}",
                s.what,
                s.started.saturating_duration_since(cut_at).as_secs_f64(),
                s.status,
                s.text
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "clients must see only 200 or 503 `unavailable`/`outcome_unknown` with Retry-After:\n{}",
        bad.join("\n")
    );
    let limit_ms = Duration::from_millis(REQUEST_TIMEOUT_MS) + ANSWER_SLACK;
    assert!(
        slowest <= limit_ms,
        "an answer took {slowest:?}, over the {REQUEST_TIMEOUT_MS} ms request deadline"
    );

    // /readyz: red while the database is away, green again soon after it returns.
    let away: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.started >= cut_at + READY_GRACE && p.ended <= back_at)
        .collect();
    let slowest_probe = probes
        .iter()
        .map(|p| p.ended - p.started)
        .max()
        .unwrap_or_default();
    assert!(
        !away.is_empty(),
        "no /readyz answer both started and ended while the database was away (slowest \
         /readyz took {slowest_probe:?}): it must answer promptly"
    );
    let green: Vec<_> = away
        .iter()
        .filter(|p| p.status != Some(503))
        .map(|p| p.status)
        .collect();
    assert!(
        green.is_empty(),
        "/readyz must answer 503 while the database is away; {} of {} probes answered {green:?}",
        green.len(),
        away.len()
    );
    assert!(
        ready_after.is_some(),
        "/readyz did not answer 200 within {RECOVERY_MAX:?} of the database's return"
    );
    assert!(
        serving_after.is_some(),
        "no reserve + commit succeeded within {RECOVERY_MAX:?} of the database's return"
    );
    assert!(
        server.is_running(),
        "the server exited during the outage:\n{}",
        server.log_tail(40)
    );

    // Nothing acknowledged is lost: every acknowledged commit reads `committed`, and `used` is
    // the sum of the reservations that read `committed` (acknowledged or whose answer was lost).
    let acked: std::collections::HashSet<&str> = load
        .committed
        .iter()
        .map(|(id, _, _)| id.as_str())
        .collect();
    let acked_sum: i64 = load.committed.iter().map(|(_, q, _)| q).sum();
    let (mut committed_sum, mut pending_sum) = (0i64, 0i64);
    for (id, q) in &load.reserved {
        let g = c.get_reservation(id).await.ok();
        match g["status"].as_str() {
            Some("committed") => {
                assert_eq!(int(&g, "quantity"), *q, "{g}");
                committed_sum += q;
            }
            Some("pending") => {
                assert!(
                    !acked.contains(id.as_str()),
                    "an acknowledged commit is pending: {g}"
                );
                pending_sum += q;
            }
            other => panic!("reservation {id} is {other:?}; only commits were sent: {g}"),
        }
    }
    let l = c.limit_state("u1", "jobs").await;
    let (used, reserved) = (int(&l, "used"), int(&l, "reserved"));
    assert!(
        used >= acked_sum,
        "used {used} < acknowledged commits {acked_sum}: {l}"
    );
    assert_eq!(
        used, committed_sum,
        "used must equal the sum of the reservations that read committed: {l}"
    );
    assert!(
        reserved >= pending_sum,
        "reserved {reserved} < the pending reservations' {pending_sum}: {l}"
    );
    eprintln!(
        "database_outage_answers_503_and_recovers_without_losing_commits took {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
    drop(server);
    drop(proxy);
}
