//! The store contract suite on the engine (`EngineStore`): every storage behaviour the SQL
//! procedures have, through memory, the command log and the projection.

use std::sync::Arc;
use tollgate_store::contract::Harness;
use tollgate_store::StoreObserver;
use tollgate_store_sqlite::EngineStore;

struct NoObserver;
impl StoreObserver for NoObserver {
    fn batch_committed(&self, _commands: usize) {}
}

async fn engine() -> Harness {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = EngineStore::open(dir.path(), Arc::new(NoObserver))
        .await
        .expect("open");
    Some((Arc::new(store), Box::new(dir)))
}

tollgate_store::store_contract_suite!(engine);
