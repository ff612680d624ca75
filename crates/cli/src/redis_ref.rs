//! The Redis baseline of `tollgate bench`: the reserve → commit / release flow as teams build it
//! by hand, one Lua script (`bench/redis/tollgate.lua`) run with EVALSHA, plus a launcher for a
//! private `redis-server`.
//!
//! It exists so the bench compares Tollgate with the strongest simple alternative on equal
//! terms: the same operations, the same quota exactness, each client on its own connection, and
//! a Redis that is either durable (`appendfsync always`, like Tollgate's commit) or purely in
//! memory. The script carries the semantics and documents them; this module only names the
//! keys, passes the arguments and reads the replies.

use anyhow::{bail, ensure, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tollgate_core::input::SUBJECT_ID_BYTES_MAX;

/// The reference script; see its header for the keys, the operations and their limits.
const SCRIPT: &str = include_str!("../../../bench/redis/tollgate.lua");

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT_SECONDS: u64 = 10;
/// How long one script call may take (an fsync under load included).
const RESPONSE_TIMEOUT_SECONDS: u64 = 10;
/// How long a started `redis-server` has to answer PING.
const SERVER_START_TIMEOUT_SECONDS: u64 = 10;
/// Where a `RedisServer` writes redis-server's output, in its dir.
const LOG_FILE: &str = "redis.log";
/// How many free ports `RedisServer::start` tries when another process takes the one it picked.
const SERVER_START_ATTEMPTS_MAX: u32 = 3;

/// One client of the reference script, on its own TCP connection.
pub struct RedisRef {
    // A multiplexed connection because redis 1.x has no plain async one; it is not shared, so
    // it carries one call at a time like a plain connection would.
    connection: MultiplexedConnection,
    sha: String,
}

impl RedisRef {
    /// Connects (one connection) and loads the script (SCRIPT LOAD; EVALSHA afterwards,
    /// loading it again on NOSCRIPT).
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(CONNECT_TIMEOUT_SECONDS)))
            .set_response_timeout(Some(Duration::from_secs(RESPONSE_TIMEOUT_SECONDS)));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("cannot connect to Redis at {url}"))?;
        let sha = load_script(&mut connection).await?;
        Ok(Self { connection, sha })
    }

    /// Reserves `quantity` on each of `limits` limits of `user`: `Some(id)` when admitted,
    /// `None` when some limit would exceed `quota`.
    pub async fn reserve(
        &mut self,
        user: &str,
        quantity: u64,
        quota: u64,
        limits: usize,
        ttl_ms: u64,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let mut call = script_call("EVALSHA", &self.sha, user)?;
        call.arg("reserve")
            .arg(quantity)
            .arg(quota)
            .arg(limits)
            .arg(ttl_ms)
            .arg(now_ms);
        self.run(call).await
    }

    /// Commits `quantity` against reservation `id` of `user`: true when committed, false when
    /// it was not pending (unknown, expired, or already committed or released).
    pub async fn commit(
        &mut self,
        user: &str,
        id: &str,
        quantity: u64,
        limits: usize,
        now_ms: i64,
    ) -> Result<bool> {
        let mut call = script_call("EVALSHA", &self.sha, user)?;
        call.arg("commit")
            .arg(id)
            .arg(quantity)
            .arg(limits)
            .arg(now_ms);
        let reply: String = self.run(call).await?;
        settled(&reply, "committed")
    }

    /// Releases reservation `id` of `user`: true when released, false when it was not pending.
    pub async fn release(
        &mut self,
        user: &str,
        id: &str,
        limits: usize,
        now_ms: i64,
    ) -> Result<bool> {
        let mut call = script_call("EVALSHA", &self.sha, user)?;
        call.arg("release").arg(id).arg(limits).arg(now_ms);
        let reply: String = self.run(call).await?;
        settled(&reply, "released")
    }

    /// Records `quantity` of usage without a reservation: true when it fit under `quota` on
    /// every limit, false (and nothing recorded) otherwise.
    pub async fn track(
        &mut self,
        user: &str,
        quantity: u64,
        quota: u64,
        limits: usize,
        now_ms: i64,
    ) -> Result<bool> {
        let mut call = script_call("EVALSHA", &self.sha, user)?;
        call.arg("track")
            .arg(quantity)
            .arg(quota)
            .arg(limits)
            .arg(now_ms);
        let tracked: u8 = self.run(call).await?;
        match tracked {
            0 => Ok(false),
            1 => Ok(true),
            other => bail!("tollgate.lua track answered {other}, expected 0 or 1"),
        }
    }

    /// The units `user` may still use, the minimum over its limits. Read-only (EVALSHA_RO).
    pub async fn check(
        &mut self,
        user: &str,
        quota: u64,
        limits: usize,
        now_ms: i64,
    ) -> Result<u64> {
        let mut call = script_call("EVALSHA_RO", &self.sha, user)?;
        call.arg("check").arg(quota).arg(limits).arg(now_ms);
        self.run(call).await
    }

    /// `(used, reserved)` of limit 0 of `user`, expired reservations not counted. Read-only
    /// (EVALSHA_RO).
    pub async fn usage(&mut self, user: &str, limits: usize, now_ms: i64) -> Result<(u64, u64)> {
        let mut call = script_call("EVALSHA_RO", &self.sha, user)?;
        call.arg("usage").arg(limits).arg(now_ms);
        self.run(call).await
    }

    /// Runs a script call; on NOSCRIPT (Redis restarted or SCRIPT FLUSH) loads the script again
    /// and retries once.
    async fn run<T: FromRedisValue>(&mut self, call: Cmd) -> Result<T> {
        match call.query_async(&mut self.connection).await {
            Err(error) if error.code() == Some("NOSCRIPT") => {
                let sha = load_script(&mut self.connection).await?;
                ensure!(
                    sha == self.sha,
                    "Redis hashed tollgate.lua to {sha}, earlier to {}",
                    self.sha
                );
                Ok(call
                    .query_async(&mut self.connection)
                    .await
                    .context("tollgate.lua failed after reloading it")?)
            }
            result => Ok(result.context("tollgate.lua failed")?),
        }
    }
}

