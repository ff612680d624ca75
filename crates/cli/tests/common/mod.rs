//! The one helper every black-box test goes through (STYLE.md 12).
//!
//! It starts the real `tollgate` binary on port 0 with a fresh data dir (`init --json`, then
//! `serve`), drains its stderr so it never blocks, and offers a typed HTTP client whose helpers
//! follow `shared/API.md`. A change of the API then edits this file, not every test.
//!
//! Two rules are enforced here for every test: a 5xx answer fails the test at once (API.md §2:
//! a 5xx never appears in normal operation), and every non-2xx answer checked with `Resp::err`
//! must have the body `{"error": {"code", "message"}}`.
//!
//! The storage backend follows the environment: by default every server runs on the embedded
//! SQLite store in its data dir; with `TOLLGATE_TEST_BACKEND=postgres` every server gets a fresh
//! PostgreSQL database (`tg_t_<random>`, created through `TOLLGATE_TEST_POSTGRES_URL` and dropped
//! with the server), so the whole suite runs unchanged against PostgreSQL.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use reqwest::header::HeaderMap;
pub use reqwest::Method;
pub use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod credits;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// How long `init` and `serve` may take to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// Per-request timeout of the test client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of server log kept to print when a test fails.
const LOG_LINES_MAX: usize = 400;

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;
/// 2^53 - 1, the largest quantity the API accepts.
pub const QUANTITY_MAX: u64 = (1 << 53) - 1;

/// What `tollgate init --json` prints.
#[derive(Clone, Debug)]
pub struct Keys {
    pub admin_token: String,
    pub project_id: String,
    pub test_secret: String,
    pub test_publishable: String,
    pub live_secret: String,
    pub live_publishable: String,
}

impl Keys {
    fn from_json(v: &Value) -> Keys {
        let s = |p: &str| -> String {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("`init --json` output lacks {p}: {v}"))
                .to_string()
        };
        Keys {
            admin_token: s("/adminToken"),
            project_id: s("/projectId"),
            test_secret: s("/keys/test/secret"),
            test_publishable: s("/keys/test/publishable"),
            live_secret: s("/keys/live/secret"),
            live_publishable: s("/keys/live/publishable"),
        }
    }
}

type Log = Arc<Mutex<VecDeque<String>>>;

/// A running `tollgate serve` on its own data dir (and, on PostgreSQL, its database).
pub struct TestServer {
    data_dir: tempfile::TempDir,
    child: Option<Child>,
    pub addr: String,
    pub base_url: String,
    pub keys: Keys,
    http: reqwest::Client,
    log: Log,
    /// The PostgreSQL database this server runs on; dropped (with the database) after the server
    /// is killed, once no other server shares it. `None` on SQLite.
    database: Option<Arc<PgDatabase>>,
    /// What `--database-url` the server gets (it may point at a proxy in front of `database`).
    database_url: Option<String>,
    /// Extra arguments of every `serve` (also after a restart).
    serve_args: Vec<String>,
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("TOLLGATE_DATA_DIR")
        .env_remove("TOLLGATE_LISTEN")
        .env_remove("TOLLGATE_DATABASE_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(128)
        .build()
        .expect("reqwest client builds")
}

/// Finds `ADDR` in a log line containing `listening on http://ADDR` (log prefixes and ANSI
/// colours allowed).
fn parse_listen_line(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let at = plain.find("listening on http://")?;
    let rest = &plain[at + "listening on http://".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    (!addr.is_empty()).then_some(addr)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl TestServer {
    /// `init --json` on a fresh temp dir (and a fresh database on PostgreSQL), then `serve` on
    /// port 0.
    pub async fn start() -> TestServer {
        TestServer::builder().start().await
    }

    /// A server with more options: a shared database, no `init`, extra `serve` arguments.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A server with the given plan document already applied in the test environment.
    pub async fn with_plans(doc: Value) -> (TestServer, Client) {
        let server = TestServer::start().await;
        let client = server.client();
        client.put_plans(doc).await.ok();
        (server, client)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The PostgreSQL database of this server; `None` on SQLite.
    pub fn database(&self) -> Option<&Arc<PgDatabase>> {
        self.database.as_ref()
    }

    /// `--database-url` of this server; `None` on SQLite.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// Is the server process still running (it did not exit or crash by itself)?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("server is running");
        child.id().expect("server has a pid") as i32
    }

    /// SIGKILL, no chance to flush anything.
    pub async fn kill9(&mut self) {
        let pid = self.pid();
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid} failed");
        let mut child = self.child.take().expect("running");
        let _ = child.wait().await;
    }

    /// SIGTERM and wait for the process to exit by itself.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM).await
    }

    /// SIGINT (Ctrl-C) and wait for the process to exit by itself.
    pub async fn interrupt(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGINT).await
    }

