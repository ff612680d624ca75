//! Subscriptions: which plan a subject is on, and how upserts and cancels change that.
//!
//! A subscription row is ground state; its history is append-only. Upsert and cancel are pure
//! functions from (current row, request, now) to (new row, history rows), so the store only
//! writes what they return and every backend records the same history.

use crate::plan::{Plan, PlanDocument, WindowSpec};
use crate::window::{self, BillingInterval, CalendarPeriod, WindowBounds, WindowError};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Active,
    Trialing,
    PastDue,
}

impl SubscriptionStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "trialing" => Some(Self::Trialing),
            "past_due" => Some(Self::PastDue),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Trialing => "trialing",
            Self::PastDue => "past_due",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub plan_id: String,
    pub status: SubscriptionStatus,
    pub cycle_start: Timestamp,
    pub ends_at: Option<Timestamp>,
    pub custom_limits: BTreeMap<String, u64>,
    /// The subscriber's own time zone: while the subscription is in force, every calendar
    /// window of its subject is counted in this zone instead of the limit's.
    pub timezone: Option<TimeZone>,
    /// An account's seat cap bought with this subscription (per-seat pricing: the biller's
    /// quantity). While the subscription is in force it overrides the plan's `seats`; `None`
    /// leaves the plan's cap.
    pub seats: Option<u32>,
    pub created_at: Timestamp,
}

impl Subscription {
    /// Until `endsAt` a subscription is in force; from then on the subject falls back.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.ends_at.is_none_or(|end| now < end)
    }

    /// The quota of `limit_id` for this subscriber: a custom limit, else the plan's.
    pub fn quota(&self, limit_id: &str, plan_quota: u64) -> u64 {
        self.custom_limits
            .get(limit_id)
            .copied()
            .unwrap_or(plan_quota)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    Created,
    PlanChanged,
    Renewed,
    CancelScheduled,
    Canceled,
    Reactivated,
    Ended,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::PlanChanged => "plan_changed",
            Self::Renewed => "renewed",
            Self::CancelScheduled => "cancel_scheduled",
            Self::Canceled => "canceled",
            Self::Reactivated => "reactivated",
            Self::Ended => "ended",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Created,
            Self::PlanChanged,
            Self::Renewed,
            Self::CancelScheduled,
            Self::Canceled,
            Self::Reactivated,
            Self::Ended,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub kind: HistoryKind,
    pub at: Timestamp,
    pub from_plan_id: Option<String>,
    pub to_plan_id: Option<String>,
    pub source: String,
    pub reason: Option<String>,
}

