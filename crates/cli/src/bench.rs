//! `tollgate bench`: a load generator against a running server (or one it starts on a temporary
//! data dir), with per-operation latency percentiles and an exactness check that fails the run
//! when a quota was exceeded or committed usage went missing.
//!
//! It replaces the plan document of the key's environment, so it refuses live keys.

use crate::table::Table;
use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most users a run may spread over.
pub const BENCH_USERS_MAX: usize = 10_000_000;
/// Most concurrent clients.
pub const BENCH_CONCURRENCY_MAX: usize = 4096;
/// Users whose usage the exactness check reads back at the end (a sample when more were hit).
pub const EXACTNESS_SAMPLE_USERS: usize = 500;
/// How long the bench waits for a server it started to listen, in seconds.
const SERVER_START_SECONDS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Reserve then commit, over many users.
    ReserveCommit,
    /// Many clients racing for one user's quota (`--quota`).
    HotUser,
    /// Track only.
    Track,
    /// Check only (no side effect).
    Check,
    /// Reserve, then commit, release or let expire.
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Skew {
    Uniform,
    /// Zipf with exponent 1: a few users get most of the traffic.
    Zipf,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Base URL of a running server; without it the bench starts its own on a temp data dir
    #[arg(long, env = "TOLLGATE_URL")]
    url: Option<String>,
    /// A test secret key of that server (required with --url)
    #[arg(long, env = "TOLLGATE_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, value_enum, default_value = "reserve-commit")]
    scenario: Scenario,
    /// Concurrent clients
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to run, in seconds
    #[arg(long, default_value_t = 10)]
    duration_seconds: u64,
    /// Users the load spreads over
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    #[arg(long, value_enum, default_value = "uniform")]
    skew: Skew,
    /// Limits in the plan, each matching every bench event
    #[arg(long, default_value_t = 1)]
    limits: usize,
    /// The per-user quota of the hot-user scenario
    #[arg(long, default_value_t = 100)]
    quota: u64,
}

/// Latencies of one operation, in microseconds, and its error count.
#[derive(Default)]
struct OpStats {
    micros: Vec<u32>,
    errors: u64,
}

#[derive(Default)]
struct Shared {
    ops: Mutex<HashMap<&'static str, OpStats>>,
    /// Committed (or tracked) units per user, as acknowledged by the server.
    committed: Mutex<HashMap<usize, u64>>,
    admitted: AtomicU64,
    denied: AtomicU64,
    done: AtomicU64,
}

impl Shared {
    fn record(&self, op: &'static str, took: Duration, ok: bool) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let s = ops.entry(op).or_default();
        if ok {
            s.micros
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        } else {
            s.errors += 1;
        }
    }
}

/// A server the bench started, killed when the bench ends.
struct OwnServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Result<(OwnServer, String, String)> {
    let dir = tempfile::tempdir().context("cannot make a temp data dir")?;
    let exe = std::env::current_exe().context("cannot find the tollgate binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn,tollgate=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start `tollgate serve`")?;
    let stderr = child.stderr.take().context("no stderr from the server")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut key, mut url) = (None, None);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                key = v["keys"]["test"]["secret"].as_str().map(str::to_string);
            }
            if let Some(i) = line.find("listening on http://") {
                url = Some(line[i + "listening on ".len()..].trim().to_string());
            }
            if let (Some(k), Some(u)) = (&key, &url) {
                let _ = tx.send((u.clone(), k.clone()));
                key = None;
            }
        }
    });
    let server = OwnServer { child, _dir: dir };
    let (url, key) = rx
        .recv_timeout(Duration::from_secs(SERVER_START_SECONDS))
        .context("the server did not start")?;
    Ok((server, url, key))
}

/// Picks users by rank; Zipf by inverting a precomputed CDF.
struct Picker {
    cdf: Option<Vec<f64>>,
    users: usize,
}

impl Picker {
    fn new(users: usize, skew: Skew) -> Self {
        let cdf = (skew == Skew::Zipf).then(|| {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=users)
                .map(|k| {
                    acc += 1.0 / k as f64;
                    acc
                })
                .collect();
            cdf.iter_mut().for_each(|c| *c /= acc);
            cdf
        });
        Self { cdf, users }
    }

    fn pick(&self, rng: &mut impl Rng) -> usize {
        match &self.cdf {
            None => rng.random_range(0..self.users),
            Some(cdf) => {
                let x: f64 = rng.random();
                cdf.partition_point(|&c| c < x).min(self.users - 1)
            }
        }
    }
}

/// Distinguishes this run's users from an earlier run's on the same server.
static RUN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn user_id(i: usize) -> String {
    let run = RUN.get_or_init(rand::random);
    format!("bench_{run:08x}_u{i}")
}

