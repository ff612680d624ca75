//! The store contract suite on PostgreSQL: a fresh database per test, dropped afterwards.
//! Runs when `TOLLGATE_TEST_POSTGRES_URL` names a server (CI always sets it); otherwise each
//! test says it was skipped.

use std::sync::Arc;
use tollgate_store::contract::Harness;
use tollgate_store::StoreObserver;
use tollgate_store_postgres::PgStore;

struct NoObserver;
impl StoreObserver for NoObserver {
    fn batch_committed(&self, _commands: usize) {}
}

/// Drops the test's database when the test ends.
struct Database {
    admin_url: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // The postgres client runs its own runtime; keep it off the test's runtime thread.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&name],
                );
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"));
            }
        })
        .join();
    }
}

/// `url` with its database name replaced by `name` (`postgres://u@h:p/db?x` → `.../name?x`).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{server}/{name}{query}")
}

async fn postgres() -> Harness {
    let admin_url = std::env::var("TOLLGATE_TEST_POSTGRES_URL").ok()?;
    let name = format!("tg_contract_{:016x}", rand::random::<u64>());
    let url = with_database(&admin_url, &name);
    let (admin, db, store_url) = (admin_url.clone(), name.clone(), url.clone());
    let store = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
        c.batch_execute(&format!("CREATE DATABASE {db}"))
            .expect("create database");
        PgStore::connect(&store_url, 8, Arc::new(NoObserver)).expect("open the store")
    })
    .await
    .expect("setup");
    Some((Arc::new(store), Box::new(Database { admin_url, name })))
}

tollgate_store::store_contract_suite!(postgres);

/// 40,000 pending reservations in two environments, analyzed: the sweep's statement must search
/// each environment's due range of `reservations_due` rather than read the table.
#[test]
fn the_sweep_searches_each_environments_due_range() {
    let Ok(admin_url) = std::env::var("TOLLGATE_TEST_POSTGRES_URL") else {
        eprintln!("skipped: TOLLGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let name = format!("tg_sweep_plan_{:016x}", rand::random::<u64>());
    let url = with_database(&admin_url, &name);
    let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    drop(admin);
    let _drop = Database {
        admin_url,
        name: name.clone(),
    };
    tollgate_store_postgres::migrate(&url).expect("migrations");
    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    c.batch_execute(
        "INSERT INTO projects VALUES ('p', 'p', 0);
         INSERT INTO environments (project_id, mode) VALUES ('p', 'live'), ('p', 'test');
         INSERT INTO reservations (env_id, reservation_id, subject, user_id, event,
             quantity, metadata, status, created_at_ms, expires_at_ms, event_id)
         SELECT e.env_id, 'r' || i, 'u', 'u', 'e', 1, '{}', 'pending', 0,
             1800000000000 + i, 'ev' || i
         FROM environments e, generate_series(1, 20000) i;
         ANALYZE;",
    )
    .expect("fill");
    let sql = format!("EXPLAIN {}", tollgate_store_postgres::DUE_RESERVATIONS);
    let plan = c
        .query(&sql, &[&1_790_000_000_000i64, &1000i64])
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    drop(c);
    assert!(
        plan.contains("Index Scan using reservations_due")
            && !plan.contains("Seq Scan on reservations"),
        "the sweep must not read every reservation; plan:\n{plan}"
    );
}