/// An upsert as asked. `None` fields keep what the subscription has; `ends_at: Some(None)`
/// clears a scheduled end.
#[derive(Debug, Clone, Default)]
pub struct UpsertRequest {
    pub plan_id: String,
    pub cycle_start: Option<Timestamp>,
    pub ends_at: Option<Option<Timestamp>>,
    pub custom_limits: Option<BTreeMap<String, u64>>,
    pub status: Option<SubscriptionStatus>,
    /// `Some(None)` clears the subscriber's time zone.
    pub timezone: Option<Option<TimeZone>>,
    /// The account's seat cap for this subscription: `None` keeps what the subscription has,
    /// `Some(None)` clears it (the plan's `seats` apply again), `Some(Some(n))` sets it.
    pub seats: Option<Option<u32>>,
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct UpsertOutcome {
    pub subscription: Subscription,
    pub history: Vec<HistoryEntry>,
    pub changed: bool,
}

/// Applies an upsert. `new_id` names the subscription when none exists yet.
pub fn upsert(
    current: Option<&Subscription>,
    req: &UpsertRequest,
    new_id: &str,
    now: Timestamp,
) -> UpsertOutcome {
    let entry = |kind, from: Option<&str>| HistoryEntry {
        kind,
        at: now,
        from_plan_id: from.map(str::to_string),
        to_plan_id: Some(req.plan_id.clone()),
        source: req.source.clone(),
        reason: None,
    };
    let fresh = |id: &str| Subscription {
        id: id.to_string(),
        plan_id: req.plan_id.clone(),
        status: req.status.unwrap_or(SubscriptionStatus::Active),
        cycle_start: req.cycle_start.unwrap_or(now),
        ends_at: req.ends_at.flatten(),
        custom_limits: req.custom_limits.clone().unwrap_or_default(),
        timezone: req.timezone.clone().flatten(),
        seats: req.seats.flatten(),
        created_at: now,
    };
    let Some(cur) = current else {
        return UpsertOutcome {
            subscription: fresh(new_id),
            history: vec![entry(HistoryKind::Created, None)],
            changed: true,
        };
    };
    if !cur.is_active(now) {
        let mut sub = fresh(&cur.id);
        sub.created_at = cur.created_at;
        // The zone describes the subscriber, not the subscription: it outlives the end.
        if req.timezone.is_none() {
            sub.timezone = cur.timezone.clone();
        }
        return UpsertOutcome {
            subscription: sub,
            history: vec![entry(HistoryKind::Reactivated, Some(&cur.plan_id))],
            changed: true,
        };
    }
    let mut sub = cur.clone();
    let mut history = Vec::new();
    if req.plan_id != cur.plan_id {
        sub.plan_id = req.plan_id.clone();
        history.push(entry(HistoryKind::PlanChanged, Some(&cur.plan_id)));
    }
    if let Some(start) = req.cycle_start {
        if start != cur.cycle_start {
            sub.cycle_start = start;
            if start > cur.cycle_start {
                history.push(entry(HistoryKind::Renewed, Some(&cur.plan_id)));
            }
        }
    }
    if let Some(ends_at) = req.ends_at {
        if ends_at != cur.ends_at {
            sub.ends_at = ends_at;
            match ends_at {
                Some(end) if end <= now => history.push(entry(HistoryKind::Canceled, None)),
                Some(_) => history.push(entry(HistoryKind::CancelScheduled, None)),
                None => history.push(entry(HistoryKind::Reactivated, Some(&cur.plan_id))),
            }
        }
    }
    if let Some(custom) = &req.custom_limits {
        sub.custom_limits = custom.clone();
    }
    if let Some(status) = req.status {
        sub.status = status;
    }
    if let Some(timezone) = &req.timezone {
        sub.timezone = timezone.clone();
    }
    // A change of seats alone is a change without a history row: the plan stays the same.
    if let Some(seats) = req.seats {
        sub.seats = seats;
    }
    let changed = sub != *cur;
    UpsertOutcome {
        subscription: sub,
        history,
        changed,
    }
}

/// When a cancel takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAt {
    Now,
    PeriodEnd,
    At(Timestamp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    #[error("the subscription has already ended")]
    AlreadyCanceled,
    #[error(transparent)]
    Window(#[from] WindowError),
}

/// Applies a cancel to an existing subscription on `billing` cycles.
pub fn cancel(
    current: &Subscription,
    billing: BillingInterval,
    at: CancelAt,
    reason: Option<String>,
    source: &str,
    now: Timestamp,
) -> Result<(Subscription, HistoryEntry), CancelError> {
    if !current.is_active(now) {
        return Err(CancelError::AlreadyCanceled);
    }
    let end = match at {
        CancelAt::Now => now,
        CancelAt::PeriodEnd => window::subscription_window(current.cycle_start, billing, now)?
            .end
            .unwrap_or(now),
        CancelAt::At(t) => t.max(now),
    };
    let kind = if end <= now {
        HistoryKind::Canceled
    } else {
        HistoryKind::CancelScheduled
    };
    let mut sub = current.clone();
    sub.ends_at = Some(end);
    let entry = HistoryEntry {
        kind,
        at: now,
        from_plan_id: Some(current.plan_id.clone()),
        to_plan_id: None,
        source: source.to_string(),
        reason,
    };
    Ok((sub, entry))
}

/// The history as a reader sees it at `now`: the stored rows, plus an `ended` row once a
/// scheduled end has passed (the end happens by the clock, not by a write).
pub fn history_view(
    rows: Vec<HistoryEntry>,
    current: Option<&Subscription>,
    now: Timestamp,
) -> Vec<HistoryEntry> {
    let mut rows = rows;
    let Some(sub) = current else { return rows };
    let Some(end) = sub.ends_at else { return rows };
    // The latest row that decides the end: a plan change after a scheduled cancel does not
    // take the cancel back, a reactivation or a new start does.
    let scheduled = rows
        .iter()
        .rev()
        .find(|r| {
            matches!(
                r.kind,
                HistoryKind::CancelScheduled
                    | HistoryKind::Canceled
                    | HistoryKind::Reactivated
                    | HistoryKind::Created
            )
        })
        .is_some_and(|r| r.kind == HistoryKind::CancelScheduled);
    if scheduled && end <= now {
        rows.push(HistoryEntry {
            kind: HistoryKind::Ended,
            at: end,
            from_plan_id: Some(sub.plan_id.clone()),
            to_plan_id: None,
            source: rows.last().map(|r| r.source.clone()).unwrap_or_default(),
            reason: None,
        });
    }
    rows
}

/// The plan in force for a subject, and the subscription that put it there (None on the
/// default or anonymous plan).
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    pub plan: &'a Plan,
    pub subscription: Option<&'a Subscription>,
    /// The subject's own time zone for calendar windows: its subscription's, kept after the
    /// subscription ended (it describes the subject, not the plan).
    pub timezone: Option<&'a TimeZone>,
}

impl Resolved<'_> {
    /// The seat cap in force for an account resolved here: its active subscription's `seats`
    /// (per-seat pricing), else its plan's; `None` is no cap. An ended subscription's seats
    /// no longer apply: the fallback plan's cap does.
    pub fn seats(&self) -> Option<u32> {
        self.subscription.and_then(|s| s.seats).or(self.plan.seats)
    }
}