async fn load_script(connection: &mut MultiplexedConnection) -> Result<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(connection)
        .await
        .context("cannot load tollgate.lua (SCRIPT LOAD)")
}

/// `<command> <sha> 3 <the three keys of user>`; the caller appends the operation and its
/// arguments. The keys share the hash tag `{user}`, so they hash to one Cluster slot.
fn script_call(command: &str, sha: &str, user: &str) -> Result<Cmd> {
    ensure!(
        !user.is_empty() && user.len() <= SUBJECT_ID_BYTES_MAX,
        "a user id has 1..={SUBJECT_ID_BYTES_MAX} bytes, got {}",
        user.len()
    );
    let mut call = redis::cmd(command);
    call.arg(sha)
        .arg(3)
        .arg(format!("tg:{{{user}}}:c"))
        .arg(format!("tg:{{{user}}}:p"))
        .arg(format!("tg:{{{user}}}:q"));
    Ok(call)
}

/// Reads the reply of commit or release: `done`, or "not_pending".
fn settled(reply: &str, done: &str) -> Result<bool> {
    match reply {
        "not_pending" => Ok(false),
        _ if reply == done => Ok(true),
        _ => bail!("tollgate.lua answered {reply:?}, expected {done:?} or \"not_pending\""),
    }
}

/// What a `RedisServer` keeps across a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly yes`, `appendfsync always`: every write is fsynced before Redis answers.
    Durable,
    /// No AOF, no RDB: everything is lost when the process ends.
    None,
}