    async fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let pid = self.pid();
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill -{signal} {pid} failed");
        let mut child = self.child.take().expect("running");
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for server"),
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "server did not exit within {SHUTDOWN_TIMEOUT:?} after signal {signal}\n{}",
                    self.log_tail(60)
                );
            }
        }
    }

    /// `serve` again on the same data dir (stopping it gracefully first if it runs). The port
    /// changes: take new clients afterwards.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        let (child, addr) = spawn_serve(
            self.data_dir.path(),
            self.database_url.as_deref(),
            &self.serve_args,
            self.log.clone(),
        )
        .await;
        self.child = Some(child);
        self.base_url = format!("http://{addr}");
        self.addr = addr;
        self.http = http_client();
    }

    /// Last lines the server wrote to stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn client_with(&self, key: &str) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base_url.clone(),
            key: Some(key.to_string()),
            tolerate_overload: false,
            any_status: false,
        }
    }

    /// Test-environment secret key: the default client of every test.
    pub fn client(&self) -> Client {
        self.client_with(&self.keys.test_secret)
    }

    pub fn live(&self) -> Client {
        self.client_with(&self.keys.live_secret)
    }

    pub fn publishable(&self) -> Client {
        self.client_with(&self.keys.test_publishable)
    }

    pub fn admin(&self) -> Client {
        self.client_with(&self.keys.admin_token)
    }

    pub fn anonymous(&self) -> Client {
        Client {
            key: None,
            ..self.client()
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- tollgate server log (last lines) ----\n{}\n----",
                self.log_tail(80)
            );
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // Reap it before its database is dropped, so it cannot open a connection again.
            if self.database.is_some() {
                for _ in 0..200 {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// How to start a [`TestServer`]; `TestServer::start()` is `TestServer::builder().start()`.
#[derive(Default)]
pub struct ServerBuilder {
    database: Option<Arc<PgDatabase>>,
    database_url: Option<String>,
    keys: Option<Keys>,
    first_start: bool,
    serve_args: Vec<String>,
}

impl ServerBuilder {
    /// Run on this PostgreSQL database (shared with other servers) instead of a fresh one.
    pub fn database(mut self, database: Arc<PgDatabase>) -> Self {
        self.database = Some(database);
        self
    }

    /// Give the server (and `init`) this `--database-url` instead of the database's own, e.g.
    /// a proxy's address in front of it. Needs [`ServerBuilder::database`].
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// The database is already initialized (another node ran `init`): skip `init` and use
    /// these keys.
    pub fn keys(mut self, keys: Keys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// No `init`: `serve` starts on an empty data dir (or database), creates the install
    /// itself, and the keys are the ones it prints on stderr.
    pub fn first_start(mut self) -> Self {
        self.first_start = true;
        self
    }

    /// One more argument for `serve`, e.g. `--request-timeout-ms`.
    pub fn serve_arg(mut self, arg: impl Into<String>) -> Self {
        self.serve_args.push(arg.into());
        self
    }

    pub async fn start(self) -> TestServer {
        assert!(
            self.database_url.is_none() || self.database.is_some(),
            "ServerBuilder::database_url needs ServerBuilder::database"
        );
        let database = match self.database {
            Some(db) => Some(db),
            None => match Backend::from_env() {
                Backend::Sqlite => None,
                Backend::Postgres { admin_url } => {
                    Some(Arc::new(PgDatabase::create(&admin_url).await))
                }
            },
        };
        let database_url = self
            .database_url
            .or_else(|| database.as_ref().map(|db| db.url()));
        let data_dir = tempfile::tempdir().expect("temp dir");
        let keys = match self.keys {
            Some(keys) => Some(keys),
            None if self.first_start => None,
            None => Some(run_init(data_dir.path(), database_url.as_deref()).await),
        };
        let log: Log = Arc::new(Mutex::new(VecDeque::new()));
        let (child, addr) = spawn_serve(
            data_dir.path(),
            database_url.as_deref(),
            &self.serve_args,
            log.clone(),
        )
        .await;
        let keys = keys.unwrap_or_else(|| keys_printed_by_serve(&log));
        TestServer {
            data_dir,
            child: Some(child),
            base_url: format!("http://{addr}"),
            addr,
            keys,
            http: http_client(),
            log,
            database,
            database_url,
            serve_args: self.serve_args,
        }
    }
}

/// `tollgate init --data-dir DIR [--database-url URL] --json`; returns the keys it printed.
async fn run_init(dir: &Path, database_url: Option<&str>) -> Keys {
    let dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["init", "--data-dir", dir, "--json"];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let init = command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(STARTUP_TIMEOUT, init)
        .await
        .expect("`tollgate init` timed out")
        .expect("`tollgate init` could not be run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`tollgate init --json` failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let doc: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("`tollgate init --json` must print one JSON object on stdout ({e}):\nstdout: {stdout}\nstderr: {stderr}")
    });
    Keys::from_json(&doc)
}

/// The secrets a first `serve` printed on stderr: the JSON object of `init --json`, on its own
/// line before `listening on`.
fn keys_printed_by_serve(log: &Log) -> Keys {
    let log = log.lock().unwrap();
    let printed = log
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|v| v.get("adminToken").is_some());
    match printed {
        Some(v) => Keys::from_json(&v),
        None => panic!(
            "the first `tollgate serve` printed no secrets on stderr:\n{}",
            log.iter().cloned().collect::<Vec<_>>().join("\n")
        ),
    }
}

async fn spawn_serve(
    dir: &Path,
    database_url: Option<&str>,
    extra: &[String],
    log: Log,
) -> (Child, String) {
    let dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["serve", "--data-dir", dir, "--listen", "127.0.0.1:0"];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    args.extend(extra.iter().map(String::as_str));
    let mut child = command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn `tollgate serve`");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let drain_log = log.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr);
        let mut tx = Some(tx);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if tx.is_some() {
                if let Some(addr) = parse_listen_line(&line) {
                    let _ = tx.take().expect("checked").send(addr);
                }
            }
            let mut log = drain_log.lock().unwrap();
            if log.len() >= LOG_LINES_MAX {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
    let tail = |log: &Log| {
        log.lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    };
    match tokio::time::timeout(STARTUP_TIMEOUT, rx).await {
        Ok(Ok(addr)) => (child, addr),
        Ok(Err(_)) => {
            let status = child.wait().await;
            panic!(
                "`tollgate serve` exited ({status:?}) before logging `listening on http://ADDR`:\n{}",
                tail(&log)
            )
        }
        Err(_) => panic!(
            "`tollgate serve` did not log `listening on http://ADDR` within {STARTUP_TIMEOUT:?}:\n{}",
            tail(&log)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Storage backends

/// Env: which store the suite's servers run on (`sqlite`, the default, or `postgres`).
pub const BACKEND_ENV: &str = "TOLLGATE_TEST_BACKEND";
/// Env: a PostgreSQL URL whose user may create databases, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`. Test databases are created beside its database.
pub const POSTGRES_URL_ENV: &str = "TOLLGATE_TEST_POSTGRES_URL";
/// The name prefix of every test database (scripts/test-postgres.sh drops leftovers by it).
pub const TEST_DATABASE_PREFIX: &str = "tg_t_";
/// How long creating or dropping a test database may take.
const DATABASE_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Backend {
    Sqlite,
    Postgres { admin_url: String },
}

impl Backend {
    /// `TOLLGATE_TEST_BACKEND`: unset, empty or `sqlite` → SQLite; `postgres` → PostgreSQL
    /// through `TOLLGATE_TEST_POSTGRES_URL`, which must then be set.
    pub fn from_env() -> Backend {
        let backend = std::env::var(BACKEND_ENV).unwrap_or_default();
        match backend.trim().to_ascii_lowercase().as_str() {
            "" | "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => match postgres_url_from_env() {
                Some(admin_url) => Backend::Postgres { admin_url },
                None => panic!(
                    "{BACKEND_ENV}=postgres needs {POSTGRES_URL_ENV}, a PostgreSQL URL whose user \
                     may create databases, e.g. postgres://postgres@127.0.0.1:5432/test"
                ),
            },
            other => panic!("{BACKEND_ENV}={other:?}: expected `sqlite` or `postgres`"),
        }
    }

    pub fn is_postgres() -> bool {
        matches!(Backend::from_env(), Backend::Postgres { .. })
    }
}

/// `TOLLGATE_TEST_POSTGRES_URL`, if set and not empty.
pub fn postgres_url_from_env() -> Option<String> {
    std::env::var(POSTGRES_URL_ENV)
        .ok()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// The parts of a `postgres://[user[:password]@]host[:port][/database][?params]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgUrl {
    /// `postgres://user@` (scheme and user info, verbatim).
    prefix: String,
    /// `host:port` (verbatim; `host` alone when the port is left out).
    pub host_port: String,
    pub database: String,
    /// `?…` or empty.
    query: String,
}

impl PgUrl {
    #[track_caller]
    pub fn parse(url: &str) -> PgUrl {
        let scheme_end = ["postgres://", "postgresql://"]
            .iter()
            .find(|s| url.starts_with(*s))
            .map(|s| s.len())
            .unwrap_or_else(|| {
                panic!("{POSTGRES_URL_ENV} must be a postgres:// URL (not key=value), got {url:?}")
            });
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let (user_info, host_port) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let tail = &rest[authority_end..];
        let (path, query) = match tail.find('?') {
            Some(q) => (&tail[..q], &tail[q..]),
            None => (tail, ""),
        };
        PgUrl {
            prefix: format!("{}{user_info}", &url[..scheme_end]),
            host_port: host_port.to_string(),
            database: path.trim_start_matches('/').to_string(),
            query: query.to_string(),
        }
    }

    /// The `(host, port)` to open a TCP connection to (port 5432 when left out).
    pub fn socket(&self) -> (String, u16) {
        let port = |p: &str| -> u16 {
            p.parse()
                .unwrap_or_else(|_| panic!("bad port in {:?}", self.host_port))
        };
        if let Some(rest) = self.host_port.strip_prefix('[') {
            let (host, tail) = rest
                .split_once(']')
                .unwrap_or_else(|| panic!("bad IPv6 host in {:?}", self.host_port));
            return (host.to_string(), tail.strip_prefix(':').map_or(5432, port));
        }
        match self.host_port.rsplit_once(':') {
            Some((host, p)) => (host.to_string(), port(p)),
            None => (self.host_port.clone(), 5432),
        }
    }

    pub fn with_database(&self, database: &str) -> PgUrl {
        PgUrl {
            database: database.to_string(),
            ..self.clone()
        }
    }

    pub fn with_host_port(&self, host_port: &str) -> PgUrl {
        PgUrl {
            host_port: host_port.to_string(),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}/{}{}",
            self.prefix, self.host_port, self.database, self.query
        )
    }
}

/// A fresh PostgreSQL database `tg_t_<random>`, dropped (its connections terminated first)
/// when the last owner lets go of it.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
}

impl PgDatabase {
    /// `CREATE DATABASE tg_t_<random>` through `admin_url`.
    pub async fn create(admin_url: &str) -> PgDatabase {
        let name = format!("{TEST_DATABASE_PREFIX}{:016x}", unique_u64());
        let sql = format!("CREATE DATABASE \"{name}\"");
        let admin = admin_url.to_string();
        let created = tokio::time::timeout(DATABASE_ADMIN_TIMEOUT, async {
            let client = pg_connect(&admin).await?;
            client.batch_execute(&sql).await
        })
        .await;
        match created {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{sql} through {POSTGRES_URL_ENV} failed: {e:?}"),
            Err(_) => panic!("{sql} took over {DATABASE_ADMIN_TIMEOUT:?}"),
        }
        PgDatabase {
            admin_url: admin_url.to_string(),
            name,
        }
    }

    /// The URL of this database (the admin URL with its database name replaced).
    pub fn url(&self) -> String {
        self.pg_url().to_string()
    }

    pub fn pg_url(&self) -> PgUrl {
        PgUrl::parse(&self.admin_url).with_database(&self.name)
    }

    /// A direct connection to this database, for tests that look inside.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e:?}", self.name))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime (where blocking on another future is not allowed): the
        // cleanup gets a thread and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::time::timeout(DATABASE_ADMIN_TIMEOUT, drop_database(&admin, &name))
                    .await
                    .map_err(|_| "timed out".to_string())?
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let client = pg_connect(admin_url).await.map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..20 {
        let terminate = client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await;
        match client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
        {
            Ok(()) => return Ok(()),
            // "is being accessed by other users": a backend was still on its way out.
            Err(e) => last = format!("{e:?} (terminating its backends: {terminate:?})"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// A client on `url`, its connection driven by a spawned task.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// 64 bits unlikely to repeat across processes and calls: a randomly keyed hash of the pid, the
/// time and a counter.
fn unique_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// One answer: status, headers, raw text and the parsed JSON (`Null` if not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    /// Asserts a 2xx answer and returns its JSON body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{} answered {} (expected 2xx): {}",
            self.what,
            self.status,
            self.text
        );
        self.body
    }

    /// Asserts status, the §2 error shape and the code; returns the `error` object.
    #[track_caller]
    pub fn err(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status, status,
            "{} answered {} (expected {status} {code}): {}",
            self.what, self.status, self.text
        );
        let error = assert_error_shape(&self.what, &self.body);
        assert_eq!(
            error["code"], code,
            "{} answered code {} (expected {code}): {}",
            self.what, error["code"], self.text
        );
        error
    }

    /// Asserts `400 invalid_request` whose `field` names `field` exactly.
    #[track_caller]
    pub fn invalid(&self, field: &str) -> Value {
        let error = self.err(400, "invalid_request");
        assert_eq!(
            error["field"], field,
            "{}: `field` should name {field:?}: {}",
            self.what, self.text
        );
        error
    }

    /// Asserts `400 invalid_request` whose `field` is a path containing `part`.
    #[track_caller]
    pub fn invalid_path_containing(&self, part: &str) -> Value {
        let error = self.err(400, "invalid_request");
        let field = error["field"].as_str().unwrap_or_else(|| {
            panic!("{}: 400 without a `field` string: {}", self.what, self.text)
        });
        assert!(
            field.contains(part),
            "{}: `field` {field:?} should name a path containing {part:?}: {}",
            self.what,
            self.text
        );
        error
    }
}

/// `{"error": {"code": "...", "message": "...", ...}}`; returns the `error` object.
#[track_caller]
pub fn assert_error_shape(what: &str, body: &Value) -> Value {
    let error = body
        .get("error")
        .filter(|e| e.is_object())
        .unwrap_or_else(|| panic!("{what}: error body must be {{\"error\": {{...}}}}, got {body}"));
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: error.code must be a non-empty string: {body}"
    );
    assert!(
        error["message"].is_string(),
        "{what}: error.message must be a string: {body}"
    );
    error.clone()
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub key: Option<String>,
    /// Load tests set this: a `503`/`429` is then returned instead of failing the test.
    pub tolerate_overload: bool,
    /// Outage tests set this: every status is returned, a `500` too, for the test to judge.
    pub any_status: bool,
}

impl Client {
    pub fn with_key(&self, key: &str) -> Client {
        Client {
            key: Some(key.to_string()),
            ..self.clone()
        }
    }

    pub fn tolerating_overload(&self) -> Client {
        Client {
            tolerate_overload: true,
            ..self.clone()
        }
    }

    /// A client that returns every answer, a 5xx too, instead of failing the test.
    pub fn accepting_any_status(&self) -> Client {
        Client {
            any_status: true,
            ..self.clone()
        }
    }

    /// The lowest-level call: any method, path, key, content type and raw body. Errors are
    /// transport errors only (e.g. the server was killed).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Resp, reqwest::Error> {
        let what = format!("{method} {path}");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(key) = key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await?;
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let overload = matches!(status, 429 | 503);
        assert!(
            status < 500 || self.any_status || (self.tolerate_overload && overload),
            "{what} answered {status}: a 5xx must never appear: {text}"
        );
        Ok(Resp {
            what,
            status,
            headers,
            text,
            body,
        })
    }

    /// POST a JSON body with extra headers (e.g. `Idempotency-Key`).
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Resp {
        let what = format!("POST {path}");
        let mut req = self
            .http
            .post(format!("{}{}", self.base, path))
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"));
        if let Some(key) = &self.key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: transport error: {e}"));
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body");
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(status < 500, "{what} answered {status}: {text}");
        Resp {
            what,
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let what = format!("{method} {path}");
        self.try_send(method, path, key, content_type, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: transport error: {e}"))
    }

    /// Raw request with an explicit key (`None`: no `Authorization` header) and a JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let (ct, bytes) = match body {
            Some(b) => (
                Some("application/json"),
                Some(serde_json::to_vec(&b).expect("json")),
            ),
            None => (None, None),
        };
        self.send(method, path, key, ct, bytes).await
    }

    /// A request with a verbatim `Authorization` header value (malformed-header tests).
    pub async fn request_with_authorization(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        body: Value,
    ) -> Resp {
        let what = format!("{method} {path}");
        let res = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Authorization", authorization)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: transport error: {e}"));
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        assert!(
            status < 500,
            "{what} answered {status}: a 5xx must never appear: {text}"
        );
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            what,
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Resp, reqwest::Error> {
        let (ct, bytes) = match body {
            Some(b) => (
                Some("application/json"),
                Some(serde_json::to_vec(&b).expect("json")),
            ),
            None => (None, None),
        };
        self.try_send(method, path, self.key.as_deref(), ct, bytes)
            .await
    }

    /// A request with this client's key.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.request(method, path, self.key.as_deref(), body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    // --- §5 plans
    pub async fn put_plans(&self, doc: Value) -> Resp {
        self.put("/v1/plans", doc).await
    }
    pub async fn get_plans(&self) -> Resp {
        self.get("/v1/plans").await
    }
    pub async fn get_plan(&self, id: &str) -> Resp {
        self.get(&format!("/v1/plans/{id}")).await
    }

    // --- §4 metering
    pub async fn reserve(&self, body: Value) -> Resp {
        self.post("/v1/reserve", body).await
    }
    pub async fn commit(&self, id: &str, body: Value) -> Resp {
        self.post(&format!("/v1/reservations/{id}/commit"), body)
            .await
    }
    pub async fn release(&self, id: &str, body: Value) -> Resp {
        self.post(&format!("/v1/reservations/{id}/release"), body)
            .await
    }
    pub async fn extend(&self, id: &str, ttl_seconds: u64) -> Resp {
        self.post(
            &format!("/v1/reservations/{id}/extend"),
            json!({ "ttlSeconds": ttl_seconds }),
        )
        .await
    }
    pub async fn get_reservation(&self, id: &str) -> Resp {
        self.get(&format!("/v1/reservations/{id}")).await
    }
    pub async fn track(&self, body: Value) -> Resp {
        self.post("/v1/track", body).await
    }
    pub async fn check(&self, body: Value) -> Resp {
        self.post("/v1/check", body).await
    }
    pub async fn usage(&self, user: &str) -> Resp {
        self.get(&format!("/v1/users/{user}/usage")).await
    }
    pub async fn usage_for_event(&self, user: &str, event: &str) -> Resp {
        self.get(&format!("/v1/users/{user}/usage?event={event}"))
            .await
    }

    /// Reserve `quantity` of `event` for `user`; returns the 200 answer (allowed or not).
    pub async fn reserve_q(&self, user: &str, event: &str, quantity: u64) -> Value {
        self.reserve(json!({"userId": user, "event": event, "quantity": quantity}))
            .await
            .ok()
    }
    /// Reserve that must be allowed; returns the reservation id.
    #[track_caller]
    pub fn must_allow(answer: &Value) -> String {
        assert_eq!(
            answer["allowed"], true,
            "reserve should be allowed: {answer}"
        );
        answer["reservationId"]
            .as_str()
            .expect("reservationId")
            .to_string()
    }
    /// Track `quantity` of `event` for `user` (not enforced); returns the answer.
    pub async fn track_q(&self, user: &str, event: &str, quantity: u64) -> Value {
        self.track(json!({"userId": user, "event": event, "quantity": quantity}))
            .await
            .ok()
    }
    /// The user's limit state `limit_id` from the usage endpoint.
    pub async fn limit_state(&self, user: &str, limit_id: &str) -> Value {
        let usage = self.usage(user).await.ok();
        limit(&usage, limit_id).clone()
    }

    // --- §6 subscriptions
    pub async fn subscribe(&self, body: Value) -> Resp {
        self.post("/v1/subscriptions", body).await
    }
    pub async fn get_subscription(&self, user: &str) -> Resp {
        self.get(&format!("/v1/subscriptions/{user}")).await
    }
    pub async fn history(&self, user: &str) -> Resp {
        self.get(&format!("/v1/subscriptions/{user}/history")).await
    }
    pub async fn cancel(&self, body: Value) -> Resp {
        self.post("/v1/subscriptions/cancel", body).await
    }

    // --- §7 test clock
    pub async fn clock(&self) -> Resp {
        self.get("/v1/test/clock").await
    }
    /// The test environment's `now`, in unix seconds (milliseconds dropped).
    pub async fn now(&self) -> i64 {
        let clock = self.clock().await.ok();
        ts_secs(&clock["now"])
    }
    pub async fn advance_clock(&self, seconds: i64) -> Value {
        assert!(seconds >= 0, "the test clock only moves forward");
        self.post("/v1/test/clock/advance", json!({ "seconds": seconds }))
            .await
            .ok()
    }
    /// Moves the test clock to `target` (unix seconds; must be in the future).
    pub async fn advance_to(&self, target: i64) {
        let now = self.now().await;
        assert!(
            target >= now,
            "cannot move the test clock back ({target} < {now})"
        );
        self.advance_clock(target - now).await;
    }
    /// Moves the test clock to the next `hour:00:00Z` at least a minute away and returns it.
    /// Calendar assertions then cannot be upset by a real midnight passing mid-test.
    pub async fn advance_to_next_utc_hour(&self, hour: i64) -> i64 {
        let now = self.now().await;
        let mut target = now.div_euclid(DAY) * DAY + hour * HOUR;
        while target < now + 60 {
            target += DAY;
        }
        self.advance_to(target).await;
        target
    }
}

