//! The differential property test (issue 14) on SQLite: generated command sequences through
//! two stores must give the same answers and leave the same state. See
//! `tollgate_store::contract::differential`.
//!
//! `TOLLGATE_DIFF_CASES` sets the number of cases (64 by default), `TOLLGATE_DIFF_SEED` (a
//! number) draws other cases than the default deterministic ones.

use std::sync::Arc;
use tollgate_store::contract::differential::{diff_cases, differential, Made};
use tollgate_store::StoreObserver;
use tollgate_store_sqlite::SqliteStore;

struct NoObserver;
impl StoreObserver for NoObserver {
    fn batch_committed(&self, _commands: usize) {}
}

/// A fresh SQLite store in its own temp dir.
async fn sqlite() -> Made {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SqliteStore::open(dir.path(), Arc::new(NoObserver)).expect("open");
    (Arc::new(store), Box::new(dir))
}

/// A = B = SQLite: proves the harness deterministic. Two SQLite stores given the same commands
/// can only differ through something the harness leaves to chance (a clock, a random id, an
/// order), which must be removed before A and B are different implementations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_stores_answer_alike() {
    differential(sqlite, sqlite, diff_cases()).await;
}

// ---- A = SQL procedures on SQLite, B = the engine (issue 14).
/// The engine against the SQL procedures on a fresh SQLite database (issue 14).
mod engine_against_sql {
    use super::*;
    use tollgate_store_sqlite::EngineStore;

    static OPENED: std::sync::Mutex<Vec<EngineStore>> = std::sync::Mutex::new(Vec::new());

    async fn engine() -> Made {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = EngineStore::open(dir.path(), Arc::new(NoObserver))
            .await
            .expect("open");
        OPENED.lock().expect("not poisoned").push(store.clone());
        (Arc::new(store), Box::new(dir))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_answers_as_the_sql_procedures() {
        differential(sqlite, engine, diff_cases()).await;
        let (carried, on_sql) = OPENED
            .lock()
            .expect("not poisoned")
            .iter()
            .map(EngineStore::carried)
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        eprintln!("metering commands carried by the engine: {carried}, run on SQLite: {on_sql}");
        assert!(
            carried > on_sql,
            "the comparison must exercise the engine itself"
        );
    }
}
