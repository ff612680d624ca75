//! The engine's repeatable figures, measured in-process: instructions per command (under
//! callgrind), resident memory per user, and the time `EngineStore::open` takes to replay an
//! unapplied log tail. `scripts/engine-figures.sh` runs every mode and BENCHMARKS.md ("The engine:
//! instructions, memory, restart") holds what it measured.
//!
//! Modes (`--mode`):
//! - `pairs` (default): one reserve→commit per user to load each user (the warm-up), then
//!   `--ops` sequential reserve→commit pairs over the users, one caller, so every batch holds one
//!   command; `--settle` (engine) also waits after each command until the tables hold it, so
//!   the engine's work does not depend on how far behind the projection happens to be;
//! - `reserves`: the same warm-up, then `--ops` sequential reserves alone;
//! - `--concurrency K` with `pairs` or `reserves` runs the timed `--ops` from K callers at once
//!   instead of one (the warm-up stays sequential), so the engine's batches and the
//!   projection's transactions hold many commands (K = 1, the default, is the one-caller run);
//! - `fill`: one reserve→commit per user, `--concurrency` callers at once, then waits until the
//!   tables hold every record and prints the process's VmRSS/VmHWM;
//! - `write`: `--concurrency` callers doing reserve→commit pairs until `--ops` pairs (0: until
//!   killed), printing `acked N` (commands answered) every 1,000; `--stall-projection` holds
//!   SQLite's write lock from a connection of its own so the projection cannot apply anything;
//! - `restart`: runs `write` as a child on `--dir`, SIGKILLs it once it acked `--records`
//!   commands, reports how far the tables were behind the log, and times `EngineStore::open`;
//! - `open`: times `EngineStore::open` on an existing `--dir` and says what the tables hold.
//!
//! Every mode but `restart` and `open` uses a fresh temp dir unless `--dir` names one.

use jiff::Timestamp;
use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::input::{EventName, Metadata, Quantity, TtlSeconds, UserId};
use tollgate_core::plan::{
    Enforcement, EventPattern, Limit, LimitKind, MatchRule, Plan, PlanDocument, Scope,
    UnmatchedEvents, WindowSpec,
};
use tollgate_core::window::{BillingInterval, IntervalUnit};
use tollgate_store::{
    CommitCommand, EnvId, IdSeed, Idempotent, IfExpired, KeyKind, Mode, NewKey, Project,
    ReserveCommand, Store, StoreObserver,
};
use tollgate_store_sqlite::{EngineStore, SqliteStore, DATABASE_FILE, LOG_DIR};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// A quota no run reaches, so every reserve is allowed and does the same work.
const QUOTA: u64 = 1 << 50;
/// How often `write` prints how many commands were answered.
const ACKED_EVERY: u64 = 1_000;

struct NoObserver;
impl StoreObserver for NoObserver {
    fn batch_committed(&self, _commands: usize) {}
}

/// Counts the SQLite writer's committed transactions (with the engine, each is one projection
/// batch), so a run can say how many commands a transaction held.
static SQLITE_BATCHES: AtomicU64 = AtomicU64::new(0);

