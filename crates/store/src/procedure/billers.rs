//! Biller events applied to subscriptions, customer mappings and credit grants; integrations,
//! settings and the meter outbox, as the store keeps them.
//!
//! A verified event is applied at most once: deliveries of one event id are serialized by a
//! lock on the id and the second finds the first's row. Snapshots of one biller subscription
//! are ordered by the event's `created` (ties by period start): an older one than the one
//! applied changes nothing, and nothing brings back a subscription that ended. What a
//! snapshot means for the subject is `tollgate_core::biller::subscription_change`.

use super::*;
use tollgate_core::biller::{
    self, BillerFact, BillerStatus, OwnerHint, Purchase, SubscriptionChange, SubscriptionSnapshot,
};

/// Days a received event is kept: deduplication needs its id through Stripe's 3-day retries.
pub const BILLER_EVENT_RETENTION_DAYS: i64 = 30;

/// How an event went, before it is recorded.
struct Applied {
    status: BillerEventStatus,
    note: String,
}

impl Applied {
    fn new(status: BillerEventStatus, note: impl Into<String>) -> Self {
        Self {
            status,
            note: note.into(),
        }
    }
}

/// Applies a verified biller event; see the module doc.
pub fn apply_event(
    tx: &mut impl MeteringTx,
    cmd: &BillerEventCommand,
) -> StoreResult<BillerEventOutcome> {
    let (env, ev) = (cmd.env, &cmd.event);
    let key = format!("{}-event:{}", ev.biller.as_str(), ev.event_id);
    tx.lock_subjects(env, &[&key])?;
    let seen = tx.biller_event(env, ev.biller, &ev.event_id)?;
    if let Some(prev) = &seen {
        // A delivery whose processing failed was answered 5xx so that the biller retries it:
        // its retry is applied, not answered as a duplicate.
        if !cmd.replay && prev.status != BillerEventStatus::Failed {
            let mut again = prev.clone();
            again.deliveries = again.deliveries.saturating_add(1);
            tx.put_biller_event(env, &again)?;
            return Ok(BillerEventOutcome {
                status: prev.status,
                duplicate: true,
                note: format!(
                    "event {} was received before ({}); nothing was done again",
                    ev.event_id,
                    prev.status.as_str()
                ),
            });
        }
    }
    let applied = match &ev.fact {
        BillerFact::Ignored { note } => Applied::new(BillerEventStatus::Ignored, note.clone()),
        BillerFact::Customer { customer_id, owner } => {
            let subject = hint_subject(owner);
            tx.put_biller_customer(env, ev.biller, customer_id, &subject, cmd.now)?;
            Applied::new(
                BillerEventStatus::Applied,
                format!("customer {customer_id} is {}", describe(&subject)),
            )
        }
        BillerFact::Subscription(snap) => apply_snapshot(tx, cmd, snap)?,
        BillerFact::Purchase(p) => apply_purchase(tx, cmd, p)?,
    };
    tx.put_biller_event(
        env,
        &StoredBillerEvent {
            biller: ev.biller,
            event_id: ev.event_id.clone(),
            event_type: ev.event_type.clone(),
            received_at: seen.as_ref().map_or(cmd.now, |s| s.received_at),
            customer_id: customer_of(&ev.fact),
            status: applied.status,
            note: applied.note.clone(),
            body: cmd.body.clone(),
            deliveries: seen.map_or(1, |s| s.deliveries.saturating_add(1)),
        },
    )?;
    Ok(BillerEventOutcome {
        status: applied.status,
        duplicate: false,
        note: applied.note,
    })
}

/// The biller customer an event names, if any.
pub fn customer_of(fact: &BillerFact) -> Option<String> {
    match fact {
        BillerFact::Subscription(s) => s.customer_id.clone(),
        BillerFact::Purchase(p) => p.customer_id.clone(),
        BillerFact::Customer { customer_id, .. } => Some(customer_id.clone()),
        BillerFact::Ignored { .. } => None,
    }
}