struct Client {
    http: reqwest::Client,
    url: String,
    auth: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("authorization", &self.auth);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{path}: {status} {value}");
        Ok(value)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn plan_document(args: &BenchArgs) -> Value {
    let quota = match args.scenario {
        Scenario::HotUser => args.quota,
        _ => tollgate_core::input::QUANTITY_MAX,
    };
    let limits: Vec<Value> = (0..args.limits.max(1))
        .map(|i| {
            json!({"id": format!("bench_{i}"), "quota": quota, "window": {"type": "lifetime"},
                   "match": [{"event": "bench.*"}]})
        })
        .collect();
    json!({"defaultPlan": "bench", "plans": [{"id": "bench", "limits": limits}]})
}

/// One client's loop until the deadline.
async fn run_client(
    client: Arc<Client>,
    args: Arc<BenchArgs>,
    picker: Arc<Picker>,
    shared: Arc<Shared>,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let user = match args.scenario {
            Scenario::HotUser => 0,
            _ => picker.pick(&mut rng),
        };
        let body = json!({"userId": user_id(user), "event": "bench.op"});
        let ok = match args.scenario {
            Scenario::Track => {
                let t = Instant::now();
                let r = client.post("/v1/track", body).await;
                shared.record("track", t.elapsed(), r.is_ok());
                if r.is_ok() {
                    *shared
                        .committed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(user)
                        .or_default() += 1;
                }
                r.is_ok()
            }
            Scenario::Check => {
                let t = Instant::now();
                let r = client.post("/v1/check", body).await;
                shared.record("check", t.elapsed(), r.is_ok());
                r.is_ok()
            }
            _ => reserve_then(&client, &args, &shared, user, body, &mut rng).await,
        };
        if ok {
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn reserve_then(
    client: &Client,
    args: &BenchArgs,
    shared: &Shared,
    user: usize,
    mut body: Value,
    rng: &mut impl Rng,
) -> bool {
    let expire = args.scenario == Scenario::Mixed && rng.random_range(0..100) < 15;
    if expire {
        body["ttlSeconds"] = json!(1);
    }
    let t = Instant::now();
    let r = client.post("/v1/reserve", body).await;
    shared.record("reserve", t.elapsed(), r.is_ok());
    let Ok(r) = r else { return false };
    let Some(id) = r["reservationId"].as_str() else {
        shared.denied.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    shared.admitted.fetch_add(1, Ordering::Relaxed);
    if expire {
        return true;
    }
    let release = args.scenario == Scenario::Mixed && rng.random_range(0..100) < 30;
    let (op, path, body) = if release {
        (
            "release",
            format!("/v1/reservations/{id}/release"),
            json!({}),
        )
    } else {
        let q = if args.scenario == Scenario::Mixed {
            rng.random_range(0..=2)
        } else {
            1
        };
        (
            "commit",
            format!("/v1/reservations/{id}/commit"),
            json!({"quantity": q}),
        )
    };
    let t = Instant::now();
    let r = client.post(&path, body.clone()).await;
    shared.record(op, t.elapsed(), r.is_ok());
    if r.is_ok() && op == "commit" {
        let q = body["quantity"].as_u64().unwrap_or(1);
        *shared
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user)
            .or_default() += q;
    }
    r.is_ok()
}

fn percentile(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    format!("{:.3}", f64::from(sorted[i]) / 1000.0)
}

pub async fn run(args: BenchArgs) -> Result<()> {
    ensure!(
        (1..=BENCH_CONCURRENCY_MAX).contains(&args.concurrency),
        "--concurrency must be 1-{BENCH_CONCURRENCY_MAX}"
    );
    ensure!(
        (1..=BENCH_USERS_MAX).contains(&args.users),
        "--users must be 1-{BENCH_USERS_MAX}"
    );
    ensure!((1..=100).contains(&args.limits), "--limits must be 1-100");
    let (own, url, key) = match (&args.url, &args.key) {
        (Some(url), Some(key)) => (None, url.trim_end_matches('/').to_string(), key.clone()),
        (Some(_), None) => bail!("--url needs --key (a test secret key)"),
        (None, _) => {
            eprintln!("starting a server on a temporary data dir");
            let (server, url, key) = start_server()?;
            (Some(server), url, key)
        }
    };
    if !key.starts_with("sk_test_") {
        bail!(
            "the bench replaces the plan document of the key's environment; \
             give it a test secret key (sk_test_…), never a live one"
        );
    }
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .build()?,
        url,
        auth: format!("Bearer {key}"),
    });
    client
        .call(
            reqwest::Method::PUT,
            "/v1/plans",
            Some(plan_document(&args)),
        )
        .await
        .context("applying the bench plan document")?;
    eprintln!(
        "note: the test environment's plan document is now the bench's ({} limit(s))",
        args.limits
    );

    let args = Arc::new(args);
    let picker = Arc::new(Picker::new(args.users, args.skew));
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        tasks.push(tokio::spawn(run_client(
            client.clone(),
            args.clone(),
            picker.clone(),
            shared.clone(),
            deadline,
            stop.clone(),
        )));
    }
    let progress = {
        let shared = shared.clone();
        let total = args.duration_seconds;
        tokio::spawn(async move {
            for s in 1..=total {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let filled = (s * 30 / total.max(1)) as usize;
                eprint!(
                    "\r[{}{}] {s}/{total} s  {} ops",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    shared.done.load(Ordering::Relaxed)
                );
            }
            eprintln!();
        })
    };
    for t in tasks {
        t.await?;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();

    let mut table = Table::new(&[
        "OPERATION",
        "COUNT",
        "PER SECOND",
        "P50 MS",
        "P90 MS",
        "P99 MS",
        "P99.9 MS",
        "ERRORS",
    ]);
    let mut errors = 0;
    {
        let mut ops = shared.ops.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = ops.keys().copied().collect();
        names.sort_unstable();
        for name in names {
            let s = ops.get_mut(name).expect("the name came from the map");
            s.micros.sort_unstable();
            errors += s.errors;
            table.row(vec![
                name.to_string(),
                s.micros.len().to_string(),
                format!("{:.0}", s.micros.len() as f64 / elapsed),
                percentile(&s.micros, 0.50),
                percentile(&s.micros, 0.90),
                percentile(&s.micros, 0.99),
                percentile(&s.micros, 0.999),
                s.errors.to_string(),
            ]);
        }
    }
    println!(
        "scenario {:?}, {} clients, {} users ({:?}), {} limit(s), {elapsed:.1} s",
        args.scenario, args.concurrency, args.users, args.skew, args.limits
    );
    print!("{}", table.render());
    println!(
        "admitted {}, denied {}",
        shared.admitted.load(Ordering::Relaxed),
        shared.denied.load(Ordering::Relaxed)
    );
    let verdict = exactness(&client, &args, &shared).await;
    drop(own);
    match verdict {
        Ok(summary) => {
            println!("exactness: ok ({summary})");
            if errors > 0 {
                bail!("{errors} request(s) failed");
            }
            Ok(())
        }
        Err(e) => bail!("exactness: FAILED: {e:#}"),
    }
}

/// Reads usage back and compares it with what the server acknowledged.
async fn exactness(client: &Client, args: &BenchArgs, shared: &Shared) -> Result<String> {
    if args.scenario == Scenario::Mixed {
        // Let every reservation left to expire pass its TTL on the test clock.
        client
            .post("/v1/test/clock/advance", json!({"seconds": 2}))
            .await
            .context("advancing the test clock")?;
    }
    let committed = shared
        .committed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut users: Vec<usize> = match args.scenario {
        Scenario::HotUser => vec![0],
        Scenario::Check => (0..args.users.min(EXACTNESS_SAMPLE_USERS)).collect(),
        _ => committed.keys().copied().collect(),
    };
    users.sort_unstable();
    users.truncate(EXACTNESS_SAMPLE_USERS);
    let admitted = shared.admitted.load(Ordering::Relaxed);
    if args.scenario == Scenario::HotUser {
        ensure!(
            admitted <= args.quota,
            "admitted {admitted} over the quota of {}",
            args.quota
        );
    }
    for &u in &users {
        let usage = client
            .call(
                reqwest::Method::GET,
                &format!("/v1/users/{}/usage", user_id(u)),
                None,
            )
            .await?;
        let want = committed.get(&u).copied().unwrap_or(0);
        for limit in usage["limits"].as_array().into_iter().flatten() {
            let used = limit["used"].as_u64().unwrap_or(u64::MAX);
            let reserved = limit["reserved"].as_u64().unwrap_or(u64::MAX);
            let quota = limit["quota"].as_u64().unwrap_or(0);
            ensure!(
                used + reserved <= quota,
                "user {u}: used {used} + reserved {reserved} over quota {quota}"
            );
            ensure!(
                reserved == 0,
                "user {u}: {reserved} still reserved after the run"
            );
            ensure!(
                used == want,
                "user {u}: used {used}, but {want} was acknowledged as committed"
            );
        }
    }
    Ok(format!(
        "{} user(s) read back, used == acknowledged, nothing over quota",
        users.len()
    ))
}
