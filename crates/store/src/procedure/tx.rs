//! What a procedure sees of a backend's transaction: [`MeteringTx`], its typed reads and
//! writes, and the rows they carry (counter keys, holds, reservations, events, idempotency
//! records, credit holds). Each backend implements it, one SQL statement per method.

use super::*;

/// One counter: a limit, a subject, a window (by its start; 0 for lifetime, concurrency and
/// rolling limits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub limit_id: String,
    pub subject: String,
    pub window_key: i64,
}

/// How a hold's window is counted, as stored with the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Calendar,
    Subscription,
    Rolling,
    FirstUse,
    Lifetime,
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Calendar => "calendar",
            Self::Subscription => "subscription",
            Self::Rolling => "rolling",
            Self::FirstUse => "first_use",
            Self::Lifetime => "lifetime",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Calendar,
            Self::Subscription,
            Self::Rolling,
            Self::FirstUse,
            Self::Lifetime,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What a reservation holds on one limit, stored so that commit, release and expiry settle
/// exactly what reserve decided even if the plan document changed in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub key: CounterKey,
    pub window_start: Option<Timestamp>,
    pub window_end: Option<Timestamp>,
    pub window_kind: WindowKind,
    pub window_seconds: u32,
    pub kind: LimitKind,
    pub enforcement: Enforcement,
    pub scope: Scope,
    pub multiplier: u64,
    pub quota: u64,
    /// Units held now (0 once the reservation ended).
    pub held: u64,
}

/// A stored reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    pub reservation_id: String,
    pub user_id: String,
    pub event: String,
    pub quantity: u64,
    pub metadata: Metadata,
    pub plan_id: Option<String>,
    pub status: ReservationStatus,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub event_id: String,
    pub final_quantity: Option<u64>,
    pub overage: Option<u64>,
    pub prompt: Option<StoredText>,
    /// Committed after it expired (`ifExpired: record`); its `event_id` is then the late
    /// commit's usage event, not the expiry's.
    pub late: bool,
}

/// One usage event row (committed, released, expired, tracked, denied).
#[derive(Debug, Clone)]
pub struct EventRow<'a> {
    pub event_id: &'a str,
    pub occurred_at: Timestamp,
    pub user_id: &'a str,
    pub event: &'a str,
    pub quantity: u64,
    pub metadata: &'a Metadata,
    pub cost_micros: Option<u64>,
    pub status: &'a str,
    pub plan_id: Option<&'a str>,
    pub reservation_id: Option<&'a str>,
    pub reasons: &'a [DenyReason],
    /// Why a release happened, as the client said (`reason`, `errorCode`).
    pub release_reason: Option<&'a str>,
    pub release_error_code: Option<&'a str>,
    pub overage: u64,
    /// Units of `quantity` paid for with credits.
    pub credits_used: u64,
    pub prompt: Option<&'a StoredText>,
    pub response: Option<&'a StoredText>,
}

/// A stored idempotency record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    pub fingerprint: String,
    pub response: String,
    pub created_at: Timestamp,
}

