//! Usage without a reservation: track (decide and charge at once), check (decide and write
//! nothing) and usage (a user's limits as they stand).

use super::*;

pub fn track(
    tx: &mut impl MeteringTx,
    cmd: &TrackCommand,
) -> StoreResult<Idempotent<TrackOutcome>> {
    let (user, subjects) = lock_for_write(tx, cmd.env, &cmd.user_id)?;
    let cmd = &*with_user(cmd, user);
    let scope = ("track", cmd.idempotency.as_ref());
    idempotently(tx, (cmd.env, cmd.now), subjects, scope, |tx, st| {
        track_decide(tx, cmd, st)
    })
}

fn track_decide(
    tx: &mut impl MeteringTx,
    cmd: &TrackCommand,
    st: &Standing,
) -> StoreResult<TrackOutcome> {
    let (env, now, at) = (cmd.env, cmd.now, cmd.occurred_at);
    let (event, metadata) = (&cmd.event, &cmd.metadata);
    let resolved = subscription::resolve(&cmd.plans, st.sub.as_ref(), cmd.user_id.as_str(), now);
    let plan_id = resolved.map(|r| r.plan.id.clone());
    let counters = match resolved {
        Some(r) => matching(tx, env, r, &st.subjects, (event, metadata), at, now)?,
        None => Vec::new(),
    };
    let match_status = match (resolved, counters.is_empty()) {
        (None, _) => MatchStatus::NoSubscription,
        (Some(_), true) => MatchStatus::Unmatched,
        (Some(_), false) => MatchStatus::Matched,
    };
    let mut posting = credits::Posting::new(&cmd.ids, now);
    if let (Some(r), true) = (resolved, at == now) {
        let limits = matching_limits(resolved, (event, metadata));
        credits::roll_over(tx, env, &mut posting, (r, &limits), &counters)?;
    }
    let ask = credits::Ask {
        env,
        subjects: &st.subjects,
        user: cmd.user_id.as_str(),
        event: (event, metadata),
        now,
    };
    let quantity = cmd.quantity.get();
    let refs = credits::refs(cmd.user_id.as_str(), None, Some(&cmd.event_id));
    let why = format!("tracked usage {} ({} × {quantity})", cmd.event_id, event);
    // With `enforce`, the plan's share and credits for the rest, or a denial; without it,
    // the plan's room, then credits, then overage on the plan.
    let (plan_quantity, credits_used, reasons) = if cmd.enforce {
        let funded = credits::fund(
            tx,
            &ask,
            (resolved, &cmd.plans),
            &counters,
            (quantity, Some(&mut posting)),
        )?;
        match funded {
            Ok(f) => {
                let used = credits::burn_drawn(tx, env, &mut posting, &f, (refs, &why))?;
                (f.plan, used, Vec::new())
            }
            Err(reasons) => (0, 0, reasons),
        }
    } else {
        let plan_pays = resolved.is_some()
            && (!counters.is_empty() || cmd.plans.unmatched_events == UnmatchedEvents::Allow);
        let fit = credits::plan_room(counters.iter().map(|(c, l)| (c, l)), quantity, plan_pays);
        let burned = credits::burn_unheld(tx, &ask, &mut posting, quantity - fit, (refs, &why))?;
        (quantity - burned, burned, Vec::new())
    };
    let cost_micros = cmd.cost_micros.or_else(|| {
        cmd.plans
            .cost_of(cmd.event.as_str(), &cmd.metadata, quantity)
    });
    let row = |status, reasons, overage, credits_used| EventRow {
        event_id: &cmd.event_id,
        occurred_at: at,
        user_id: cmd.user_id.as_str(),
        event: cmd.event.as_str(),
        quantity,
        metadata: &cmd.metadata,
        cost_micros,
        status,
        plan_id: plan_id.as_deref(),
        reservation_id: None,
        reasons,
        release_reason: None,
        release_error_code: None,
        overage,
        credits_used,
        prompt: cmd.prompt.as_ref(),
        response: cmd.response.as_ref(),
    };
    if !reasons.is_empty() {
        if cmd.record_denials {
            tx.insert_event(env, &row("denied", &reasons, 0, 0))?;
        }
        let limits = counters.iter().map(|(c, l)| render(c, *l, at)).collect();
        return Ok(TrackOutcome {
            event_id: None,
            recorded: false,
            allowed: false,
            reasons,
            match_status,
            overage: 0,
            plan_id,
            limits,
            credits_used: 0,
        });
    }
    let mut inputs = Vec::with_capacity(counters.len());
    for (c, l) in &counters {
        inputs.push(settle_input(tx, env, (c, l, 0), at)?);
    }
    let settlement = decision::settle(&inputs, plan_quantity)
        .map_err(|OutOfRange { check }| out_of_range(&counters[check].0))?;
    let mut limits = Vec::with_capacity(counters.len());
    for ((c, l), &units) in counters.iter().zip(&settlement.charged) {
        if let CounterWindow::Fixed {
            end, opening: true, ..
        } = &c.window
        {
            tx.open_counter(env, &c.key, *end)?;
        }
        charge(tx, env, c, units, at)?;
        let oldest = match (&c.window, l.oldest) {
            (CounterWindow::Rolling { .. }, Some(o)) => Some(o.min(at)),
            (CounterWindow::Rolling { .. }, None) if units > 0 => Some(at),
            (_, o) => o,
        };
        let after = Loaded {
            state: CounterState {
                used: l.state.used + units,
                reserved: l.state.reserved,
            },
            oldest,
        };
        limits.push(render_opened(c, after, at));
    }
    let tracked = row("tracked", &[], settlement.overage, credits_used);
    tx.insert_event(env, &tracked)?;
    billers::forward_usage(tx, env, &tracked)?;
    Ok(TrackOutcome {
        event_id: Some(cmd.event_id.clone()),
        recorded: true,
        allowed: true,
        reasons: Vec::new(),
        match_status,
        overage: settlement.overage,
        plan_id,
        limits,
        credits_used,
    })
}

