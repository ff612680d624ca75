//! What the bench drives: a Tollgate server over HTTP, or the Redis Lua reference script. Each
//! client gets a [`Conn`] of its own; both kinds answer the same operations.

use super::{quota, BenchArgs, Scenario};
use crate::redis_ref::{Persistence, RedisRef, RedisServer};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::input::TTL_SECONDS_DEFAULT;
use tollgate_server::key_format::key_form;
use tollgate_store::{KeyKind, Mode};

/// How long the bench waits for a server it started to listen, in seconds.
const SERVER_START_SECONDS: u64 = 30;
/// The credit pack of the credits scenario's plan document.
const CREDITS_PACK_ID: &str = "bench_credits";
/// Units of the one grant each user gets before a credits run: more than a run draws (a
/// billion reserve → commit pairs on one user).
pub(super) const CREDITS_GRANT_UNITS: u64 = 1_000_000_000;
/// Concurrent clients granting the credits before a run: enough to grant 10,000 users in
/// seconds, few enough not to overload the server.
const CREDITS_GRANT_CLIENTS: usize = 8;

/// Distinguishes this run's users from an earlier run's on the same server: random per
/// process, then one more for each run of the process.
static RUN: AtomicU32 = AtomicU32::new(0);

/// Gives the next run users of its own.
pub(super) fn new_run() {
    let _ = RUN.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |run| match run {
        0 => Some(rand::random::<u32>() | 1),
        n => Some(n.wrapping_add(2)),
    });
}

pub(super) fn user_id(i: usize) -> String {
    format!("bench_{:08x}_u{i}", RUN.load(Ordering::Relaxed))
}