// ---------------------------------------------------------------------------------------------
// Reading answers

/// The limit state with `limitId == id` in `v["limits"]`.
#[track_caller]
pub fn limit<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("answer has no `limits` array: {v}"))
        .iter()
        .find(|l| l["limitId"] == id)
        .unwrap_or_else(|| panic!("answer has no limit {id:?}: {v}"))
}

/// Sorted `limitId`s of `v["limits"]`.
pub fn limit_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("answer has no `limits` array: {v}"))
        .iter()
        .map(|l| l["limitId"].as_str().expect("limitId string").to_string())
        .collect();
    ids.sort();
    ids
}

/// Sorted strings of a JSON array (e.g. `deniedBy`, `reasons`).
#[track_caller]
pub fn strs(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected strings in {v}"))
                .to_string()
        })
        .collect();
    out.sort();
    out
}

pub fn sorted(items: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// Integer field; panics if absent or not an integer (a float is a failure: API.md §1).
#[track_caller]
pub fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("field {field:?} should be an integer in {v}"))
}

/// Asserts the `used`/`reserved`/`remaining`/`quota` numbers of a limit state, and the §3 rule
/// `remaining = max(0, quota - used - reserved)`.
#[track_caller]
pub fn assert_counts(state: &Value, quota: i64, used: i64, reserved: i64) {
    let got = (
        int(state, "quota"),
        int(state, "used"),
        int(state, "reserved"),
    );
    assert_eq!(
        got,
        (quota, used, reserved),
        "(quota, used, reserved) of {}: {state}",
        state["limitId"]
    );
    assert_eq!(
        int(state, "remaining"),
        (quota - used - reserved).max(0),
        "remaining must be max(0, quota - used - reserved): {state}"
    );
}