/// Decides as reserve would, without holding or recording anything.
pub fn check(tx: &mut impl MeteringTx, cmd: &CheckCommand) -> StoreResult<CheckOutcome> {
    let cmd = &*resolved_read(tx, cmd.env, cmd, &cmd.user_id)?;
    let (env, now) = (cmd.env, cmd.now);
    let user = cmd.user_id.as_str();
    let subjects = subjects_of(tx, env, user)?;
    let st = standing(tx, env, subjects, now)?;
    let resolved = subscription::resolve(&cmd.plans, st.sub.as_ref(), user, now);
    let plan_id = resolved.map(|r| r.plan.id.clone());
    let (event, metadata) = (&cmd.event, &cmd.metadata);
    let counters = match resolved {
        Some(r) => matching(tx, env, r, &st.subjects, (event, metadata), now, now)?,
        None => Vec::new(),
    };
    let ask = credits::Ask {
        env,
        subjects: &st.subjects,
        user,
        event: (event, metadata),
        now,
    };
    let quantity = cmd.quantity.get();
    let funded = credits::fund(
        tx,
        &ask,
        (resolved, &cmd.plans),
        &counters,
        (quantity, None),
    )?;
    let limits = counters.iter().map(|(c, l)| render(c, *l, now)).collect();
    Ok(match funded {
        Ok(f) => CheckOutcome {
            allowed: true,
            plan_id,
            reasons: Vec::new(),
            denied_by: Vec::new(),
            limits,
            credits: f.drawn(),
        },
        Err(reasons) => {
            let denied_by = match resolved {
                Some(r) if !counters.is_empty() => decide(r, event, metadata, &counters, quantity)?
                    .denied_by
                    .iter()
                    .map(|&i| counters[i].0.key.limit_id.clone())
                    .collect(),
                _ => Vec::new(),
            };
            CheckOutcome {
                allowed: false,
                plan_id,
                reasons,
                denied_by,
                limits,
                credits: CreditsDrawn::default(),
            }
        }
    })
}

