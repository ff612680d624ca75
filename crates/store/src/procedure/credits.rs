//! Credits: grants, the ledger, and how reserve, commit, release, expiry and track draw on them.

use super::*;

pub fn grant(_tx: &mut impl MeteringTx, _cmd: &GrantCommand) -> StoreResult<GrantOutcome> {
    Err(StoreError::Internal("credits are not built yet".into()))
}

pub fn revoke(_tx: &mut impl MeteringTx, _cmd: &RevokeCommand) -> StoreResult<RevokeOutcome> {
    Err(StoreError::Internal("credits are not built yet".into()))
}

pub fn credits(_tx: &mut impl MeteringTx, _q: &CreditsQuery) -> StoreResult<CreditsOutcome> {
    Err(StoreError::Internal("credits are not built yet".into()))
}

pub fn ledger(_tx: &mut impl MeteringTx, _q: &LedgerQuery) -> StoreResult<Vec<LedgerEntry>> {
    Err(StoreError::Internal("credits are not built yet".into()))
}
