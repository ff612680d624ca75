//! The store contract suite on SQLite: a fresh database file in a temp dir per test.

use std::sync::Arc;
use tollgate_store::contract::Harness;
use tollgate_store::StoreObserver;
use tollgate_store_sqlite::SqliteStore;

struct NoObserver;
impl StoreObserver for NoObserver {
    fn batch_committed(&self, _commands: usize) {}
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SqliteStore::open(dir.path(), Arc::new(NoObserver)).expect("open");
    (Arc::new(store), Box::new(dir))
}

tollgate_store::store_contract_suite!(sqlite);