/// The reads and writes a procedure needs from one backend transaction. Each method is one
/// statement in the adapter; none decides anything.
pub trait MeteringTx {
    /// Serializes concurrent writers on these subjects (sorted, deduplicated) until the
    /// transaction ends. A single-writer backend may do nothing.
    fn lock_subjects(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<()>;
    /// True if no other transaction can write while this one runs, so a row read before
    /// `lock_subjects` needs no second read after it.
    fn single_writer(&self) -> bool {
        false
    }

    fn subscription(&mut self, env: EnvId, subject: &str) -> StoreResult<Option<Subscription>>;
    fn write_subscription(
        &mut self,
        env: EnvId,
        subject: &str,
        s: &Subscription,
    ) -> StoreResult<()>;
    fn append_history(&mut self, env: EnvId, subject: &str, h: &HistoryEntry) -> StoreResult<()>;

    /// The start of the newest window of a limit for a subject (first_use windows).
    fn latest_window(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
    ) -> StoreResult<Option<i64>>;
    /// Units held on a counter by holds unexpired at `now`.
    fn reserved(&mut self, env: EnvId, key: &CounterKey, now: Timestamp) -> StoreResult<u64>;
    /// `used` of a fixed-window counter (0 if it has none yet).
    fn used(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<u64>;
    /// `used` and `reserved` of a fixed-window counter together; a backend may read both in
    /// one statement (one per limit on every reserve, the hot path's most repeated read).
    fn used_and_reserved(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        now: Timestamp,
    ) -> StoreResult<(u64, u64)> {
        Ok((self.used(env, key)?, self.reserved(env, key, now)?))
    }
    /// Rolling usage with time in `(after, until]`, and the oldest such time.
    fn rolling_used(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        after: Timestamp,
        until: Timestamp,
    ) -> StoreResult<(u64, Option<Timestamp>)>;
    /// Creates a counter with `used` 0 if it does not exist (opens a first_use window).
    fn open_counter(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
    ) -> StoreResult<()>;
    fn add_used(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
        units: u64,
    ) -> StoreResult<()>;
    fn add_rolling(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        at: Timestamp,
        units: u64,
    ) -> StoreResult<()>;

    /// `AlreadyExists` if the id is taken.
    fn insert_reservation(&mut self, env: EnvId, r: &ReservationRow) -> StoreResult<()>;
    fn insert_hold(
        &mut self,
        env: EnvId,
        reservation_id: &str,
        h: &HoldRow,
        expires_at: Timestamp,
    ) -> StoreResult<()>;
    fn reservation(&mut self, env: EnvId, id: &str) -> StoreResult<Option<ReservationRow>>;
    /// A reservation's holds, in the order they were placed.
    fn holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<HoldRow>>;
    /// Ends every hold of a reservation and sets its status.
    fn finish_reservation(
        &mut self,
        env: EnvId,
        id: &str,
        status: ReservationStatus,
        final_quantity: Option<u64>,
        overage: Option<u64>,
    ) -> StoreResult<()>;
    /// Records the late commit of an expired reservation: status committed, flagged late,
    /// `event_id` (a new usage event: the reservation's own went to its expiry) and the final
    /// quantity and overage. Its holds ended at the expiry.
    fn commit_late(
        &mut self,
        env: EnvId,
        id: &str,
        event_id: &str,
        final_quantity: u64,
        overage: u64,
    ) -> StoreResult<()>;
    /// Moves a reservation's and its holds' expiry.
    fn set_expiry(&mut self, env: EnvId, id: &str, expires_at: Timestamp) -> StoreResult<()>;
    /// Moves every hold on counter `from` to counter `to` (the same limit and subject, another
    /// window), with that window's bounds: a subscription write that moves a subject to new
    /// windows takes its pending reservations along, so they still show in `reserved` there
    /// and settle there.
    fn move_holds(
        &mut self,
        env: EnvId,
        from: &CounterKey,
        to: &CounterKey,
        window: (Option<Timestamp>, Option<Timestamp>),
    ) -> StoreResult<()>;
    fn insert_event(&mut self, env: EnvId, e: &EventRow<'_>) -> StoreResult<()>;

    fn idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRow>>;
    fn store_idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
        row: &IdempotencyRow,
    ) -> StoreResult<()>;
    /// The account a user belongs to, and since when.
    fn membership(&mut self, env: EnvId, user_id: &str)
        -> StoreResult<Option<(String, Timestamp)>>;
    /// The members of an account, sorted by user id.
    fn members(&mut self, env: EnvId, account_id: &str) -> StoreResult<Vec<Member>>;
    /// Makes the user a member of the account (leaving any other) from `at`.
    fn put_member(
        &mut self,
        env: EnvId,
        account_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()>;
    /// Removes the user from the account; false if they were not a member of it.
    fn delete_member(&mut self, env: EnvId, account_id: &str, user_id: &str) -> StoreResult<bool>;
    /// The user an anonymous id stands for, if it was identified (`POST /v1/identify`).
    fn alias(&mut self, env: EnvId, anonymous_id: &str) -> StoreResult<Option<String>>;
    /// Records that `anonymous_id` stands for `user_id` from now on, and re-points every alias
    /// that stood for `anonymous_id` itself (so an alias is never a chain).
    fn insert_alias(
        &mut self,
        env: EnvId,
        anonymous_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()>;
    /// Moves one limit's usage from subject `from` to subject `to`: its counters are added to
    /// `to`'s of the same windows (then deleted), its rolling usage and its pending holds
    /// change subject.
    fn merge_limit(&mut self, env: EnvId, limit_id: &str, from: &str, to: &str) -> StoreResult<()>;
    /// What [`merge_limit`](Self::merge_limit) would make of one limit's fixed windows: the
    /// largest `used` plus holds unexpired at `now` that any window would count once `from`'s
    /// counters and holds are added to `to`'s (0 if neither has any).
    fn merged_peak(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subjects: (&str, &str),
        now: Timestamp,
    ) -> StoreResult<u64>;
    /// Moves the usage events and pending reservations of user `from` to user `to`; each moved
    /// event keeps `from` as its anonymous id. Returns how many events moved.
    fn reattribute(&mut self, env: EnvId, from: &str, to: &str) -> StoreResult<u64>;
    // ---- persons (see `persons`)
    /// The user's stored traits (a JSON object), if any.
    fn traits(&mut self, env: EnvId, user_id: &str) -> StoreResult<Option<String>>;
    /// Stores the user's traits (a JSON object), replacing what was stored.
    fn put_traits(
        &mut self,
        env: EnvId,
        user_id: &str,
        traits: &str,
        now: Timestamp,
    ) -> StoreResult<()>;
    /// Deletes the user's traits; returns what was stored.
    fn delete_traits(&mut self, env: EnvId, user_id: &str) -> StoreResult<Option<String>>;
    /// Clears prompt and response (and `truncated`) of at most `limit` of the user's usage
    /// events and reservations that still hold one, events first.
    fn erase_logged_text(
        &mut self,
        env: EnvId,
        user_id: &str,
        limit: usize,
    ) -> StoreResult<crate::LoggedTextCleared>;

    /// Forgets idempotency records created before `before`.
    fn purge_idempotency(&mut self, before: Timestamp) -> StoreResult<()>;
    /// Pending reservations due at `real_now` (each environment by its own clock), at most
    /// `limit`, as (environment, reservation id, user id).
    fn due_reservations(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>>;

    // ---- credits (see `credits`): grants never change; balances are ledger entries.
    /// `AlreadyExists` if the id is taken.
    fn insert_grant(&mut self, env: EnvId, g: &GrantRow) -> StoreResult<()>;
    fn grant(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Option<GrantRow>>;
    /// The grants made with a reference, oldest first.
    fn grants_by_ref(&mut self, env: EnvId, external_ref: &str) -> StoreResult<Vec<GrantRow>>;
    /// The grants of these subjects with something left (`remaining > 0`), with their balances.
    fn live_grants(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<Vec<Grant>>;
    /// A grant's balance: the after-values of its newest ledger entry.
    fn balance(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Balance>;
    /// Appends one entry (its `seq` is given by the store).
    fn append_ledger(&mut self, env: EnvId, e: &LedgerEntry) -> StoreResult<()>;
    /// Records that reservation `(id, user)` holds units of a grant.
    fn insert_credit_hold(
        &mut self,
        env: EnvId,
        reservation: (&str, &str),
        h: &CreditHold,
    ) -> StoreResult<()>;
    /// The grants a reservation drew on, in the order drawn, active or not.
    fn credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<CreditHold>>;
    /// Marks every credit hold of a reservation ended.
    fn end_credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<()>;
    /// Units of a grant held by pending reservations whose expiry is at or before `now`
    /// (expired, not yet swept).
    fn overdue_held(&mut self, env: EnvId, grant_id: &str, now: Timestamp) -> StoreResult<u64>;
    /// A user's pending reservations past their expiry at `now` that hold credits (one per
    /// grant held: the same id may come more than once).
    fn overdue_credit_reservations(
        &mut self,
        env: EnvId,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<String>>;
    /// Credits a committed reservation used: its burns less its refunds.
    fn credits_used_by(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<u64>;
    fn revoke_mark(&mut self, env: EnvId, grant_id: &str, at: Timestamp) -> StoreResult<()>;
    fn is_revoked(&mut self, env: EnvId, grant_id: &str) -> StoreResult<bool>;
    /// Ledger entries newest first with `seq < before`: those of grants owned by `subject`,
    /// and, with `user`, those that user's requests made.
    fn ledger_page(
        &mut self,
        env: EnvId,
        owner: (&str, Option<&str>),
        limit: usize,
        before: Option<i64>,
    ) -> StoreResult<Vec<LedgerEntry>>;
    /// Queues a grant's expiry for the sweeper.
    fn queue_expiry(&mut self, env: EnvId, g: &GrantRow, expires_at: Timestamp) -> StoreResult<()>;
    /// Queued grants past their expiry at `real_now` (each environment by its own clock), at
    /// most `limit`, as (environment, grant id, subject).
    fn expired_grants(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>>;
    /// Takes a grant off the expiry queue once its expiry is written.
    fn dequeue_expiry(&mut self, env: EnvId, grant_id: &str) -> StoreResult<()>;
    /// Whether a counter's window was rolled over already.
    fn rolled_over(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<bool>;
    // ---- billers (see `billers`)
    /// Stores an integration's settings, keeping its endpoint id once made; returns it as stored.
    fn put_integration(&mut self, i: &Integration) -> StoreResult<Integration>;
    fn integration(&mut self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>>;
    fn endpoint(
        &mut self,
        biller: Biller,
        endpoint_id: &str,
    ) -> StoreResult<Option<EndpointTarget>>;
    /// Replaces the environment's meter event names (usage event name → Stripe meter event).
    fn set_meter_names(&mut self, env: EnvId, names: &[(String, String)]) -> StoreResult<()>;
    /// The Stripe meter event a usage event is forwarded to, if forwarding names it.
    fn meter_name(&mut self, env: EnvId, event: &str) -> StoreResult<Option<String>>;
    /// The subject a biller customer is mapped to.
    fn biller_customer(
        &mut self,
        env: EnvId,
        biller: Biller,
        customer_id: &str,
    ) -> StoreResult<Option<String>>;
    fn put_biller_customer(
        &mut self,
        env: EnvId,
        biller: Biller,
        customer_id: &str,
        subject: &str,
        at: Timestamp,
    ) -> StoreResult<()>;
    /// The customer most recently mapped to a subject.
    fn biller_customer_of(
        &mut self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Option<String>>;
    fn biller_event(
        &mut self,
        env: EnvId,
        biller: Biller,
        event_id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>>;
    /// Inserts or replaces a received event's row.
    fn put_biller_event(&mut self, env: EnvId, e: &StoredBillerEvent) -> StoreResult<()>;
    fn biller_events(&mut self, q: &BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>>;
    fn purge_biller_events(&mut self, before: Timestamp) -> StoreResult<usize>;
    fn biller_snapshot(
        &mut self,
        env: EnvId,
        biller: Biller,
        subscription_id: &str,
    ) -> StoreResult<Option<BillerSnapshotRow>>;
    fn put_biller_snapshot(
        &mut self,
        env: EnvId,
        biller: Biller,
        row: &BillerSnapshotRow,
    ) -> StoreResult<()>;
    /// The biller subscriptions of a subject that have not ended.
    fn live_biller_subscriptions(
        &mut self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Vec<String>>;
    /// Queues a committed usage event for its Stripe meter (once: a second insert of the same
    /// event id changes nothing).
    fn enqueue_meter_event(&mut self, row: &MeterEventRow) -> StoreResult<()>;
    /// Leases the pending meter events due at `real_now` (each environment by its own clock;
    /// `next_attempt_at` is in environment time, `lease_until` in real time), with each one's
    /// environment clock offset in seconds.
    fn claim_meter_events(
        &mut self,
        real_now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>>;
    fn finish_meter_event(
        &mut self,
        env: EnvId,
        event_id: &str,
        attempt: &MeterAttempt,
        now: Timestamp,
    ) -> StoreResult<()>;
    fn meter_events(&mut self, q: &MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>>;
    /// Makes a meter event pending and due at `now`; false if there is none.
    fn retry_meter_event(
        &mut self,
        env: EnvId,
        event_id: &str,
        now: Timestamp,
    ) -> StoreResult<bool>;
    fn settings(&mut self, env: EnvId) -> StoreResult<Option<StoredSettings>>;
    fn put_settings(&mut self, env: EnvId, document: &str, now: Timestamp) -> StoreResult<()>;
    /// The environment's user-token secret: `candidate` is stored if it has none yet, and the
    /// stored one is returned (so concurrent first uses agree on one secret).
    fn token_secret(&mut self, env: EnvId, candidate: &str, now: Timestamp) -> StoreResult<String>;

    /// Records that a counter's window rolled over (into `grant_id`, if it made a grant).
    fn mark_rollover(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        grant_id: Option<&str>,
    ) -> StoreResult<()>;
}

/// What the store remembers of a biller subscription: whose it is and the newest snapshot
/// applied, so an older one arriving late changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillerSnapshotRow {
    pub subscription_id: String,
    pub subject: String,
    /// The applied event's `created`.
    pub created: Timestamp,
    /// The applied snapshot's period start (breaks ties of `created`, which has 1 s steps).
    pub period_start: Option<Timestamp>,
    /// The subscription ended: no later event brings it back.
    pub ended: bool,
}

/// A reservation's draw on one grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditHold {
    pub grant_id: String,
    /// The grant's owner, locked with the reservation's subjects.
    pub subject: String,
    pub units: u64,
    /// Still held (the reservation is pending).
    pub active: bool,
}