/// Every limit of the user's effective plan (or those whose rules name `event`), now.
pub fn usage(tx: &mut impl MeteringTx, q: &UsageQuery) -> StoreResult<UsageOutcome> {
    let q = &*resolved_read(tx, q.env, q, &q.user_id)?;
    let (env, now) = (q.env, q.now);
    let subjects = subjects_of(tx, env, q.user_id.as_str())?;
    let st = standing(tx, env, subjects, now)?;
    // `subscription` in the answer is the user's own (ended or not); the plan in force may
    // come from their account's, and then the user's own is read apart.
    let own = match st.from_account {
        true => tx.subscription(env, &st.subjects.user)?,
        false => st.sub.clone(),
    };
    let credits = credits::pack_balances(tx, env, &st.subjects, now)?;
    let Some(resolved) = subscription::resolve(&q.plans, st.sub.as_ref(), q.user_id.as_str(), now)
    else {
        return Ok(UsageOutcome {
            user_id: q.user_id.as_str().to_string(),
            plan_id: None,
            subscription: own,
            limits: Vec::new(),
            credits,
        });
    };
    let mut limits = Vec::new();
    for limit in &resolved.plan.limits {
        let named = q
            .event
            .as_ref()
            .is_none_or(|e| limit.rules.iter().any(|r| r.event.matches(e.as_str())));
        if named {
            let c = counter_for(tx, env, limit, resolved, &st.subjects, now)?;
            let l = load(tx, env, &c, now, now)?;
            limits.push(render(&c, l, now));
        }
    }
    let plan_id = Some(resolved.plan.id.clone());
    Ok(UsageOutcome {
        user_id: q.user_id.as_str().to_string(),
        plan_id,
        subscription: own,
        limits,
        credits,
    })
}

/// `GET /v1/accounts/{accountId}/usage`: the account's pooled limits, counted on the account,
/// and each member's own limits, as their usage answer shows them.
pub fn account_usage(
    tx: &mut impl MeteringTx,
    q: &AccountUsageQuery,
) -> StoreResult<AccountUsageOutcome> {
    let (env, now) = (q.env, q.now);
    let view = subscriptions::account_view(tx, env, &q.account_id, &q.plans, now)?;
    if view.members.len() > ACCOUNT_USAGE_MEMBERS_MAX {
        return Err(StoreError::Invalid {
            field: "accountId".into(),
            message: format!(
                "the account has {} members; this answer shows at most {ACCOUNT_USAGE_MEMBERS_MAX} \
                 (read members' usage one by one)",
                view.members.len()
            ),
        });
    }
    let account = account_subject(q.account_id.as_str());
    let subjects = Subjects {
        user: account.clone(),
        account: Some(account),
    };
    let mut pooled = Vec::new();
    let resolved = subscription::resolve(&q.plans, view.subscription.as_ref(), "", now);
    if let Some(resolved) = resolved {
        for limit in resolved
            .plan
            .limits
            .iter()
            .filter(|l| l.scope == Scope::Account)
        {
            let c = counter_for(tx, env, limit, resolved, &subjects, now)?;
            let l = load(tx, env, &c, now, now)?;
            pooled.push(render(&c, l, now));
        }
    }
    let mut members = Vec::with_capacity(view.members.len());
    for m in &view.members {
        let user_id = UserId::parse(m.user_id.clone())
            .map_err(|_| StoreError::Internal(format!("stored member id {:?}", m.user_id)))?;
        let usage = usage(
            tx,
            &UsageQuery {
                env,
                now,
                plans: q.plans.clone(),
                user_id,
                event: None,
            },
        )?;
        let own = usage
            .limits
            .into_iter()
            .filter(|l| l.scope == Scope::User)
            .collect();
        members.push((m.user_id.clone(), own));
    }
    Ok(AccountUsageOutcome {
        plan_id: view.plan_id,
        subscription: view.subscription,
        pooled,
        members,
    })
}
