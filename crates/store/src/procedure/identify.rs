//! Identify: merging an anonymous id's counters and events into the user it turns out to be,
//! recording the alias, and the check, made before anything moves, that the merged counters
//! stay in range.

use super::*;

/// Merges an anonymous subject into a user (`POST /v1/identify`); see [`Store::identify`].
pub fn identify(tx: &mut impl MeteringTx, cmd: &IdentifyCommand) -> StoreResult<IdentifyOutcome> {
    let env = cmd.env;
    let (anon, given) = (cmd.anonymous_id.as_str(), cmd.user_id.as_str());
    // The target may itself be an identified anonymous id: merge into the user it stands
    // for. All three subjects are locked in one call (see `lock_for_write`), then the target
    // is read again under the locks.
    let mut target = tx.alias(env, given)?.unwrap_or_else(|| given.to_string());
    let subjects = [
        user_subject(anon),
        user_subject(given),
        user_subject(&target),
    ];
    let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
    tx.lock_subjects(env, &refs)?;
    if !tx.single_writer() {
        let again = tx.alias(env, given)?.unwrap_or_else(|| given.to_string());
        if again != target {
            tx.lock_subjects(env, &[&user_subject(&again)])?;
            target = again;
        }
    }
    if target == anon {
        return Err(StoreError::Invalid {
            field: "userId".into(),
            message: "names the anonymous id itself (or a user merged into it)".into(),
        });
    }
    // Judged before anything is written, written last: a refusal changes nothing.
    let traits = match &cmd.traits {
        Some(given) => Some(persons::merged_traits(tx, env, &target, given)?),
        None => None,
    };
    match tx.alias(env, anon)? {
        Some(user) if user == target => {
            if let Some(t) = &traits {
                tx.put_traits(env, &target, &t.to_json(), cmd.now)?;
            }
            return Ok(IdentifyOutcome {
                user_id: target,
                merged: false,
                events_merged: 0,
            });
        }
        Some(user_id) => return Err(StoreError::AlreadyIdentified { user_id }),
        None => {}
    }
    let (from, to) = (user_subject(anon), user_subject(&target));
    let mut limit_ids: Vec<&str> = cmd
        .plans
        .plans
        .iter()
        .flat_map(|p| &p.limits)
        .map(|l| l.id.as_str())
        .collect();
    limit_ids.sort_unstable();
    limit_ids.dedup();
    for id in &limit_ids {
        merge_stays_in_range(tx, (env, cmd.now), &cmd.plans, id, (&from, &to))?;
    }
    for id in limit_ids {
        tx.merge_limit(env, id, &from, &to)?;
    }
    let events_merged = tx.reattribute(env, anon, &target)?;
    tx.insert_alias(env, anon, &target, cmd.now)?;
    if let Some(t) = &traits {
        tx.put_traits(env, &target, &t.to_json(), cmd.now)?;
    }
    Ok(IdentifyOutcome {
        user_id: target,
        merged: true,
        events_merged,
    })
}

/// Refuses an identify whose merge would take a counter of limit `limit_id` past 2^53-1:
/// a fixed window's `used` plus holds, or a rolling window's usage now plus holds, of both
/// subjects together. Checked for every limit before anything moves, so a refused identify
/// changes nothing.
fn merge_stays_in_range(
    tx: &mut impl MeteringTx,
    (env, now): (EnvId, Timestamp),
    plans: &PlanDocument,
    limit_id: &str,
    (from, to): (&str, &str),
) -> StoreResult<()> {
    let mut peak = tx.merged_peak(env, limit_id, (from, to), now)?;
    let rolling = plans
        .plans
        .iter()
        .flat_map(|p| &p.limits)
        .filter(|l| l.id == limit_id)
        .find_map(|l| match l.window {
            WindowSpec::Rolling { seconds } => Some(seconds),
            _ => None,
        });
    if let Some(seconds) = rolling {
        let after = now
            .checked_sub(secs(i64::from(seconds)))
            .map_err(overflow)?;
        for subject in [from, to] {
            let (used, _) = tx.rolling_used(env, limit_id, subject, after, now)?;
            peak = sum_in_range(&[peak, used]).unwrap_or(u64::MAX);
        }
    }
    if peak > QUANTITY_MAX {
        return Err(StoreError::Invalid {
            field: "anonymousId".into(),
            message: format!(
                "merging its usage into the user would take limit `{limit_id}` past \
                 {QUANTITY_MAX} (2^53-1); nothing was applied"
            ),
        });
    }
    Ok(())
}
