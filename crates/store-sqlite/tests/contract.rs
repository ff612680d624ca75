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
    Some((Arc::new(store), Box::new(dir)))
}

tollgate_store::store_contract_suite!(sqlite);

#[tokio::test]
async fn a_second_store_on_one_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let first = SqliteStore::open(dir.path(), Arc::new(NoObserver)).expect("open");
    let second = SqliteStore::open(dir.path(), Arc::new(NoObserver));
    assert!(
        matches!(&second, Err(tollgate_store::StoreError::Unavailable(m)) if m.contains("another Tollgate process")),
        "a second writer must be refused"
    );
    drop(first);
    let third = SqliteStore::open(dir.path(), Arc::new(NoObserver));
    assert!(third.is_ok(), "the lock goes with the store");
}