/// A subject's effective plan at `now`: its active subscription's plan, else the fallback
/// plan of the document, else none (`no_subscription`). A subscription whose plan was removed
/// from the document falls back too.
pub fn resolve<'a>(
    doc: &'a PlanDocument,
    subscription: Option<&'a Subscription>,
    user_id: &str,
    now: Timestamp,
) -> Option<Resolved<'a>> {
    let timezone = subscription.and_then(|s| s.timezone.as_ref());
    if let Some(sub) = subscription.filter(|s| s.is_active(now)) {
        if let Some(plan) = doc.plan(&sub.plan_id) {
            return Some(Resolved {
                plan,
                subscription: Some(sub),
                timezone,
            });
        }
    }
    doc.fallback_plan(user_id).map(|plan| Resolved {
        plan,
        subscription: None,
        timezone,
    })
}

/// The current window of a limit for a subject. `first_use_current` is the start of the
/// counter's most recent first_use window, if any. A `subscription` window without a
/// subscription is the calendar month in UTC.
pub fn limit_window(
    spec: &WindowSpec,
    resolved: Resolved<'_>,
    first_use_current: Option<Timestamp>,
    now: Timestamp,
) -> Result<WindowBounds, WindowError> {
    match spec {
        WindowSpec::Calendar { period, timezone } => {
            window::calendar_window(*period, resolved.timezone.unwrap_or(timezone), now)
        }
        WindowSpec::Subscription => match resolved.subscription {
            Some(sub) => window::subscription_window(sub.cycle_start, resolved.plan.billing, now),
            None => window::calendar_window(CalendarPeriod::Month, &jiff::tz::TimeZone::UTC, now),
        },
        WindowSpec::Rolling { seconds } => window::rolling_window(*seconds, now),
        WindowSpec::FirstUse { seconds } => {
            window::first_use_window(first_use_current, *seconds, now)
        }
        WindowSpec::Lifetime => Ok(window::lifetime_window()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn req(plan: &str) -> UpsertRequest {
        UpsertRequest {
            plan_id: plan.into(),
            source: "api".into(),
            ..Default::default()
        }
    }

    #[test]
    fn upsert_twice_is_a_no_op_and_plan_change_keeps_the_anchor() {
        let now = ts("2026-01-10T00:00:00Z");
        let created = upsert(None, &req("free"), "sub_1", now);
        assert!(created.changed);
        assert_eq!(created.history[0].kind, HistoryKind::Created);
        assert_eq!(created.subscription.cycle_start, now);
        let again = upsert(Some(&created.subscription), &req("free"), "x", now);
        assert!(!again.changed);
        assert!(again.history.is_empty());
        let later = ts("2026-01-12T00:00:00Z");
        let pro = upsert(Some(&created.subscription), &req("pro"), "x", later);
        assert!(pro.changed);
        assert_eq!(pro.subscription.cycle_start, now);
        assert_eq!(pro.history[0].kind, HistoryKind::PlanChanged);
        assert_eq!(pro.history[0].from_plan_id.as_deref(), Some("free"));
    }

    #[test]
    fn cancel_at_period_end_then_already_canceled() {
        let now = ts("2026-01-10T00:00:00Z");
        let sub = upsert(None, &req("pro"), "sub_1", now).subscription;
        let month = BillingInterval {
            unit: crate::window::IntervalUnit::Month,
            count: 1,
        };
        let (ended, entry) = cancel(&sub, month, CancelAt::PeriodEnd, None, "api", now).unwrap();
        assert_eq!(entry.kind, HistoryKind::CancelScheduled);
        assert_eq!(ended.ends_at, Some(ts("2026-02-10T00:00:00Z")));
        assert!(ended.is_active(ts("2026-02-09T23:59:59Z")));
        assert!(!ended.is_active(ts("2026-02-10T00:00:00Z")));
        let after = ts("2026-02-11T00:00:00Z");
        assert_eq!(
            cancel(&ended, month, CancelAt::Now, None, "api", after),
            Err(CancelError::AlreadyCanceled)
        );
        let view = history_view(vec![entry.clone()], Some(&ended), after);
        assert_eq!(view.last().unwrap().kind, HistoryKind::Ended);
        // A plan change between the cancel and the end does not hide the end.
        let changed = HistoryEntry {
            kind: HistoryKind::PlanChanged,
            ..entry
        };
        let rows = vec![view[0].clone(), changed];
        let view = history_view(rows, Some(&ended), after);
        assert_eq!(view.last().unwrap().kind, HistoryKind::Ended);
    }

    #[test]
    fn the_subscriber_zone_is_kept_cleared_and_outlives_the_end() {
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let now = ts("2026-01-10T00:00:00Z");
        let with_zone = UpsertRequest {
            timezone: Some(Some(tokyo.clone())),
            ..req("pro")
        };
        let sub = upsert(None, &with_zone, "sub_1", now).subscription;
        assert_eq!(sub.timezone.as_ref(), Some(&tokyo));
        // Not named: kept.
        let kept = upsert(Some(&sub), &req("free"), "x", now).subscription;
        assert_eq!(kept.timezone.as_ref(), Some(&tokyo));
        // Ended, then started over without naming it: still kept.
        let ended = Subscription {
            ends_at: Some(now),
            ..kept.clone()
        };
        let later = ts("2026-02-01T00:00:00Z");
        let restarted = upsert(Some(&ended), &req("pro"), "x", later).subscription;
        assert_eq!(restarted.timezone.as_ref(), Some(&tokyo));
        // Null: cleared.
        let clear = UpsertRequest {
            timezone: Some(None),
            ..req("pro")
        };
        let cleared = upsert(Some(&restarted), &clear, "x", later);
        assert!(cleared.changed);
        assert_eq!(cleared.subscription.timezone, None);
    }

    fn seats(n: Option<Option<u32>>, plan: &str) -> UpsertRequest {
        UpsertRequest {
            seats: n,
            ..req(plan)
        }
    }

    #[test]
    fn seats_are_set_kept_changed_alone_and_cleared() {
        let now = ts("2026-01-10T00:00:00Z");
        let created = upsert(None, &seats(Some(Some(10)), "team"), "sub_1", now);
        assert_eq!(created.subscription.seats, Some(10));
        let sub = created.subscription;
        // Not named: kept, nothing changed.
        let kept = upsert(Some(&sub), &req("team"), "x", now);
        assert!(!kept.changed);
        assert_eq!(kept.subscription.seats, Some(10));
        // The same value again: no change either.
        let same = upsert(Some(&sub), &seats(Some(Some(10)), "team"), "x", now);
        assert!(!same.changed);
        // A change of seats alone: changed, with no history row.
        let lowered = upsert(Some(&sub), &seats(Some(Some(3)), "team"), "x", now);
        assert!(lowered.changed);
        assert!(lowered.history.is_empty(), "{:?}", lowered.history);
        assert_eq!(lowered.subscription.seats, Some(3));
        assert_eq!(lowered.subscription.plan_id, "team");
        // Kept across a plan change that does not name them.
        let moved = upsert(Some(&lowered.subscription), &req("big"), "x", now);
        assert_eq!(moved.subscription.seats, Some(3));
        assert_eq!(moved.history.len(), 1);
        assert_eq!(moved.history[0].kind, HistoryKind::PlanChanged);
        // Null: cleared, a change without a history row.
        let cleared = upsert(
            Some(&lowered.subscription),
            &seats(Some(None), "team"),
            "x",
            now,
        );
        assert!(cleared.changed);
        assert!(cleared.history.is_empty());
        assert_eq!(cleared.subscription.seats, None);
        // Clearing what is not set changes nothing.
        let again = upsert(
            Some(&cleared.subscription),
            &seats(Some(None), "team"),
            "x",
            now,
        );
        assert!(!again.changed);
    }

    #[test]
    fn a_restart_after_the_end_takes_the_requests_seats() {
        let start = ts("2026-01-10T00:00:00Z");
        let sub = upsert(None, &seats(Some(Some(10)), "team"), "sub_1", start).subscription;
        let ended = Subscription {
            ends_at: Some(ts("2026-01-20T00:00:00Z")),
            ..sub
        };
        let later = ts("2026-02-01T00:00:00Z");
        let bare = upsert(Some(&ended), &req("team"), "x", later);
        assert_eq!(bare.history[0].kind, HistoryKind::Reactivated);
        assert_eq!(
            bare.subscription.seats, None,
            "the old seats do not come back"
        );
        let named = upsert(Some(&ended), &seats(Some(Some(4)), "team"), "x", later);
        assert_eq!(named.subscription.seats, Some(4));
        assert_eq!(named.subscription.id, "sub_1");
    }

    #[test]
    fn the_seat_cap_is_the_active_subscriptions_else_the_plans() {
        let plan = |id: &str, seats| Plan {
            id: id.into(),
            billing: BillingInterval {
                unit: crate::window::IntervalUnit::Month,
                count: 1,
            },
            seats,
            limits: Vec::new(),
        };
        let doc = PlanDocument {
            default_plan: Some("free".into()),
            anonymous_plan: None,
            unmatched_events: crate::plan::UnmatchedEvents::Deny,
            plans: vec![plan("free", Some(1)), plan("team", Some(2))],
            credit_packs: Vec::new(),
            biller_ids: Default::default(),
            costs: Vec::new(),
        };
        let now = ts("2026-01-10T00:00:00Z");
        let cap = |sub: &Subscription| resolve(&doc, Some(sub), "", now).unwrap().seats();
        let plain = upsert(None, &req("team"), "sub_1", now).subscription;
        assert_eq!(cap(&plain), Some(2), "no seats of its own: the plan's");
        let raised = Subscription {
            seats: Some(5),
            ..plain.clone()
        };
        assert_eq!(cap(&raised), Some(5));
        let lowered = Subscription {
            seats: Some(1),
            ..plain.clone()
        };
        assert_eq!(cap(&lowered), Some(1));
        // Ended: the default plan's cap, not the subscription's.
        let ended = Subscription {
            ends_at: Some(ts("2026-01-01T00:00:00Z")),
            ..raised
        };
        assert_eq!(cap(&ended), Some(1));
        assert_eq!(resolve(&doc, None, "", now).unwrap().seats(), Some(1));
    }

    #[test]
    fn calendar_windows_follow_the_subscriber_zone() {
        let doc = PlanDocument {
            default_plan: Some("free".into()),
            anonymous_plan: None,
            unmatched_events: crate::plan::UnmatchedEvents::Deny,
            plans: vec![Plan {
                id: "free".into(),
                billing: BillingInterval {
                    unit: crate::window::IntervalUnit::Month,
                    count: 1,
                },
                seats: None,
                limits: Vec::new(),
            }],
            credit_packs: Vec::new(),
            biller_ids: Default::default(),
            costs: Vec::new(),
        };
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let at = ts("2026-01-10T16:00:00Z");
        let sub = Subscription {
            timezone: Some(tokyo),
            ends_at: Some(ts("2026-01-01T00:00:00Z")),
            ..upsert(None, &req("free"), "sub_1", ts("2025-12-01T00:00:00Z")).subscription
        };
        let day = WindowSpec::Calendar {
            period: CalendarPeriod::Day,
            timezone: TimeZone::UTC,
        };
        // Ended: the default plan applies, and the zone still does.
        let resolved = resolve(&doc, Some(&sub), "u1", at).unwrap();
        assert!(resolved.subscription.is_none());
        let w = limit_window(&day, resolved, None, at).unwrap();
        assert_eq!(w.start, ts("2026-01-10T15:00:00Z"));
        assert_eq!(w.end, Some(ts("2026-01-11T15:00:00Z")));
        let without = resolve(&doc, None, "u1", at).unwrap();
        let w = limit_window(&day, without, None, at).unwrap();
        assert_eq!(w.start, ts("2026-01-10T00:00:00Z"));
    }
}
