//! Persons: a user's traits merged by identify, and one step of erasing a user (their logged
//! prompts and responses, and their traits). See [`crate::persons`].

use super::*;
use crate::persons::{EraseCommand, Erased, Traits};

/// The traits stored for `user_id` with `given` merged in, refused (`Invalid`, field
/// `traits`) if they pass a limit. The caller holds the user's subject lock and writes them.
pub(super) fn merged_traits(
    tx: &mut impl MeteringTx,
    env: EnvId,
    user_id: &str,
    given: &Traits,
) -> StoreResult<Traits> {
    let stored = match tx.traits(env, user_id)? {
        Some(text) => Traits::from_stored(&text)?,
        None => Traits::default(),
    };
    stored.merged(given).map_err(|e| StoreError::Invalid {
        field: "traits".into(),
        message: format!("merged with the user's stored traits, {e}"),
    })
}

/// One step of `DELETE /v1/users/{userId}` (see [`EraseCommand`]). The user's subject is
/// locked first, as every metering write of theirs locks it: a commit waiting on the lock
/// then reads its reservation's prompt as cleared, and cannot copy it onto its event after.
pub fn erase_user(tx: &mut impl MeteringTx, cmd: &EraseCommand) -> StoreResult<Erased> {
    let (env, user) = (cmd.env, cmd.user_id.as_str());
    tx.lock_subjects(env, &[&user_subject(user)])?;
    let cleared = tx.erase_logged_text(env, user, cmd.limit)?;
    let traits = match tx.delete_traits(env, user)? {
        Some(text) => Traits::from_stored(&text)?.len() as u64,
        None => 0,
    };
    Ok(Erased {
        prompts: cleared.prompts,
        responses: cleared.responses,
        traits,
        rows: cleared.rows,
    })
}