/// A list answer: the body if it is an array, else the first array-valued field of the object
/// (API.md leaves the envelope of some lists open).
#[track_caller]
pub fn rows(v: &Value) -> Vec<Value> {
    if let Some(a) = v.as_array() {
        return a.clone();
    }
    v.as_object()
        .and_then(|o| o.values().find_map(|x| x.as_array().cloned()))
        .unwrap_or_else(|| panic!("expected a list answer: {v}"))
}

/// Does `key` appear as an object key anywhere in `v`?
pub fn has_key_anywhere(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, x)| k == key || has_key_anywhere(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key_anywhere(x, key)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Time: RFC 3339 `...Z` <-> unix seconds, civil calendar (no date crate among the dev-deps).

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn days_in_month(y: i64, m: i64) -> i64 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)
}

pub fn unix(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
    days_from_civil(y, m, d) * DAY + hh * HOUR + mm * MINUTE + ss
}

/// `t` plus `n` calendar months, the day clamped to the target month's end (Jan 31 + 1 = Feb 28).
pub fn add_months(t: i64, n: i64) -> i64 {
    let (y, m, d) = civil_from_days(t.div_euclid(DAY));
    let secs = t.rem_euclid(DAY);
    let total = y * 12 + (m - 1) + n;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let nd = d.min(days_in_month(ny, nm));
    days_from_civil(ny, nm, nd) * DAY + secs
}