/// A private redis-server on a free 127.0.0.1 port and a temp dir, killed on drop.
pub struct RedisServer {
    child: Child,
    url: String,
    persistence: Persistence,
    // Declared after `child`, and the process is killed in `drop` before the dir goes.
    _dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` from PATH and waits (blocking, up to
    /// `SERVER_START_TIMEOUT_SECONDS`) until it answers PING.
    pub fn start(persistence: Persistence) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-redis-")
            .tempdir()
            .context("cannot make a temp dir for redis-server")?;
        let (child, url) = launch(dir.path(), persistence)?;
        Ok(Self {
            child,
            url,
            persistence,
            _dir: dir,
        })
    }

    pub fn persistence(&self) -> Persistence {
        self.persistence
    }

    /// The URL to pass to `RedisRef::connect`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server with SIGKILL, as a crash would, and starts a new one on the same dir,
    /// which loads whatever the old one persisted. The new one has a new port: see `url`.
    #[cfg(test)]
    fn crash_and_restart(&mut self) -> Result<()> {
        self.child.kill().context("cannot kill redis-server")?;
        self.child.wait().context("cannot reap redis-server")?;
        let (child, url) = launch(self._dir.path(), self.persistence)?;
        self.child = child;
        self.url = url;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// Starts a redis-server on `dir` and a free port, and waits until it answers PING.
fn launch(dir: &Path, persistence: Persistence) -> Result<(Child, String)> {
    let program = find_redis_server().context(
        "redis-server not found on PATH; install Debian's redis-server (apt-get install redis-server)",
    )?;
    let mut attempt = 1;
    loop {
        // The port is free now; another process may take it before redis-server binds it, in
        // which case redis-server exits and we try another.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free port")?
            .port();
        let mut child = spawn(&program, dir, port, persistence)?;
        match wait_for_ping(&mut child, port) {
            Ok(()) => return Ok((child, format!("redis://127.0.0.1:{port}/"))),
            Err(error) => {
                // Exited by itself: most likely the port was taken; worth another one.
                let exited = matches!(child.try_wait(), Ok(Some(_)));
                let _ = child.kill();
                let _ = child.wait();
                if !exited || attempt == SERVER_START_ATTEMPTS_MAX {
                    let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                    return Err(error.context(format!(
                        "redis-server did not start; the end of its log:\n{tail}"
                    )));
                }
                attempt += 1;
            }
        }
    }
}

fn spawn(program: &Path, dir: &Path, port: u16, persistence: Persistence) -> Result<Child> {
    let mut command = Command::new(program);
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--daemonize", "no", "--save", ""])
        .arg("--dir")
        .arg(dir);
    match persistence {
        Persistence::Durable => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
        Persistence::None => command.args(["--appendonly", "no"]),
    };
    // Its log and any complaint about the command line, kept across restarts.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
        .context("cannot open the redis-server log")?;
    command
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("cannot share the redis-server log")?,
        )
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))
}

fn wait_for_ping(child: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(SERVER_START_TIMEOUT_SECONDS);
    loop {
        if let Some(status) = child.try_wait().context("cannot watch redis-server")? {
            bail!("redis-server exited at start ({status})");
        }
        if ping(port).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("redis-server did not answer PING within {SERVER_START_TIMEOUT_SECONDS} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(port: u16) -> Result<()> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    // While loading the AOF, Redis answers "-LOADING ...": not ready yet.
    ensure!(line == "+PONG\r\n", "redis-server answered {line:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;
    use tokio::sync::Barrier;

    const TTL_MS: u64 = 60_000;

    /// A fresh private server, or `None` (after a skip line) when redis-server is not
    /// installed, unless TOLLGATE_TEST_REQUIRE_REDIS=1 makes that a failure.
    fn server(persistence: Persistence, test: &str) -> Option<RedisServer> {
        if find_redis_server().is_none() {
            assert!(
                std::env::var("TOLLGATE_TEST_REQUIRE_REDIS").as_deref() != Ok("1"),
                "redis-server not found on PATH and TOLLGATE_TEST_REQUIRE_REDIS=1"
            );
            eprintln!("skipping {test}: redis-server not found on PATH");
            return None;
        }
        Some(RedisServer::start(persistence).expect("redis-server starts"))
    }

    async fn client(server: &RedisServer) -> RedisRef {
        RedisRef::connect(server.url()).await.expect("connects")
    }

    /// 64 clients, each on its own connection, reserve 1 and commit 1 until denied; exactly
    /// `quota` reservations must get through, all committed.
    async fn race_reserve_commit(server: &RedisServer, user: &str, quota: u64, limits: usize) {
        let tasks = 64;
        let barrier = Arc::new(Barrier::new(tasks));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let mut redis = client(server).await;
            let barrier = barrier.clone();
            let user = user.to_string();
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut admitted = 0u64;
                while let Some(id) = redis
                    .reserve(&user, 1, quota, limits, TTL_MS, 0)
                    .await
                    .unwrap()
                {
                    admitted += 1;
                    assert!(redis.commit(&user, &id, 1, limits, 0).await.unwrap());
                }
                admitted
            }));
        }
        let mut admitted = 0;
        for handle in handles {
            admitted += handle.await.unwrap();
        }
        assert_eq!(admitted, quota, "{limits} limits");
        let mut redis = client(server).await;
        assert_eq!(redis.usage(user, limits, 0).await.unwrap(), (quota, 0));
        // usage reads limit 0 only; every limit must have moved.
        let counters: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(format!("tg:{{{user}}}:c"))
            .query_async(&mut redis.connection)
            .await
            .unwrap();
        for i in 0..limits {
            assert_eq!(counters[&format!("u{i}")], quota, "used of limit {i}");
            assert_eq!(counters[&format!("r{i}")], 0, "reserved of limit {i}");
        }
        assert_eq!(
            counters.len(),
            2 * limits + 1,
            "u<i>, r<i> and seq: {counters:?}"
        );
        assert_eq!(redis.check(user, quota, limits, 0).await.unwrap(), 0);
        assert_eq!(
            redis
                .reserve(user, 1, quota, limits, TTL_MS, 0)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reserves_admit_exactly_the_quota() {
        let Some(server) = server(Persistence::None, "concurrent_reserves") else {
            return;
        };
        race_reserve_commit(&server, "one-limit", 100, 1).await;
        race_reserve_commit(&server, "three-limits", 100, 3).await;
        race_reserve_commit(&server, "max-limits", 100, 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn used_is_the_sum_of_acknowledged_commits() {
        let Some(server) = server(Persistence::None, "commit_release_mix") else {
            return;
        };
        let (user, quota, limits) = ("mix", 60, 2);
        let mut handles = Vec::new();
        for seed in 0..16u64 {
            let mut redis = client(&server).await;
            handles.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let (mut committed, mut denied) = (0u64, 0u64);
                for _ in 0..50 {
                    let reserved = rng.random_range(1..=2);
                    let Some(id) = redis
                        .reserve(user, reserved, quota, limits, 1000, 0)
                        .await
                        .unwrap()
                    else {
                        denied += 1;
                        continue;
                    };
                    match rng.random_range(0..10) {
                        // Abandoned: it expires at 1000.
                        0 => {}
                        1..=3 => assert!(redis.release(user, &id, limits, 0).await.unwrap()),
                        _ => {
                            // Up to 2 of 1 reserved is an overage, recorded in full.
                            let quantity = rng.random_range(0..=2);
                            assert!(redis.commit(user, &id, quantity, limits, 0).await.unwrap());
                            committed += quantity;
                        }
                    }
                }
                (committed, denied)
            }));
        }
        let (mut committed, mut denied) = (0, 0);
        for handle in handles {
            let (c, d) = handle.await.unwrap();
            committed += c;
            denied += d;
        }
        assert!(
            denied > 0,
            "the quota was never reached; the test proves little"
        );
        let mut redis = client(&server).await;
        let (used, reserved) = redis.usage(user, limits, 0).await.unwrap();
        assert_eq!(used, committed);
        assert!(reserved > 0, "no reservation was abandoned");
        // After the TTL the abandoned ones no longer count, read-only or after a write.
        assert_eq!(
            redis.usage(user, limits, 1000).await.unwrap(),
            (committed, 0)
        );
        assert!(redis.track(user, 0, quota, limits, 1000).await.unwrap());
        assert_eq!(
            redis.usage(user, limits, 1000).await.unwrap(),
            (committed, 0)
        );
    }

    #[tokio::test]
    async fn an_expired_reservation_is_released() {
        let Some(server) = server(Persistence::None, "ttl") else {
            return;
        };
        let mut redis = client(&server).await;
        let id = redis.reserve("u", 1, 1, 1, 1000, 0).await.unwrap().unwrap();
        assert_eq!(redis.reserve("u", 1, 1, 1, 1000, 500).await.unwrap(), None);
        assert_eq!(redis.usage("u", 1, 999).await.unwrap(), (0, 1));
        assert_eq!(redis.usage("u", 1, 1500).await.unwrap(), (0, 0));
        assert_eq!(redis.check("u", 1, 1, 1500).await.unwrap(), 1);
        assert!(!redis.commit("u", &id, 1, 1, 1500).await.unwrap());
        let again = redis.reserve("u", 1, 1, 1, 1000, 1500).await.unwrap();
        assert!(again.is_some_and(|again| again != id));
        assert_eq!(redis.usage("u", 1, 1500).await.unwrap(), (0, 1));

        // Expiry is inclusive: at 999 a reservation made at 0 with ttl 1000 still commits,
        // at 1000 it no longer does.
        let id = redis.reserve("v", 1, 1, 1, 1000, 0).await.unwrap().unwrap();
        assert!(redis.commit("v", &id, 1, 1, 999).await.unwrap());
        let id = redis.reserve("w", 1, 1, 1, 1000, 0).await.unwrap().unwrap();
        assert!(!redis.release("w", &id, 1, 1000).await.unwrap());
        assert_eq!(redis.usage("w", 1, 1000).await.unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn a_reservation_settles_once() {
        let Some(server) = server(Persistence::None, "settle_once") else {
            return;
        };
        let mut redis = client(&server).await;
        let id = redis
            .reserve("u", 5, 10, 3, TTL_MS, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(redis.commit("u", &id, 3, 3, 0).await.unwrap());
        assert!(!redis.commit("u", &id, 3, 3, 0).await.unwrap());
        assert!(!redis.release("u", &id, 3, 0).await.unwrap());
        assert_eq!(redis.usage("u", 3, 0).await.unwrap(), (3, 0));

        let id = redis
            .reserve("u", 5, 10, 3, TTL_MS, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(redis.release("u", &id, 3, 0).await.unwrap());
        assert!(!redis.release("u", &id, 3, 0).await.unwrap());
        assert!(!redis.commit("u", &id, 3, 3, 0).await.unwrap());
        assert_eq!(redis.usage("u", 3, 0).await.unwrap(), (3, 0));

        assert!(!redis.commit("u", "r999", 1, 3, 0).await.unwrap());
        // Ids are per user: another user's id names nothing here.
        let other = redis
            .reserve("x", 1, 10, 3, TTL_MS, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(!redis.commit("y", &other, 1, 3, 0).await.unwrap());
        assert!(redis.commit("x", &other, 1, 3, 0).await.unwrap());
        assert_eq!(redis.usage("u", 3, 0).await.unwrap(), (3, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_commits_of_one_reservation_commit_once() {
        let Some(server) = server(Persistence::None, "racing_commits") else {
            return;
        };
        let mut redis = client(&server).await;
        for _ in 0..20 {
            let id = redis
                .reserve("u", 1, 1000, 1, TTL_MS, 0)
                .await
                .unwrap()
                .unwrap();
            let mut handles = Vec::new();
            for _ in 0..4 {
                let (mut other, id) = (client(&server).await, id.clone());
                handles.push(tokio::spawn(async move {
                    other.commit("u", &id, 1, 1, 0).await.unwrap()
                }));
            }
            let mut committed = 0;
            for handle in handles {
                committed += u64::from(handle.await.unwrap());
            }
            assert_eq!(committed, 1);
        }
        assert_eq!(redis.usage("u", 1, 0).await.unwrap(), (20, 0));
    }

    #[tokio::test]
    async fn track_respects_the_quota_and_check_reads_only() {
        let Some(server) = server(Persistence::None, "track_check") else {
            return;
        };
        let mut redis = client(&server).await;
        assert!(redis.track("u", 7, 10, 2, 0).await.unwrap());
        assert!(!redis.track("u", 4, 10, 2, 0).await.unwrap());
        assert_eq!(redis.usage("u", 2, 0).await.unwrap(), (7, 0));
        assert_eq!(redis.check("u", 10, 2, 0).await.unwrap(), 3);
        assert_eq!(redis.check("u", 10, 2, 0).await.unwrap(), 3);
        assert_eq!(redis.usage("u", 2, 0).await.unwrap(), (7, 0));

        let id = redis
            .reserve("u", 2, 10, 2, 1000, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(redis.check("u", 10, 2, 0).await.unwrap(), 1);
        assert!(!redis.track("u", 2, 10, 2, 0).await.unwrap());
        assert!(redis.track("u", 1, 10, 2, 0).await.unwrap());
        assert_eq!(redis.check("u", 10, 2, 0).await.unwrap(), 0);
        assert!(redis.track("u", 0, 10, 2, 0).await.unwrap());
        // A check after the reservation expired counts it away without releasing it...
        assert_eq!(redis.check("u", 10, 2, 1000).await.unwrap(), 2);
        assert_eq!(redis.usage("u", 2, 0).await.unwrap(), (8, 2));
        // ...and a larger quota leaves more.
        assert_eq!(redis.check("u", 20, 2, 0).await.unwrap(), 10);
        // An overage never makes the remaining negative.
        assert!(redis.commit("u", &id, 5, 2, 0).await.unwrap());
        assert_eq!(redis.usage("u", 2, 0).await.unwrap(), (13, 0));
        assert_eq!(redis.check("u", 10, 2, 0).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn limits_are_checked_at_their_edges() {
        let Some(server) = server(Persistence::None, "limits") else {
            return;
        };
        let mut redis = client(&server).await;
        let max = (1u64 << 53) - 1;
        assert!(redis.reserve("u", 1, 10, 0, 1000, 0).await.is_err());
        assert!(redis.reserve("u", 1, 10, 101, 1000, 0).await.is_err());
        assert!(redis
            .reserve("u", 1, 10, 100, 1000, 0)
            .await
            .unwrap()
            .is_some());
        assert!(redis.track("u", max + 1, max, 1, 0).await.is_err());
        assert!(redis.track("u", 1, max + 1, 1, 0).await.is_err());
        assert!(redis.track("big", max, max, 1, 0).await.unwrap());
        assert_eq!(redis.usage("big", 1, 0).await.unwrap(), (max, 0));
        assert!(redis.reserve("u", 1, 10, 1, 0, 0).await.is_err());
        assert!(redis.reserve("u", 1, 10, 1, 3_600_001, 0).await.is_err());
        assert!(redis
            .reserve("u", 1, 10, 1, 3_600_000, 0)
            .await
            .unwrap()
            .is_some());
        assert!(redis.reserve("u", 1, 10, 1, 1000, -1).await.is_err());
        assert!(redis.commit("u", "not-an-id", 1, 1, 0).await.is_err());
        assert!(redis.reserve("", 1, 10, 1, 1000, 0).await.is_err());
        let long = "x".repeat(SUBJECT_ID_BYTES_MAX);
        assert!(redis
            .reserve(&long, 1, 10, 1, 1000, 0)
            .await
            .unwrap()
            .is_some());
        let longer = "x".repeat(SUBJECT_ID_BYTES_MAX + 1);
        assert!(redis.reserve(&longer, 1, 10, 1, 1000, 0).await.is_err());
        // A failed call writes nothing.
        assert_eq!(redis.usage("u", 1, 0).await.unwrap(), (0, 2));
    }

    #[tokio::test]
    async fn the_script_is_reloaded_after_a_flush() {
        let Some(server) = server(Persistence::None, "noscript") else {
            return;
        };
        let mut redis = client(&server).await;
        assert!(redis.track("u", 1, 10, 1, 0).await.unwrap());
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut redis.connection)
            .await
            .unwrap();
        assert!(redis.track("u", 1, 10, 1, 0).await.unwrap());
        assert_eq!(redis.check("u", 10, 1, 0).await.unwrap(), 8);
    }

    /// Reserves and commits `commits` times, leaves one reservation pending, crashes Redis
    /// and restarts it on the same dir; returns (used, reserved) seen afterwards.
    async fn usage_after_a_crash(persistence: Persistence, test: &str) -> Option<(u64, u64)> {
        let mut server = server(persistence, test)?;
        let mut redis = client(&server).await;
        for _ in 0..10 {
            let id = redis
                .reserve("u", 1, 100, 3, TTL_MS, 0)
                .await
                .unwrap()
                .unwrap();
            assert!(redis.commit("u", &id, 1, 3, 0).await.unwrap());
        }
        let pending = redis
            .reserve("u", 4, 100, 3, TTL_MS, 0)
            .await
            .unwrap()
            .unwrap();
        drop(redis);
        server.crash_and_restart().unwrap();
        let mut redis = client(&server).await;
        let after = redis.usage("u", 3, 0).await.unwrap();
        if persistence == Persistence::Durable {
            assert!(redis.commit("u", &pending, 4, 3, 0).await.unwrap());
            assert_eq!(redis.usage("u", 3, 0).await.unwrap(), (14, 0));
            let next = redis
                .reserve("u", 1, 100, 3, TTL_MS, 0)
                .await
                .unwrap()
                .unwrap();
            assert_ne!(next, pending, "ids are not reused after a restart");
        }
        Some(after)
    }

    #[tokio::test]
    async fn durable_redis_keeps_acknowledged_writes_through_a_crash() {
        if let Some(after) = usage_after_a_crash(Persistence::Durable, "durable").await {
            assert_eq!(after, (10, 4));
        }
    }

    #[tokio::test]
    async fn in_memory_redis_loses_everything_in_a_crash() {
        if let Some(after) = usage_after_a_crash(Persistence::None, "in_memory").await {
            assert_eq!(after, (0, 0));
        }
    }
}
