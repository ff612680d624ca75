//! Starting and stopping the real `tollgate` binary: `init --json` on a fresh data dir, `serve`
//! on port 0 with its stderr drained into a bounded log, restarts, signals, and the keys it
//! printed. [`ServerBuilder`] picks the storage backend through [`super::backend`].

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::backend::{Backend, PgDatabase};
use super::client::Client;
use super::secrets::Secrets;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// How long `init` and `serve` may take to become ready: a `serve --engine` that replays a log
/// tail of 100,000 records in a debug build takes tens of seconds.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a graceful shutdown may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// Per-request timeout of the test client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of server log kept, to print when a test fails and to search for secrets when it
/// ends (one access line per request: a load test writes tens of thousands).
const LOG_LINES_MAX: usize = 2_000_000;
/// The file `init` and a first `serve` write the install's secrets to, in the data dir.
pub const KEYS_FILE: &str = "tollgate-keys.json";

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
    pub fn from_json(v: &Value) -> Keys {
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
    /// The secrets this server's clients saw: none may be in its log.
    secrets: Secrets,
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
    if args.contains(&"--database-url") {
        // The suite's pass on the engine (`TOLLGATE_ENGINE=1`) is for the embedded store; the
        // tests that start a node on PostgreSQL themselves run it without.
        cmd.env_remove("TOLLGATE_ENGINE");
    }
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
pub(super) fn parse_listen_line(line: &str) -> Option<String> {
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
    /// The `serve` arguments the next [`restart`](Self::restart) uses.
    pub fn set_serve_args(&mut self, args: &[&str]) {
        self.serve_args = args.iter().map(|a| a.to_string()).collect();
    }

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

    /// Everything the server wrote to stderr (up to [`LOG_LINES_MAX`] lines).
    pub fn log_all(&self) -> String {
        self.log_tail(LOG_LINES_MAX)
    }

    /// The secrets this server's clients saw so far.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Lines of the log that hold a secret: the install's keys, or anything a client of this
    /// server sent or got that looks like a secret. The first start's line with the test keys
    /// (which a newcomer needs) may hold those two.
    pub fn leaked_secrets(&self) -> Vec<String> {
        let test_keys = [
            self.keys.test_secret.clone(),
            self.keys.test_publishable.clone(),
        ];
        let log = self.log.lock().unwrap();
        self.secrets.found_in(log.iter(), |line, secret| {
            line.contains("test_secret_key") && test_keys.iter().any(|k| k == secret)
        })
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
            secrets: self.secrets.clone(),
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
        } else {
            let leaked = self.leaked_secrets();
            if !leaked.is_empty() {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.start_kill();
                }
                panic!(
                    "the server logged {} secret(s):\n{}",
                    leaked.len(),
                    leaked.join("\n")
                );
            }
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
    data_dir: Option<tempfile::TempDir>,
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

    /// Serve this data dir (a restored backup, a fixture) instead of a fresh one; give its
    /// keys with [`ServerBuilder::keys`].
    pub fn data_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.data_dir = Some(dir);
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
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("temp dir"),
        };
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
        let keys = keys.unwrap_or_else(|| keys_printed_by_serve(data_dir.path(), &log));
        let secrets = Secrets::default();
        for key in [
            &keys.admin_token,
            &keys.test_secret,
            &keys.test_publishable,
            &keys.live_secret,
            &keys.live_publishable,
        ] {
            secrets.note(key);
        }
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
            secrets,
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

/// The secrets of a first `serve`: the keys file it wrote in the data dir (0600), and the
/// test secret key it logged for a newcomer, the same.
fn keys_printed_by_serve(data_dir: &Path, log: &Log) -> Keys {
    let path = data_dir.join(KEYS_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the first `tollgate serve` wrote no {}: {e}",
            path.display()
        )
    });
    let keys = Keys::from_json(&serde_json::from_str(&text).expect("the keys file is JSON"));
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .any(|line| line.contains("test_secret_key") && line.contains(&keys.test_secret)),
        "the first `tollgate serve` logged no test secret key:\n{}",
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    );
    keys
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
    // Drained on its own thread, not a task: a test that blocks its runtime (a CLI run with
    // `std::process::Command`) must not stop the drain, or the server's access lines fill
    // the pipe and its next log line blocks it.
    let stderr = std::fs::File::from(stderr.into_owned_fd().expect("stderr's descriptor"));
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stderr);
        let mut tx = Some(tx);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
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

/// Runs `tollgate ARGS --url … --key …` (the test secret key) against `s`: (success, stdout,
/// stderr).
pub fn tollgate(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    let mut all = args.to_vec();
    all.extend(["--url", &s.base_url, "--key", &s.keys.test_secret]);
    run_tollgate(&all)
}

/// Runs `tollgate ARGS` with none of the caller's `TOLLGATE_*` settings of a server, a key or
/// a store (`TOLLGATE_ENGINE` stays: the engine pass runs every command on the engine):
/// (success, stdout, stderr).
pub fn run_tollgate(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_remove("TOLLGATE_URL")
        .env_remove("TOLLGATE_KEY")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_DATA_DIR")
        .env_remove("TOLLGATE_DATABASE_URL")
        .output()
        .expect("run tollgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