/// RFC 3339 in UTC with `Z`, second precision.
pub fn fmt_ts(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(DAY));
    let s = t.rem_euclid(DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / HOUR,
        s % HOUR / MINUTE,
        s % MINUTE
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` into unix milliseconds; panics on anything else (API.md
/// §1: UTC with `Z`, millisecond precision at most).
#[track_caller]
pub fn parse_ts_ms(s: &str) -> i64 {
    let bad = || -> ! { panic!("not an RFC 3339 UTC timestamp with Z: {s:?}") };
    let b = s.as_bytes();
    if b.len() < 20
        || !s.ends_with('Z')
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        bad();
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        s.get(r)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| bad())
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    );
    let frac = &s[19..s.len() - 1];
    let ms = if frac.is_empty() {
        0
    } else {
        let digits = frac.strip_prefix('.').unwrap_or_else(|| bad());
        if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            bad();
        }
        format!("{digits:0<3}").parse::<i64>().unwrap()
    };
    unix(y, mo, d, h, mi, se) * 1000 + ms
}

/// A JSON timestamp in unix seconds (milliseconds dropped).
#[track_caller]
pub fn ts_secs(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    parse_ts_ms(s).div_euclid(1000)
}

/// A JSON timestamp in unix milliseconds.
#[track_caller]
pub fn ts_ms(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    parse_ts_ms(s)
}

/// Asserts a JSON timestamp is exactly `t` (unix seconds).
#[track_caller]
pub fn assert_ts(v: &Value, t: i64, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected timestamp {}, got {v}", fmt_ts(t)));
    assert_eq!(
        parse_ts_ms(s),
        t * 1000,
        "{what}: expected {}, got {s}",
        fmt_ts(t)
    );
}

/// Asserts a JSON timestamp is within `tolerance` seconds of `t`.
#[track_caller]
pub fn assert_ts_near(v: &Value, t: i64, tolerance: i64, what: &str) {
    let got = ts_secs(v);
    assert!(
        (got - t).abs() <= tolerance,
        "{what}: expected about {} (±{tolerance}s), got {v}",
        fmt_ts(t)
    );
}

// ---------------------------------------------------------------------------------------------
// Small deterministic PRNG (no `rand` among the dev-deps).

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

// ---------------------------------------------------------------------------------------------
// Plan documents

/// `{"defaultPlan": "free", "plans": [{"id": "free", "name": "Free", "limits": limits}]}`.
pub fn free_plan(limits: Value) -> Value {
    json!({
        "defaultPlan": "free",
        "plans": [{ "id": "free", "name": "Free", "limits": limits }]
    })
}

/// A daily UTC calendar window.
pub fn daily() -> Value {
    json!({"type": "calendar", "period": "day", "timezone": "UTC"})
}

pub fn lifetime() -> Value {
    json!({"type": "lifetime"})
}

// ---------------------------------------------------------------------------------------------
// Answers shared by several test files

/// A denied reserve (or check) answer: `allowed: false`, no reservation, decided by `plan`,
/// with exactly these `reasons` and `deniedBy`.
#[track_caller]
pub fn assert_denied(answer: &Value, plan: &str, reasons: &[&str], denied_by: &[&str]) {
    assert_eq!(answer["allowed"], false, "should be denied: {answer}");
    if answer.get("reservationId").is_some() {
        assert_eq!(answer["reservationId"], Value::Null, "{answer}");
    }
    assert_eq!(answer["planId"], plan, "the plan that decided: {answer}");
    assert_eq!(
        strs(&answer["reasons"]),
        sorted(reasons),
        "reasons: {answer}"
    );
    assert_eq!(
        strs(&answer["deniedBy"]),
        sorted(denied_by),
        "deniedBy: {answer}"
    );
}

/// An allowed reserve answer decided by `plan`; returns the reservation id.
#[track_caller]
pub fn assert_allowed(answer: &Value, plan: &str) -> String {
    let id = Client::must_allow(answer);
    assert_eq!(answer["planId"], plan, "the plan that decided: {answer}");
    id
}

/// POST that retries the API's own overload answers (`429`/`503`, "nothing was applied").
pub async fn post_retrying(c: &Client, path: &str, body: Value) -> Value {
    for _ in 0..500 {
        let r = c.post(path, body.clone()).await;
        if matches!(r.status, 429 | 503) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        return r.ok();
    }
    panic!("{path}: overloaded for 500 attempts");
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn calendar_math() {
        assert_eq!(unix(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(fmt_ts(unix(2026, 11, 28, 21, 0, 0)), "2026-11-28T21:00:00Z");
        assert_eq!(
            parse_ts_ms("2026-11-28T21:00:00.5Z"),
            unix(2026, 11, 28, 21, 0, 0) * 1000 + 500
        );
        assert_eq!(
            add_months(unix(2027, 1, 31, 0, 0, 0), 1),
            unix(2027, 2, 28, 0, 0, 0)
        );
        assert_eq!(
            add_months(unix(2027, 1, 31, 0, 0, 0), 2),
            unix(2027, 3, 31, 0, 0, 0)
        );
        assert_eq!(
            add_months(unix(2028, 1, 31, 0, 0, 0), 1),
            unix(2028, 2, 29, 0, 0, 0)
        );
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        let u = PgUrl::parse("postgres://postgres@127.0.0.1:5432/test?sslmode=disable");
        assert_eq!(u.socket(), ("127.0.0.1".to_string(), 5432));
        assert_eq!(
            u.with_database("tg_t_1")
                .with_host_port("127.0.0.1:7")
                .to_string(),
            "postgres://postgres@127.0.0.1:7/tg_t_1?sslmode=disable"
        );
        let u = PgUrl::parse("postgresql://u:p@localhost");
        assert_eq!((u.socket().1, u.database.as_str()), (5432, ""));
        assert_eq!(
            u.with_database("d").to_string(),
            "postgresql://u:p@localhost/d"
        );
        assert_eq!(
            PgUrl::parse("postgres://[::1]:6543/x").socket(),
            ("::1".into(), 6543)
        );
        assert_eq!(
            parse_listen_line(
                "2026-11-28T21:00:00Z  INFO tollgate: listening on http://127.0.0.1:4242"
            ),
            Some("127.0.0.1:4242".into())
        );
    }
}