fn hint_subject(hint: &OwnerHint) -> String {
    match hint {
        OwnerHint::User(u) => user_subject(u),
        OwnerHint::Account(a) => account_subject(a),
    }
}

/// `u:u_42` → `user u_42`.
fn describe(subject: &str) -> String {
    match subject.split_once(':') {
        Some(("w", id)) => format!("account {id}"),
        Some((_, id)) => format!("user {id}"),
        None => subject.to_string(),
    }
}

/// The owner a subject names.
fn owner_of(subject: &str) -> StoreResult<Owner> {
    let bad = || StoreError::Internal(format!("stored biller subject {subject:?} is not valid"));
    match subject.split_once(':') {
        Some(("w", id)) => AccountId::parse(id.to_string())
            .map(Owner::Account)
            .map_err(|_| bad()),
        Some(("u", id)) => UserId::parse(id.to_string())
            .map(Owner::User)
            .map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// The subject an event names: the user id found in the object (which teaches the customer
/// mapping), else the customer's mapping, else `fallback` (the subscription's, from an
/// earlier event).
fn resolve_subject(
    tx: &mut impl MeteringTx,
    cmd: &BillerEventCommand,
    (hint, customer): (Option<&OwnerHint>, Option<&str>),
    fallback: Option<&str>,
) -> StoreResult<Option<String>> {
    let biller = cmd.event.biller;
    if let Some(hint) = hint {
        let subject = hint_subject(hint);
        if let Some(customer) = customer {
            if tx.biller_customer(cmd.env, biller, customer)?.as_deref() != Some(&subject) {
                tx.put_biller_customer(cmd.env, biller, customer, &subject, cmd.now)?;
            }
        }
        return Ok(Some(subject));
    }
    if let Some(customer) = customer {
        if let Some(subject) = tx.biller_customer(cmd.env, biller, customer)? {
            return Ok(Some(subject));
        }
    }
    Ok(fallback.map(str::to_string))
}

fn unresolved(biller: tollgate_core::biller::Biller, customer: Option<&str>) -> Applied {
    let name = biller.as_str();
    let note = match customer {
        Some(c) => format!(
            "no user or account is known for customer {c}: pass the user id at checkout or \
             in metadata (the integration's userIdFrom), or map it with \
             PUT /v1/integrations/{name}/customers/{c}; the event is applied then"
        ),
        None => "the event names neither a customer nor a user id".to_string(),
    };
    Applied::new(BillerEventStatus::Unresolved, note)
}

fn apply_snapshot(
    tx: &mut impl MeteringTx,
    cmd: &BillerEventCommand,
    snap: &SubscriptionSnapshot,
) -> StoreResult<Applied> {
    let (env, biller, created) = (cmd.env, cmd.event.biller, cmd.event.created);
    // Snapshots of one subscription (events with other ids) are applied one at a time, so the
    // order check below reads the snapshot the previous one wrote.
    let key = format!("{}-subscription:{}", biller.as_str(), snap.subscription_id);
    tx.lock_subjects(env, &[&key])?;
    let known = tx.biller_snapshot(env, biller, &snap.subscription_id)?;
    let customer = snap.customer_id.as_deref();
    let fallback = known.as_ref().map(|k| k.subject.as_str());
    let Some(subject) = resolve_subject(tx, cmd, (snap.owner.as_ref(), customer), fallback)? else {
        return Ok(unresolved(biller, customer));
    };
    let period_start = snap
        .prices
        .iter()
        .find(|p| cmd.plans.biller_ids.plan_for(biller, p).is_some())
        .and_then(|p| p.period)
        .or(snap.period)
        .map(|(start, _)| start);
    if let Some(k) = &known {
        if k.ended {
            return Ok(Applied::new(
                BillerEventStatus::Stale,
                format!(
                    "subscription {} has ended; nothing brings it back",
                    snap.subscription_id
                ),
            ));
        }
        let older = created < k.created
            || (created == k.created
                && matches!((period_start, k.period_start), (Some(new), Some(old)) if new < old));
        if older {
            return Ok(Applied::new(
                BillerEventStatus::Stale,
                format!(
                    "an older snapshot of subscription {} than the one applied (made {}); \
                     nothing changed",
                    snap.subscription_id, k.created
                ),
            ));
        }
    }
    let owner = owner_of(&subject)?;
    let change = biller::subscription_change(&cmd.plans, biller, snap, cmd.past_due, cmd.now);
    // Only a terminal status ends the biller subscription for good: a paused one resumes, and
    // one ended by the `pastDue: end` policy recovers.
    let ended = snap.status == BillerStatus::Ended;
    let applied = match change {
        SubscriptionChange::Nothing { note } => Applied::new(BillerEventStatus::Ignored, note),
        SubscriptionChange::Upsert(mut req) => {
            // Seats cap an account's members; a user's own subscription has none.
            if matches!(owner, Owner::User(_)) {
                req.seats = None;
            }
            let outcome = upsert_subscription(
                tx,
                env,
                (&owner, &cmd.plans),
                &req,
                &cmd.new_subscription_id,
                cmd.now,
            )?;
            let what = if outcome.changed {
                format!("{} is on plan {}", describe(&subject), req.plan_id)
            } else {
                format!(
                    "{} was on plan {} already; nothing changed",
                    describe(&subject),
                    req.plan_id
                )
            };
            Applied::new(BillerEventStatus::Applied, what)
        }
        SubscriptionChange::End { .. } if known.is_none() => Applied::new(
            BillerEventStatus::Ignored,
            format!(
                "subscription {} never gave {} a plan; nothing to end",
                snap.subscription_id,
                describe(&subject)
            ),
        ),
        SubscriptionChange::End { at } => {
            let others = tx.live_biller_subscriptions(env, biller, &subject)?;
            if others.iter().any(|id| *id != snap.subscription_id) {
                let note = format!(
                    "subscription {} ended, but {} has another {} subscription; its plan stays",
                    snap.subscription_id,
                    describe(&subject),
                    biller.as_str()
                );
                Applied::new(BillerEventStatus::Applied, note)
            } else {
                end_subscription(tx, cmd, &owner, at)?
            }
        }
    };
    tx.put_biller_snapshot(
        env,
        biller,
        &BillerSnapshotRow {
            subscription_id: snap.subscription_id.clone(),
            subject,
            created,
            period_start,
            ended,
        },
    )?;
    Ok(applied)
}

/// Ends the subject's subscription at `at` (at once if that has passed).
fn end_subscription(
    tx: &mut impl MeteringTx,
    cmd: &BillerEventCommand,
    owner: &Owner,
    at: Timestamp,
) -> StoreResult<Applied> {
    let source = cmd.event.biller.as_str();
    let when = if at <= cmd.now {
        CancelAt::Now
    } else {
        CancelAt::At(at)
    };
    let reason = Some(format!("{} {}", source, cmd.event.event_type));
    let subject = owner.subject();
    match subscriptions::cancel_from(
        tx,
        (cmd.env, owner, &cmd.plans),
        when,
        (reason, source),
        cmd.now,
    ) {
        Ok(_) => Ok(Applied::new(
            BillerEventStatus::Applied,
            format!(
                "{}'s subscription ended; the default plan applies",
                describe(&subject)
            ),
        )),
        Err(StoreError::NotFound | StoreError::AlreadyCanceled) => Ok(Applied::new(
            BillerEventStatus::Ignored,
            format!(
                "{} has no subscription in force; nothing changed",
                describe(&subject)
            ),
        )),
        Err(e) => Err(e),
    }
}

fn apply_purchase(
    tx: &mut impl MeteringTx,
    cmd: &BillerEventCommand,
    p: &Purchase,
) -> StoreResult<Applied> {
    let biller = cmd.event.biller;
    let Some(pack_id) = biller::pack_for_purchase(&cmd.plans, biller, p) else {
        let what = match (&p.pack_id, p.price_ids.as_slice()) {
            (Some(id), _) => format!("no credit pack {id} in the plan document"),
            (None, []) => "it names no pack (metadata.pack_id) and no price".to_string(),
            (None, ids) => format!("no credit pack lists {}", ids.join(", ")),
        };
        return Ok(Applied::new(
            BillerEventStatus::Ignored,
            format!("payment {}: {what}; nothing granted", p.payment_ref),
        ));
    };
    let customer = p.customer_id.as_deref();
    let Some(subject) = resolve_subject(tx, cmd, (p.owner.as_ref(), customer), None)? else {
        return Ok(unresolved(biller, customer));
    };
    let Some(pack) = cmd.plans.credit_packs.iter().find(|k| k.id == pack_id) else {
        return Err(StoreError::Internal(format!("pack {pack_id} vanished")));
    };
    let items = pack
        .items
        .iter()
        .enumerate()
        .map(|(n, item)| NewGrant {
            grant_id: cmd.ids.grant(n),
            item_id: item.id.clone(),
            unit: item.unit.clone(),
            quantity: item.quantity,
            rules: item.rules.clone(),
        })
        .collect();
    let expires_at = pack
        .expires_after_days
        .map(|days| cmd.now + SignedDuration::from_hours(24 * i64::from(days)));
    let grant = GrantCommand {
        env: cmd.env,
        now: cmd.now,
        owner: owner_of(&subject)?,
        pack_id: pack.id.clone(),
        priority: pack.priority,
        packs: 1,
        items,
        expires_at,
        source: GrantSource::Purchase,
        external_ref: Some(p.payment_ref.clone()),
        note: Some(format!("{} {}", biller.as_str(), cmd.event.event_type)),
        ids: cmd.ids.clone(),
    };
    match credits::grant(tx, &grant) {
        Ok(out) if out.created => Ok(Applied::new(
            BillerEventStatus::Applied,
            format!(
                "granted pack {pack_id} to {} (externalRef {})",
                describe(&subject),
                p.payment_ref
            ),
        )),
        Ok(_) => Ok(Applied::new(
            BillerEventStatus::Ignored,
            format!(
                "payment {} was granted already; nothing granted again",
                p.payment_ref
            ),
        )),
        Err(StoreError::IdempotencyConflict) => Ok(Applied::new(
            BillerEventStatus::Ignored,
            format!(
                "externalRef {} was used by another grant; nothing granted",
                p.payment_ref
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Stores an integration; see [`Store::put_integration`].
pub fn put_integration(
    tx: &mut impl MeteringTx,
    integration: &Integration,
    forwarding: &[(String, String)],
) -> StoreResult<Integration> {
    let stored = tx.put_integration(integration)?;
    if integration.biller == tollgate_core::biller::Biller::Stripe {
        tx.set_meter_names(integration.env, forwarding)?;
    }
    Ok(stored)
}

/// Queues a committed or tracked usage event for its Stripe meter, when the environment
/// forwards that event name (called in the transaction that records the event, so usage that
/// happened is never missed).
pub fn forward_usage(tx: &mut impl MeteringTx, env: EnvId, e: &EventRow<'_>) -> StoreResult<()> {
    if e.quantity == 0 {
        return Ok(());
    }
    let Some(meter) = tx.meter_name(env, e.event)? else {
        return Ok(());
    };
    tx.enqueue_meter_event(&MeterEventRow {
        env,
        event_id: e.event_id.to_string(),
        meter_event_name: meter,
        user_id: e.user_id.to_string(),
        value: e.quantity,
        occurred_at: e.occurred_at,
        status: MeterStatus::Pending,
        attempts: 0,
        next_attempt_at: e.occurred_at,
        last_status: None,
        last_error: None,
        created_at: e.occurred_at,
    })
}