struct CountBatches;
impl StoreObserver for CountBatches {
    fn batch_committed(&self, _commands: usize) {
        SQLITE_BATCHES.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Engine,
    Sqlite,
}

#[derive(Clone, Debug)]
struct Args {
    mode: String,
    store: Backend,
    users: u64,
    ops: u64,
    limits: usize,
    concurrency: u64,
    records: u64,
    dir: Option<PathBuf>,
    stall_projection: bool,
    settle: bool,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        mode: "pairs".into(),
        store: Backend::Engine,
        users: 1_000,
        ops: 2_000,
        limits: 1,
        concurrency: 1,
        records: 100_000,
        dir: None,
        stall_projection: false,
        settle: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--stall-projection" {
            a.stall_projection = true;
            continue;
        }
        if flag == "--settle" {
            a.settle = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" => a.mode = value,
            "--store" => {
                a.store = match value.as_str() {
                    "engine" => Backend::Engine,
                    "sqlite" => Backend::Sqlite,
                    other => return Err(format!("--store engine|sqlite, not {other}").into()),
                }
            }
            "--users" => a.users = value.parse()?,
            "--ops" => a.ops = value.parse()?,
            "--limits" => a.limits = value.parse()?,
            "--concurrency" => a.concurrency = value.parse::<u64>()?.max(1),
            "--records" => a.records = value.parse()?,
            "--dir" => a.dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if a.users == 0 || !(1..=20).contains(&a.limits) {
        return Err("--users must be at least 1 and --limits 1..=20".into());
    }
    Ok(a)
}

fn main() -> Res<()> {
    let args = parse_args()?;
    // `restart` only spawns and kills a child before its own open: no runtime needed for that.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(run(args));
    // The engine's threads are not joined at exit; leaving the runtime alive until here lets
    // `shutdown` have drained them.
    drop(rt);
    result
}

async fn run(args: Args) -> Res<()> {
    match args.mode.as_str() {
        "restart" => return restart(&args).await,
        "open" => return open_existing(&args).await,
        "pairs" | "reserves" | "fill" | "write" => {}
        other => return Err(format!("unknown --mode {other}").into()),
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let rss_empty = rss();
    let (store, engine) = open(args.store, &dir).await?;
    let env = setup(&store).await?;
    let plans = plan(args.limits);
    let bench = Bench {
        store: store.clone(),
        env,
        plans,
        now: "2026-03-10T12:00:00Z".parse()?,
        next: Arc::new(AtomicU64::new(1)),
    };
    let rss_open = rss();
    match args.mode.as_str() {
        "pairs" | "reserves" => {
            let started = Instant::now();
            for u in 0..args.users {
                bench.pair(u).await?;
            }
            let warm = started.elapsed();
            let started = Instant::now();
            let batches_before = SQLITE_BATCHES.load(Ordering::Relaxed);
            if args.concurrency > 1 {
                let pairs = args.mode == "pairs";
                bench
                    .timed(args.concurrency, args.users, args.ops, pairs)
                    .await?;
            }
            for i in (0..args.ops).filter(|_| args.concurrency == 1) {
                let u = i % args.users;
                match args.mode.as_str() {
                    "pairs" => bench.pair(u).await?,
                    _ => drop(bench.reserve(u).await?),
                }
                if let (true, Some(e)) = (args.settle, &engine) {
                    while e.projection_lag() > 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            }
            let timed = started.elapsed();
            if let Some(e) = &engine {
                while e.projection_lag() > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let batches = SQLITE_BATCHES.load(Ordering::Relaxed) - batches_before;
            let commands = match args.mode.as_str() {
                "pairs" => 2 * args.ops,
                _ => args.ops,
            };
            println!(
                "sqlite_transactions={batches} commands_per_transaction={:.1}",
                commands as f64 / batches.max(1) as f64
            );
            println!(
                "store={:?} mode={} users={} ops={} concurrency={} warmup_s={:.3} ops_s={:.3} us_per_op={:.1}",
                args.store,
                args.mode,
                args.users,
                args.ops,
                args.concurrency,
                warm.as_secs_f64(),
                timed.as_secs_f64(),
                timed.as_secs_f64() * 1e6 / args.ops.max(1) as f64
            );
        }
        "fill" => {
            let started = Instant::now();
            let acked = Arc::new(AtomicU64::new(0));
            bench
                .concurrent(args.concurrency, args.users, args.users, acked)
                .await?;
            let answered = started.elapsed();
            // Two more pairs, each once the tables hold everything before it: the engine drops
            // settled reservations after a batch, up to the position the tables hold then, so
            // after these its memory holds the users' state and not the run's reservations.
            for _ in 0..3 {
                if let Some(e) = &engine {
                    while e.projection_lag() > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                bench.pair(0).await?;
            }
            let applied = started.elapsed();
            let full = rss();
            let trimmed = trim_heap();
            println!(
                "store={:?} mode=fill users={} limits={} concurrency={} answered_s={:.1} applied_s={:.1}",
                args.store,
                args.users,
                args.limits,
                args.concurrency,
                answered.as_secs_f64(),
                applied.as_secs_f64()
            );
            for (name, r) in [
                ("empty", rss_empty),
                ("open", rss_open),
                ("full", full),
                ("full_trimmed", trimmed),
            ] {
                println!(
                    "rss_kib {name}: vm_rss={} vm_hwm={} rss_anon={} rss_file={}",
                    r.rss, r.hwm, r.anon, r.file
                );
            }
            let per_user = |full: u64, open: u64| {
                (full.saturating_sub(open) * 1024) as f64 / args.users as f64
            };
            println!(
                "bytes_per_user (minus open): vm_rss={:.0} rss_anon={:.0} trimmed_vm_rss={:.0} trimmed_rss_anon={:.0}",
                per_user(full.rss, rss_open.rss),
                per_user(full.anon, rss_open.anon),
                per_user(trimmed.rss, rss_open.rss),
                per_user(trimmed.anon, rss_open.anon)
            );
            if let Some(e) = &engine {
                println!("engine carried={:?}", e.carried());
            }
        }
        _ => {
            let acked = Arc::new(AtomicU64::new(0));
            let printer = {
                let acked = acked.clone();
                tokio::spawn(async move {
                    let mut printed = 0;
                    loop {
                        let n = acked.load(Ordering::Relaxed) / ACKED_EVERY * ACKED_EVERY;
                        if n > printed {
                            printed = n;
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "acked {n}");
                            let _ = out.flush();
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            };
            let _lock = match args.stall_projection {
                true => Some(hold_write_lock(&dir)?),
                false => None,
            };
            let pairs = match args.ops {
                0 => u64::MAX,
                n => n,
            };
            bench
                .concurrent(args.concurrency, args.users, pairs, acked.clone())
                .await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            printer.abort();
            println!("done acked {}", acked.load(Ordering::Relaxed));
        }
    }
    store.shutdown().await;
    Ok(())
}

/// Opens the store named by `backend` on `dir`; for the engine also its handle for the lag.
async fn open(backend: Backend, dir: &Path) -> Res<(Arc<dyn Store>, Option<EngineStore>)> {
    Ok(match backend {
        Backend::Engine => {
            let e = EngineStore::open(dir, Arc::new(CountBatches)).await?;
            (Arc::new(e.clone()), Some(e))
        }
        Backend::Sqlite => (
            Arc::new(SqliteStore::open(dir, Arc::new(CountBatches))?),
            None,
        ),
    })
}

/// Takes SQLite's write lock on the data dir's database and keeps it until dropped: the
/// projection's transactions then wait (and retry), while the engine goes on answering.
fn hold_write_lock(dir: &Path) -> Res<rusqlite::Connection> {
    let c = rusqlite::Connection::open(dir.join(DATABASE_FILE))?;
    c.execute_batch("BEGIN IMMEDIATE")?;
    Ok(c)
}

/// Spawns `write` as a child on `--dir`, kills it (SIGKILL) after `--records` answered commands,
/// measures how far the tables are behind the log, then times the open that replays the tail.
async fn restart(args: &Args) -> Res<()> {
    let dir = args.dir.clone().ok_or("--mode restart needs --dir")?;
    std::fs::create_dir_all(&dir)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["--mode", "write", "--store", "engine", "--ops", "0"])
        .args(["--users", &args.users.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::piped());
    if args.stall_projection {
        cmd.arg("--stall-projection");
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let target = args.records;
    let started = Instant::now();
    let acked = tokio::task::spawn_blocking(move || -> Res<u64> {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(n) = line.strip_prefix("acked ") {
                let n: u64 = n.trim().parse()?;
                if n >= target {
                    return Ok(n);
                }
            }
        }
        Err("the child ended before it acked enough commands".into())
    })
    .await??;
    child.kill()?;
    child.wait()?;
    let wrote = started.elapsed();
    let (applied, last, tail) = log_position(&dir)?;
    let counters = count_subjects(&dir)?;
    let (secs, after) = timed_open(&dir).await?;
    println!(
        "restart acked={acked} write_s={:.1} applied_lsn={applied} log_last_lsn={last} behind={tail} \
         subjects_in_tables_before={counters} open_s={:.3} replay_records_per_s={:.0} applied_after_open={after}",
        wrote.as_secs_f64(),
        secs,
        tail as f64 / secs
    );
    Ok(())
}

/// Times `EngineStore::open` on an existing data dir.
async fn open_existing(args: &Args) -> Res<()> {
    let dir = args.dir.clone().ok_or("--mode open needs --dir")?;
    let (applied, last, tail) = log_position(&dir)?;
    let counters = count_subjects(&dir)?;
    let (secs, after) = timed_open(&dir).await?;
    println!(
        "open subjects_in_tables={counters} applied_lsn={applied} log_last_lsn={last} behind={tail} \
         open_s={secs:.3} applied_after_open={after}"
    );
    Ok(())
}

async fn timed_open(dir: &Path) -> Res<(f64, u64)> {
    let started = Instant::now();
    let store = EngineStore::open(dir, Arc::new(NoObserver)).await?;
    let secs = started.elapsed().as_secs_f64();
    store.shutdown().await;
    drop(store);
    let (applied, _, _) = log_position(dir)?;
    Ok((secs, applied))
}

/// The tables' applied position, the log's last record, and how many records lie after the
/// applied position.
fn log_position(dir: &Path) -> Res<(u64, u64, u64)> {
    let c = rusqlite::Connection::open(dir.join(DATABASE_FILE))?;
    let applied: i64 = c.query_row("SELECT applied_lsn FROM engine_log WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    let applied = u64::try_from(applied)?;
    drop(c);
    let (mut last, mut tail) = (applied, 0);
    let log = dir.join(LOG_DIR);
    if log.exists() {
        for record in tollgate_log::read_after(&log, applied)? {
            last = record?.lsn;
            tail += 1;
        }
    }
    Ok((applied, last, tail))
}

/// Distinct subjects with a counter row in the tables.
fn count_subjects(dir: &Path) -> Res<i64> {
    let c = rusqlite::Connection::open(dir.join(DATABASE_FILE))?;
    Ok(
        c.query_row("SELECT count(DISTINCT subject) FROM counters", [], |r| {
            r.get(0)
        })?,
    )
}

/// The kernel's view of this process's memory, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Rss {
    /// VmRSS: resident, all kinds.
    rss: u64,
    /// VmHWM: the peak of VmRSS.
    hwm: u64,
    /// RssAnon: resident heap and stacks (the engine's state, SQLite's page caches).
    anon: u64,
    /// RssFile: resident pages of mapped files (SQLite's mmap of the database).
    file: u64,
}

fn rss() -> Rss {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Rss {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

/// Hands the heap's free pages back to the kernel (glibc keeps freed memory in its arenas, one
/// per thread that allocated, so RSS also counts what queues and batches held once), then
/// measures again: what is left is what the process still uses.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> Rss {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: malloc_trim only returns free memory of glibc's own arenas to the kernel; it
    // takes the arenas' locks itself and touches no memory in use.
    unsafe {
        malloc_trim(0);
    }
    rss()
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> Rss {
    rss()
}

/// Creates an install with one project and returns its test environment (as the contract
/// suite does).
async fn setup(store: &Arc<dyn Store>) -> Res<EnvId> {
    let created_at: Timestamp = "2026-03-10T12:00:00Z".parse()?;
    let key = NewKey {
        key_id: "key_0".into(),
        project_id: "prj_1".into(),
        mode: Mode::Test,
        kind: KeyKind::Secret,
        name: "k".into(),
        prefix: "sk_".into(),
        hash: [1; 32],
        created_at,
    };
    if !store.is_initialized().await? {
        let project = Project {
            project_id: "prj_1".into(),
            name: "p".into(),
            created_at,
        };
        store.initialize([9; 32], project, vec![key]).await?;
    }
    let auth = store
        .authenticate([1; 32])
        .await?
        .ok_or("the key just created is unknown")?;
    Ok(auth.env)
}

/// A plan whose `limits` lifetime limits all match `image.render`, quotas out of reach.
fn plan(limits: usize) -> Arc<PlanDocument> {
    let limit = |i: usize| Limit {
        id: format!("images_{i}"),
        label: format!("images {i}"),
        unit: "count".into(),
        quota: QUOTA,
        kind: LimitKind::Consumable,
        scope: Scope::User,
        enforcement: Enforcement::Hard,
        multiplier: 1,
        window: WindowSpec::Lifetime,
        rules: vec![MatchRule {
            event: EventPattern::parse("image.*").expect("a valid pattern"),
            metadata: Default::default(),
        }],
        rollover: None,
    };
    let plan = Plan {
        id: "free".into(),
        billing: BillingInterval {
            unit: IntervalUnit::Month,
            count: 1,
        },
        seats: None,
        limits: (0..limits).map(limit).collect(),
    };
    Arc::new(
        PlanDocument::new(Some("free".into()), None, UnmatchedEvents::Deny, vec![plan])
            .expect("a valid document"),
    )
}

#[derive(Clone)]
struct Bench {
    store: Arc<dyn Store>,
    env: EnvId,
    plans: Arc<PlanDocument>,
    now: Timestamp,
    next: Arc<AtomicU64>,
}

impl Bench {
    /// Reserves one unit for user `u` and returns the reservation id.
    async fn reserve(&self, u: u64) -> Res<String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Zero-padded so that ids made later sort later, as the server's do (`ids.rs`: creation
        // time first): `rsv_1000` < `rsv_999` would send every reserve after the first 1,000 to
        // the tables to learn whether its id is taken, which real traffic does not do.
        let id = format!("rsv_{n:012}");
        let cmd = ReserveCommand {
            env: self.env,
            now: self.now,
            plans: self.plans.clone(),
            reservation_id: id.clone(),
            event_id: format!("evt_{n:012}"),
            user_id: UserId::parse(format!("u{u}"))?,
            event: EventName::parse("image.render")?,
            quantity: Quantity::positive(1)?,
            metadata: Metadata::default(),
            ttl: TtlSeconds::new(60)?,
            prompt: None,
            record_denials: true,
            idempotency: None,
            ids: IdSeed(format!("r{n}_")),
        };
        match self.store.reserve(cmd).await? {
            Idempotent::Fresh(o) if o.allowed => Ok(id),
            Idempotent::Fresh(o) => Err(format!("reserve denied: {:?}", o.reasons).into()),
            Idempotent::Replayed(_) => Err("a fresh reserve was answered as a replay".into()),
        }
    }

    async fn commit(&self, id: String) -> Res<()> {
        let cmd = CommitCommand {
            env: self.env,
            now: self.now,
            plans: self.plans.clone(),
            late_event_id: format!("evt_late_{id}"),
            ids: IdSeed(format!("c_{id}_")),
            reservation_id: id,
            quantity: None,
            metadata: None,
            cost_micros: None,
            response: None,
            if_expired: IfExpired::Reject,
        };
        self.store.commit(cmd).await?;
        Ok(())
    }

    async fn pair(&self, u: u64) -> Res<()> {
        let id = self.reserve(u).await?;
        self.commit(id).await
    }

    /// `callers` tasks share `ops` reserve→commit pairs (`pairs`) or reserves over `users`
    /// users (user `i % users` for the `i`-th), like the one-caller loop of `pairs`/`reserves`.
    async fn timed(&self, callers: u64, users: u64, ops: u64, pairs: bool) -> Res<()> {
        let taken = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let (bench, taken) = (self.clone(), taken.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = taken.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        return Ok::<_, Box<dyn Error + Send + Sync>>(());
                    }
                    match pairs {
                        true => bench.pair(i % users).await?,
                        false => drop(bench.reserve(i % users).await?),
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }

    /// `callers` tasks share `pairs` reserve→commit pairs over `users` users (user `i % users`
    /// for the `i`-th pair), counting answered commands in `acked`.
    async fn concurrent(
        &self,
        callers: u64,
        users: u64,
        pairs: u64,
        acked: Arc<AtomicU64>,
    ) -> Res<()> {
        let taken = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let (bench, taken, acked) = (self.clone(), taken.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = taken.fetch_add(1, Ordering::Relaxed);
                    if i >= pairs {
                        return Ok::<_, Box<dyn Error + Send + Sync>>(());
                    }
                    let id = bench.reserve(i % users).await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                    bench.commit(id).await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }
}