/// A server the bench started, killed when the bench ends.
pub(super) struct OwnServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tollgate` itself, with the settings of the caller's environment removed: the bench's own
/// server always runs on SQLite in its temp dir.
fn own_command() -> Result<Command> {
    let exe = std::env::current_exe().context("cannot find the tollgate binary")?;
    let mut cmd = Command::new(exe);
    cmd.env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_DATA_DIR");
    Ok(cmd)
}

/// `init` on the temp dir, then `seed_events` rows (if any) loaded straight into its database.
fn init_and_seed(dir: &Path, events: u64, users: u64) -> Result<String> {
    let out = own_command()?
        .args(["init", "--json", "--data-dir"])
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `tollgate init`")?;
    ensure!(out.status.success(), "`tollgate init` failed");
    let keys: Value = serde_json::from_slice(&out.stdout).context("`init --json` output")?;
    let key = keys["keys"]["test"]["secret"]
        .as_str()
        .context("`init --json` printed no test secret key")?
        .to_string();
    if events == 0 {
        return Ok(key);
    }
    let started = std::time::Instant::now();
    tollgate_store_sqlite::seed_events(dir, events, users, |n| {
        eprint!("\rseeding events: {n} of {events}");
    })
    .map_err(|e| anyhow::anyhow!("seeding events: {e}"))?;
    eprintln!(" in {:.0} s", started.elapsed().as_secs_f64());
    Ok(key)
}

/// Whether `key` is shaped like a test secret key, in either form: `tg_sk_test_…`, or
/// `sk_test_…` minted before the `tg_` prefix. Only the shape; the server judges the key.
fn is_test_secret_key(key: &str) -> bool {
    key_form(key).is_some_and(|form| form.mode == Mode::Test && form.kind == KeyKind::Secret)
}

/// Starts `tollgate serve` on a temp data dir, first loading `seed` = (events, users) into it.
fn start_server(seed: Option<(u64, u64)>) -> Result<(OwnServer, String, String)> {
    let dir = tempfile::tempdir().context("cannot make a temp data dir")?;
    let (events, users) = seed.unwrap_or((0, 0));
    let key = init_and_seed(dir.path(), events, users)?;
    let mut child = own_command()?
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn,tollgate=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start `tollgate serve`")?;
    let stderr = child.stderr.take().context("no stderr from the server")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Drained to the end: the server's access lines must never fill the pipe and block it.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let url = line[i + "listening on ".len()..].trim().to_string();
                let _ = tx.send(url);
            }
        }
    });
    let server = OwnServer { child, _dir: dir };
    let url = rx
        .recv_timeout(Duration::from_secs(SERVER_START_SECONDS))
        .context("the server did not start")?;
    Ok((server, url, key))
}

pub(super) struct Http {
    http: reqwest::Client,
    url: String,
    auth: String,
}

impl Http {
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
    let limits: Vec<Value> = (0..args.limits)
        .map(|i| {
            json!({"id": format!("bench_{i}"), "quota": quota(args), "window": {"type": "lifetime"},
                   "match": [{"event": "bench.*"}]})
        })
        .collect();
    let mut doc = json!({"defaultPlan": "bench", "plans": [{"id": "bench", "limits": limits}]});
    if args.scenario == Scenario::Credits {
        doc["creditPacks"] = json!([{
            "id": CREDITS_PACK_ID, "name": "Bench credits",
            "items": [{"id": "bench_units", "quantity": CREDITS_GRANT_UNITS,
                       "match": [{"event": "bench.*"}]}]
        }]);
    }
    doc
}

/// The Redis reference script's parameters and its clock: real time plus an offset the
/// exactness check can move, like Tollgate's test clock.
pub(super) struct Redis {
    url: String,
    offset_ms: AtomicI64,
    quota: u64,
    limits: usize,
}

impl Redis {
    fn now_ms(&self) -> i64 {
        jiff::Timestamp::now().as_millisecond() + self.offset_ms.load(Ordering::Relaxed)
    }
}

pub(super) enum Backend {
    Tollgate {
        http: Arc<Http>,
        label: String,
        _own: Option<OwnServer>,
    },
    Redis {
        redis: Arc<Redis>,
        label: String,
        _own: Option<RedisServer>,
    },
}

impl Backend {
    /// The server at `--url`, or one started on a temp data dir; its test environment gets the
    /// bench's plan document.
    pub(super) async fn tollgate(args: &BenchArgs) -> Result<Backend> {
        let (own, url, key) = match (&args.url, &args.key) {
            (Some(url), Some(key)) => (None, url.trim_end_matches('/').to_string(), key.clone()),
            // `validate` refused --url without --key.
            _ => {
                eprintln!("starting a server on a temporary data dir");
                let seed = (args.seed_events > 0).then_some((args.seed_events, args.users as u64));
                let (server, url, key) =
                    tokio::task::spawn_blocking(move || start_server(seed)).await??;
                (Some(server), url, key)
            }
        };
        if !is_test_secret_key(&key) {
            bail!(
                "the bench replaces the plan document of the key's environment; \
                 give it a test secret key (tg_sk_test_…), never a live one"
            );
        }
        let label = match own {
            Some(_) if args.seed_events > 0 => format!(
                "tollgate (sqlite, own server, {} events stored)",
                args.seed_events
            ),
            Some(_) => "tollgate (sqlite, own server)".to_string(),
            None => format!("tollgate ({url})"),
        };
        let http = Http {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(args.concurrency + 1)
                .build()?,
            url,
            auth: format!("Bearer {key}"),
        };
        http.call(reqwest::Method::PUT, "/v1/plans", Some(plan_document(args)))
            .await
            .context("applying the bench plan document")?;
        eprintln!(
            "note: the test environment's plan document is now the bench's ({} limit(s))",
            args.limits
        );
        Ok(Backend::Tollgate {
            http: Arc::new(http),
            label,
            _own: own,
        })
    }

    /// The Redis at `url`, or a redis-server started on a temp dir with `persistence`.
    pub(super) async fn redis(
        args: &BenchArgs,
        url: Option<&str>,
        persistence: Persistence,
    ) -> Result<Backend> {
        let (own, url, label) = match url {
            Some(url) => (None, url.to_string(), format!("redis lua ({url})")),
            None => {
                eprintln!("starting redis-server ({persistence:?}) on a temporary dir");
                let server =
                    tokio::task::spawn_blocking(move || RedisServer::start(persistence)).await??;
                let url = server.url().to_string();
                let label = match server.persistence() {
                    Persistence::Durable => "redis lua, durable (appendfsync always)",
                    Persistence::None => "redis lua, no persistence",
                };
                (Some(server), url, label.to_string())
            }
        };
        Ok(Backend::Redis {
            redis: Arc::new(Redis {
                url,
                offset_ms: AtomicI64::new(0),
                quota: quota(args),
                limits: args.limits,
            }),
            label,
            _own: own,
        })
    }

    /// Grants every one of `users` one bench pack, from a few concurrent clients. The
    /// externalRef names the user, so granting a user again grants nothing more.
    pub(super) async fn grant_credits(&self, users: usize) -> Result<()> {
        let Backend::Tollgate { http, .. } = self else {
            bail!("the Redis reference has no credits");
        };
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(CREDITS_GRANT_CLIENTS);
        for _ in 0..CREDITS_GRANT_CLIENTS.min(users) {
            let (http, next) = (http.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= users {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let user = user_id(i);
                    let body = json!({"userId": user, "packId": CREDITS_PACK_ID,
                                      "externalRef": format!("{user}_grant"), "source": "grant"});
                    let r = http
                        .post("/v1/credits/grants", body)
                        .await
                        .with_context(|| format!("granting credits to {user}"))?;
                    let units: u64 = r["grants"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g["quantity"].as_u64())
                        .sum();
                    ensure!(
                        units == CREDITS_GRANT_UNITS,
                        "granting credits to {user}: {units} units granted: {r}"
                    );
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }

    pub(super) fn label(&self) -> String {
        match self {
            Backend::Tollgate { label, .. } | Backend::Redis { label, .. } => label.clone(),
        }
    }

    /// A client's own connection (HTTP clients share reqwest's pool, one connection each).
    pub(super) async fn connect(&self) -> Result<Conn> {
        Ok(match self {
            Backend::Tollgate { http, .. } => Conn::Http(http.clone()),
            Backend::Redis { redis, .. } => Conn::Redis(
                Box::new(RedisRef::connect(&redis.url).await?),
                redis.clone(),
            ),
        })
    }
}

pub(super) enum Conn {
    Http(Arc<Http>),
    Redis(Box<RedisRef>, Arc<Redis>),
}

/// An admitted reserve.
pub(super) struct Reservation {
    pub(super) id: String,
    /// The units credits hold for it (always 0 on Redis).
    pub(super) credits_held: u64,
}

impl Conn {
    /// The reservation, or `None` when denied.
    pub(super) async fn reserve(
        &mut self,
        user: usize,
        ttl: Option<u32>,
    ) -> Result<Option<Reservation>> {
        match self {
            Conn::Http(h) => {
                let mut body = json!({"userId": user_id(user), "event": "bench.op"});
                if let Some(ttl) = ttl {
                    body["ttlSeconds"] = json!(ttl);
                }
                let r = h.post("/v1/reserve", body).await?;
                Ok(r["reservationId"].as_str().map(|id| Reservation {
                    id: id.to_string(),
                    credits_held: r["credits"]["held"].as_u64().unwrap_or(0),
                }))
            }
            Conn::Redis(c, r) => {
                let ttl_ms = u64::from(ttl.unwrap_or(TTL_SECONDS_DEFAULT)) * 1000;
                let id = c
                    .reserve(&user_id(user), 1, r.quota, r.limits, ttl_ms, r.now_ms())
                    .await?;
                Ok(id.map(|id| Reservation {
                    id,
                    credits_held: 0,
                }))
            }
        }
    }

    pub(super) async fn commit(&mut self, user: usize, id: &str, quantity: u64) -> Result<()> {
        match self {
            Conn::Http(h) => {
                let path = format!("/v1/reservations/{id}/commit");
                h.post(&path, json!({"quantity": quantity})).await.map(drop)
            }
            Conn::Redis(c, r) => {
                let done = c
                    .commit(&user_id(user), id, quantity, r.limits, r.now_ms())
                    .await?;
                ensure!(done, "commit {id}: the reservation is not pending");
                Ok(())
            }
        }
    }

    pub(super) async fn release(&mut self, user: usize, id: &str) -> Result<()> {
        match self {
            Conn::Http(h) => {
                let path = format!("/v1/reservations/{id}/release");
                h.post(&path, json!({})).await.map(drop)
            }
            Conn::Redis(c, r) => {
                let done = c.release(&user_id(user), id, r.limits, r.now_ms()).await?;
                ensure!(done, "release {id}: the reservation is not pending");
                Ok(())
            }
        }
    }

    /// Whether the unit was counted.
    pub(super) async fn track(&mut self, user: usize) -> Result<bool> {
        match self {
            Conn::Http(h) => {
                let r = h
                    .post(
                        "/v1/track",
                        json!({"userId": user_id(user), "event": "bench.op"}),
                    )
                    .await?;
                Ok(r["allowed"].as_bool().unwrap_or(false))
            }
            Conn::Redis(c, r) => {
                c.track(&user_id(user), 1, r.quota, r.limits, r.now_ms())
                    .await
            }
        }
    }

    pub(super) async fn check(&mut self, user: usize) -> Result<()> {
        match self {
            Conn::Http(h) => h
                .post(
                    "/v1/check",
                    json!({"userId": user_id(user), "event": "bench.op"}),
                )
                .await
                .map(drop),
            Conn::Redis(c, r) => c
                .check(&user_id(user), r.quota, r.limits, r.now_ms())
                .await
                .map(drop),
        }
    }

    /// `(used, reserved, quota)` of each limit the user has.
    pub(super) async fn usage(&mut self, user: usize) -> Result<Vec<(u64, u64, u64)>> {
        match self {
            Conn::Http(h) => {
                let path = format!("/v1/users/{}/usage", user_id(user));
                let usage = h.call(reqwest::Method::GET, &path, None).await?;
                let field = |l: &Value, f: &str| l[f].as_u64().unwrap_or(u64::MAX);
                Ok(usage["limits"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| (field(l, "used"), field(l, "reserved"), field(l, "quota")))
                    .collect())
            }
            Conn::Redis(c, r) => {
                let (used, reserved) = c.usage(&user_id(user), r.limits, r.now_ms()).await?;
                Ok(vec![(used, reserved, r.quota)])
            }
        }
    }

    /// `(available, held)` of the user's bench credits (Tollgate only).
    pub(super) async fn credits(&mut self, user: usize) -> Result<(u64, u64)> {
        let Conn::Http(h) = self else {
            bail!("the Redis reference has no credits");
        };
        let path = format!("/v1/users/{}/credits", user_id(user));
        let credits = h.call(reqwest::Method::GET, &path, None).await?;
        // A pack whose grants are all spent is not listed: nothing available, nothing held.
        let field = |p: &Value, f: &str| p[f].as_u64().unwrap_or(u64::MAX);
        Ok(credits["packs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["packId"] == CREDITS_PACK_ID)
            .fold((0, 0), |(a, h), p| {
                (
                    a.saturating_add(field(p, "available")),
                    h.saturating_add(field(p, "held")),
                )
            }))
    }

    /// Moves the target's clock forward (the test clock, or the Redis script's clock).
    pub(super) async fn advance_clock(&mut self, seconds: i64) -> Result<()> {
        match self {
            Conn::Http(h) => h
                .post("/v1/test/clock/advance", json!({"seconds": seconds}))
                .await
                .map(drop),
            Conn::Redis(_, r) => {
                r.offset_ms.fetch_add(seconds * 1000, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_secret_keys_of_either_form_are_taken() {
        assert!(is_test_secret_key("tg_sk_test_abc"));
        assert!(is_test_secret_key("sk_test_abc"));
        for key in [
            "tg_sk_live_abc",
            "sk_live_abc",
            "tg_pk_test_abc",
            "pk_test_abc",
            "tg_admin_abc",
            "rk_test_abc",
            "garbage",
        ] {
            assert!(!is_test_secret_key(key), "{key}");
        }
    }
}
