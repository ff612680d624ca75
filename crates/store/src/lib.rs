//! The storage seam: the [`Store`] trait every backend implements, its commands, outcomes and
//! error, shared by the SQLite and PostgreSQL adapters.
//!
//! A metering command is executed by the store as load → decide (with `tollgate-core`) →
//! persist, atomically, and answered only once durable. The server computes `now` (real time
//! plus the environment's test-clock offset) and every id, and passes them in; the store never
//! reads the clock for a decision.

pub use analytics::{
    AnalyticsQuery, AnalyticsRow, CaptureCommand, Dimension, FunnelQuery, Metric, Occurrence,
    RevenueSource, RollupPlan, ANALYTICS_BUCKETS_MAX, ANALYTICS_ROWS_MAX, DAY_MS,
    FUNNEL_OCCURRENCES_MAX, REVENUE_SUBSCRIPTIONS_MAX,
};
use async_trait::async_trait;
use jiff::Timestamp;
use std::sync::Arc;
use tollgate_core::biller::{Biller, BillerEvent, PastDuePolicy};
use tollgate_core::decision::DenyReason;
use tollgate_core::input::{
    AccountId, EventName, IdempotencyKey, Metadata, Quantity, StoredText, TtlSeconds, UserId,
};
use tollgate_core::plan::{Enforcement, EventPattern, LimitKind, MatchRule, PlanDocument, Scope};
use tollgate_core::subscription::{
    CancelAt, HistoryEntry, Subscription, UpsertOutcome, UpsertRequest,
};

/// Most commands the writer takes into one transaction.
pub const WRITER_BATCH_MAX: usize = 512;
/// Most commands waiting for the writer; past this a command answers `Unavailable`.
pub const WRITER_QUEUE_MAX: usize = 8192;
/// Most reservations one sweep expires in one transaction.
pub const SWEEP_BATCH_MAX: usize = 1000;

/// One environment (live or test) of one project; everything metered lives in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Live,
    Test,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Test => "test",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Mode::Live),
            "test" => Some(Mode::Test),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Secret,
    Publishable,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Secret => "secret",
            KeyKind::Publishable => "publishable",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "secret" => Some(KeyKind::Secret),
            "publishable" => Some(KeyKind::Publishable),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub project_id: String,
    pub name: String,
    pub created_at: Timestamp,
}

/// An API key as stored: only its SHA-256 hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub key_id: String,
    pub project_id: String,
    pub mode: Mode,
    pub kind: KeyKind,
    pub name: String,
    /// The first characters of the key, shown in listings (`tg_sk_test_ab12…`).
    pub prefix: String,
    pub hash: [u8; 32],
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub project_id: String,
    pub mode: Mode,
    pub kind: KeyKind,
    pub name: String,
    pub prefix: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// Who a valid key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    pub env: EnvId,
    pub project_id: String,
    pub mode: Mode,
    pub kind: KeyKind,
    pub key_id: String,
    /// The test clock's offset from real time, in seconds (always 0 in live).
    pub clock_offset_seconds: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Pending,
    Committed,
    Released,
    Expired,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "committed" => Some(Self::Committed),
            "released" => Some(Self::Released),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// The state of one limit for one subject, as API.md §3 shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    pub limit_id: String,
    pub label: String,
    pub unit: String,
    pub kind: LimitKind,
    pub scope: Scope,
    pub enforcement: Enforcement,
    pub quota: u64,
    pub used: u64,
    pub reserved: u64,
    pub remaining: u64,
    /// None for a first_use window that is not open.
    pub window_start: Option<Timestamp>,
    /// None for lifetime windows, rolling windows with nothing counted, unopened first_use.
    pub resets_at: Option<Timestamp>,
}

/// Whether an event found limits to count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchStatus {
    Matched,
    Unmatched,
    NoSubscription,
}

impl MatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::Unmatched => "unmatched",
            Self::NoSubscription => "no_subscription",
        }
    }
}

/// An idempotency key with the fingerprint of the request it was first used with, and how to
/// render the answer that a replay returns (the store keeps the rendered answer opaque).
#[derive(Debug, Clone)]
pub struct Idempotency<T> {
    pub key: IdempotencyKey,
    /// A digest of the request body: the same key with another fingerprint is a conflict.
    pub fingerprint: String,
    pub render: fn(&T) -> String,
}

/// The answer to an idempotent command: decided now, or the first answer replayed.
#[derive(Debug, Clone)]
pub enum Idempotent<T> {
    Fresh(T),
    Replayed(String),
}

#[derive(Debug, Clone)]
pub struct ReserveCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub reservation_id: String,
    /// The id of the usage event this reservation ends in (or of the denial event).
    pub event_id: String,
    pub user_id: UserId,
    pub event: EventName,
    pub quantity: Quantity,
    pub metadata: Metadata,
    pub ttl: TtlSeconds,
    pub prompt: Option<StoredText>,
    pub record_denials: bool,
    pub idempotency: Option<Idempotency<ReserveOutcome>>,
    /// Ids of the ledger entries (and rollover grants) the command may write.
    pub ids: IdSeed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOutcome {
    pub allowed: bool,
    pub reservation_id: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub plan_id: Option<String>,
    pub reasons: Vec<DenyReason>,
    pub denied_by: Vec<String>,
    pub limits: Vec<LimitState>,
    /// Credits held for the part no plan quota covers.
    pub credits: CreditsDrawn,
}

#[derive(Debug, Clone)]
pub struct CheckCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub user_id: UserId,
    pub event: EventName,
    pub quantity: Quantity,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub allowed: bool,
    pub plan_id: Option<String>,
    pub reasons: Vec<DenyReason>,
    pub denied_by: Vec<String>,
    pub limits: Vec<LimitState>,
    /// The credits a reserve would hold now.
    pub credits: CreditsDrawn,
}

/// What a commit does with a reservation that expired before it (`ifExpired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IfExpired {
    /// Refuse with `NotPending { status: Expired }` (the default).
    #[default]
    Reject,
    /// Record the work anyway: it happened (a job that outran its TTL). Charged like a commit
    /// of more than was held, since the expiry returned the hold; the answer says `late`.
    Record,
}

#[derive(Debug, Clone)]
pub struct CommitCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub reservation_id: String,
    /// The final quantity; None commits the reserved one.
    pub quantity: Option<Quantity>,
    pub metadata: Option<Metadata>,
    pub cost_micros: Option<u64>,
    pub response: Option<StoredText>,
    pub if_expired: IfExpired,
    /// The id of the usage event a late commit records: the reservation's own event id went
    /// to its `expired` event.
    pub late_event_id: String,
    pub ids: IdSeed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    pub reservation_id: String,
    pub event_id: String,
    pub quantity: u64,
    pub overage: u64,
    /// Committed after the reservation had expired (`ifExpired: record`).
    pub late: bool,
    pub limits: Vec<LimitState>,
    /// Units of the final quantity paid for with credits.
    pub credits_used: u64,
}

#[derive(Debug, Clone)]
pub struct ReleaseCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub reservation_id: String,
    pub reason: Option<String>,
    pub error_code: Option<String>,
    pub response: Option<StoredText>,
    pub ids: IdSeed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseOutcome {
    pub reservation_id: String,
    pub limits: Vec<LimitState>,
}

#[derive(Debug, Clone)]
pub struct ExtendCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub reservation_id: String,
    pub ttl: TtlSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendOutcome {
    pub reservation_id: String,
    pub expires_at: Timestamp,
}

/// A reservation as `GET /v1/reservations/{id}` shows it: a pending one past its expiry reads
/// as `Expired`, swept or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationView {
    pub reservation_id: String,
    pub status: ReservationStatus,
    pub user_id: String,
    pub event: String,
    pub quantity: u64,
    pub metadata: Metadata,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Set once the reservation is committed (the usage event it became).
    pub event_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TrackCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub event_id: String,
    pub user_id: UserId,
    pub event: EventName,
    pub quantity: Quantity,
    pub metadata: Metadata,
    /// When the usage happened (≤ now, ≥ now − 35 days); it picks the window.
    pub occurred_at: Timestamp,
    pub cost_micros: Option<u64>,
    pub prompt: Option<StoredText>,
    pub response: Option<StoredText>,
    pub enforce: bool,
    pub record_denials: bool,
    pub idempotency: Option<Idempotency<TrackOutcome>>,
    pub ids: IdSeed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackOutcome {
    pub event_id: Option<String>,
    pub recorded: bool,
    pub allowed: bool,
    pub reasons: Vec<DenyReason>,
    pub match_status: MatchStatus,
    pub overage: u64,
    pub plan_id: Option<String>,
    pub limits: Vec<LimitState>,
    /// Units paid for with credits.
    pub credits_used: u64,
}

#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub env: EnvId,
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub user_id: UserId,
    /// Only limits with a rule whose event pattern matches this name.
    pub event: Option<EventName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageOutcome {
    /// The user the answer is about: the one asked for, or the user an identified anonymous
    /// id stands for.
    pub user_id: String,
    pub plan_id: Option<String>,
    pub subscription: Option<Subscription>,
    pub limits: Vec<LimitState>,
    /// The user's credit balances per pack item (their own grants and their account's).
    pub credits: Vec<PackBalance>,
}

/// `GET /v1/accounts/{accountId}/usage`: an account's pooled limits and each member's own.
#[derive(Debug, Clone)]
pub struct AccountUsageQuery {
    pub env: EnvId,
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub account_id: AccountId,
}

/// Most members `GET /v1/accounts/{accountId}/usage` shows; past it the answer is refused.
pub const ACCOUNT_USAGE_MEMBERS_MAX: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUsageOutcome {
    /// The plan in force for the account (its active subscription's, else the default).
    pub plan_id: Option<String>,
    pub subscription: Option<Subscription>,
    /// The plan's `scope: account` limits, counted for the whole account.
    pub pooled: Vec<LimitState>,
    /// Each member (sorted by user id) with their `scope: user` limits.
    pub members: Vec<(String, Vec<LimitState>)>,
}

/// `GET /v1/events`: usage events newest first, strictly before a cursor, filtered by every
/// field given (all must hold).
#[derive(Debug, Clone)]
pub struct EventsQuery {
    pub env: EnvId,
    pub user_id: Option<UserId>,
    pub status: Option<String>,
    /// An event name, or a glob where `*` matches any run of characters (`image.*`).
    pub event: Option<EventPattern>,
    /// Only events at or after this instant.
    pub from: Option<Timestamp>,
    /// Only events before this instant.
    pub to: Option<Timestamp>,
    /// Only events whose metadata has each of these keys with exactly this value.
    pub metadata: Vec<(String, String)>,
    /// Rows wanted (the caller asks one more to know whether a next page exists).
    pub limit: usize,
    /// Only events before this (time, then event id), the last row of the previous page.
    pub before: Option<(Timestamp, String)>,
}

impl EventsQuery {
    /// Every event of the environment: add filters to the fields.
    pub fn all(env: EnvId, limit: usize) -> Self {
        Self {
            env,
            user_id: None,
            status: None,
            event: None,
            from: None,
            to: None,
            metadata: Vec::new(),
            limit,
            before: None,
        }
    }

    /// The metadata filter as one JSON object (`{"model": "flux-pro"}`), as the stores match it.
    pub fn metadata_json(&self) -> Option<String> {
        (!self.metadata.is_empty()).then(|| {
            let map: serde_json::Map<String, serde_json::Value> = self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::Value::Object(map).to_string()
        })
    }
}

/// One usage event with what only `GET /v1/events/{id}` shows: the logged prompt and response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEventDetail {
    pub event: StoredEvent,
    pub prompt: Option<String>,
    pub response: Option<String>,
    /// The prompt or the response was cut to its size limit when it was logged.
    pub truncated: bool,
}

/// One stored usage event, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub event_id: String,
    pub occurred_at: Timestamp,
    pub user_id: String,
    /// The account the user used it as a member of, if any.
    pub account_id: Option<String>,
    /// The anonymous id it was recorded under, if an identify moved it to `user_id`.
    pub anonymous_id: Option<String>,
    pub event: String,
    pub quantity: u64,
    pub metadata: Metadata,
    pub cost_micros: Option<u64>,
    pub status: String,
    pub plan_id: Option<String>,
    pub reservation_id: Option<String>,
    pub reasons: Vec<String>,
    pub overage: u64,
    pub credits_used: u64,
}

/// Whose subscription: a user's or an account's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    User(UserId),
    Account(AccountId),
}

impl Owner {
    /// The counter and subscription subject (`u:…` or `w:…`).
    pub fn subject(&self) -> String {
        match self {
            Owner::User(u) => procedure::user_subject(u.as_str()),
            Owner::Account(a) => procedure::account_subject(a.as_str()),
        }
    }

    /// The id the default plan is chosen for (an account is never anonymous).
    pub fn fallback_id(&self) -> &str {
        match self {
            Owner::User(u) => u.as_str(),
            Owner::Account(_) => "",
        }
    }
}

/// One member of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub added_at: Timestamp,
}

/// An account as `GET /v1/accounts/{accountId}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// Sorted by user id.
    pub members: Vec<Member>,
    /// The plan in force for the account's members (its active subscription's, else the
    /// default plan), and the seat cap in force: the active subscription's `seats`, else that
    /// plan's.
    pub plan_id: Option<String>,
    pub seats_max: Option<u32>,
    pub subscription: Option<Subscription>,
}

/// `POST /v1/identify`: the anonymous subject `anonymous_id` becomes `user_id`.
#[derive(Debug, Clone)]
pub struct IdentifyCommand {
    pub env: EnvId,
    pub now: Timestamp,
    /// The document in force: its limit ids name the counters to merge.
    pub plans: Arc<PlanDocument>,
    pub anonymous_id: UserId,
    pub user_id: UserId,
    /// Merged into the traits stored for the user the anonymous id stands for (see
    /// [`persons`]), whether or not this call merged anything else.
    pub traits: Option<Traits>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyOutcome {
    /// The user the anonymous id now stands for (`user_id`, or the user `user_id` itself was
    /// merged into).
    pub user_id: String,
    /// False when this anonymous id already stood for that user (nothing changed).
    pub merged: bool,
    /// Usage events moved from the anonymous id to the user.
    pub events_merged: u64,
}

/// A stored plan document: the JSON text as applied, its version (1, 2, ...), and the
/// environment it belongs to (named in logs and `/readyz` when it does not load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlans {
    pub version: i64,
    pub document: String,
    pub project_id: String,
    pub mode: Mode,
}

/// What `put_plans` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutPlansOutcome {
    /// The version made, or the newest version when nothing was made.
    pub version: i64,
    /// False when the document was the newest version's text already: nothing was stored.
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub user_id: String,
    pub subscription: Subscription,
}

/// Where a command's own ids come from when it may need several (ledger entries, rollover
/// grants): a random seed the server makes, to which the command appends a counter. A command
/// that runs twice (a redone batch) makes the same ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSeed(pub String);

impl IdSeed {
    /// The `n`-th ledger entry id of the command.
    pub fn ledger(&self, n: usize) -> String {
        format!("led_{}{n:04x}", self.0)
    }
    /// The `n`-th grant id of the command.
    pub fn grant(&self, n: usize) -> String {
        format!("grt_{}{n:04x}", self.0)
    }
}

/// Why credits were granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    Purchase,
    Grant,
    Refund,
    Manual,
    /// Made by a limit's rollover from a window's unused quota.
    Rollover,
}

impl GrantSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Grant => "grant",
            Self::Refund => "refund",
            Self::Manual => "manual",
            Self::Rollover => "rollover",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Purchase,
            Self::Grant,
            Self::Refund,
            Self::Manual,
            Self::Rollover,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A credit grant as stored: what it is, never how much is left (that is its ledger's sum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub grant_id: String,
    /// Whose credits: `u:…` (a user) or `w:…` (an account, spent by its members).
    pub subject: String,
    /// The pack it came from; none for a rollover grant.
    pub pack_id: Option<String>,
    /// The pack item, or the limit id of a rollover grant.
    pub item_id: String,
    pub unit: String,
    /// Units granted.
    pub quantity: u64,
    /// Higher is spent first.
    pub priority: i32,
    /// The events it pays for, as granted (a later plan document does not change them).
    pub rules: Vec<MatchRule>,
    /// None: never.
    pub expires_at: Option<Timestamp>,
    pub source: GrantSource,
    pub external_ref: Option<String>,
    pub note: Option<String>,
    pub created_at: Timestamp,
}

/// What a grant's ledger sums to: units left (held ones included) and units held by pending
/// reservations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    pub remaining: u64,
    pub held: u64,
}

/// A grant and its balance, as answers show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub row: GrantRow,
    pub balance: Balance,
}

/// The kinds of ledger entry (API.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    /// +remaining.
    Grant,
    /// +held.
    Hold,
    /// −held.
    Release,
    /// −remaining, and −held for the part that was held.
    Burn,
    /// +remaining.
    Refund,
    /// −remaining.
    Expire,
    /// −remaining.
    Revoke,
    /// +remaining (a rollover grant's first entry).
    Rollover,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Hold => "hold",
            Self::Release => "release",
            Self::Burn => "burn",
            Self::Refund => "refund",
            Self::Expire => "expire",
            Self::Revoke => "revoke",
            Self::Rollover => "rollover",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Grant,
            Self::Hold,
            Self::Release,
            Self::Burn,
            Self::Refund,
            Self::Expire,
            Self::Revoke,
            Self::Rollover,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One ledger entry: one change to one grant, with the balance after it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Its place in the environment's ledger (the newest is the largest); the cursor.
    pub seq: i64,
    pub entry_id: String,
    pub at: Timestamp,
    pub kind: LedgerKind,
    pub grant_id: String,
    /// The grant's owner (`u:…` or `w:…`).
    pub subject: String,
    /// The user whose request made it (hold, release, burn, refund), if any.
    pub user_id: Option<String>,
    /// Always > 0.
    pub quantity: u64,
    pub after: Balance,
    pub reservation_id: Option<String>,
    pub event_id: Option<String>,
    pub external_ref: Option<String>,
    /// A sentence for a person.
    pub reason: String,
}

/// Credits a reserve holds (or a check would): the total and each grant's part, in spend order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreditsDrawn {
    pub held: u64,
    pub grants: Vec<(String, u64)>,
}

/// A subject's credits of one pack item (or one limit's rollovers), over unexpired grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackBalance {
    pub pack_id: Option<String>,
    pub item_id: String,
    pub unit: String,
    /// `remaining − held`.
    pub available: u64,
    pub held: u64,
}

/// One grant to make: one per item of the pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    pub grant_id: String,
    pub item_id: String,
    pub unit: String,
    pub quantity: u64,
    pub rules: Vec<MatchRule>,
}

/// `POST /v1/credits/grants`: `packs` of pack `pack_id` for a user or an account.
#[derive(Debug, Clone)]
pub struct GrantCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub owner: Owner,
    pub pack_id: String,
    pub priority: i32,
    /// How many packs; each item grants `item.quantity × packs`.
    pub packs: u64,
    pub items: Vec<NewGrant>,
    pub expires_at: Option<Timestamp>,
    pub source: GrantSource,
    /// A second grant with the same reference grants nothing and answers the first.
    pub external_ref: Option<String>,
    pub note: Option<String>,
    pub ids: IdSeed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantOutcome {
    /// False when the reference had been granted already: nothing was granted.
    pub created: bool,
    pub grants: Vec<Grant>,
}

/// What `POST /v1/credits/revoke` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    Grant(String),
    ExternalRef(String),
}

#[derive(Debug, Clone)]
pub struct RevokeCommand {
    pub env: EnvId,
    pub now: Timestamp,
    pub target: RevokeTarget,
    pub reason: Option<String>,
    pub ids: IdSeed,
}

/// Units removed from each grant (0 when nothing was left to remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    pub revoked: Vec<(String, u64)>,
}

/// `GET /v1/users/{id}/credits`, `GET /v1/accounts/{id}/credits`.
#[derive(Debug, Clone)]
pub struct CreditsQuery {
    pub env: EnvId,
    pub now: Timestamp,
    pub owner: Owner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditsOutcome {
    /// Unexpired grants with something left, soonest expiry first (a user's own and their
    /// account's).
    pub grants: Vec<Grant>,
    pub packs: Vec<PackBalance>,
}

/// `GET /v1/users/{id}/credits/ledger`: newest first, strictly before a cursor.
#[derive(Debug, Clone)]
pub struct LedgerQuery {
    pub env: EnvId,
    pub owner: Owner,
    /// Rows wanted (the caller asks one more to know whether a next page exists).
    pub limit: usize,
    /// Only entries with a smaller `seq`.
    pub before: Option<i64>,
}

// ---- billers (API.md §10): integrations, customer mappings, received events, meter outbox

/// An environment's integration with a biller: its webhook endpoint and its settings (a JSON
/// document the API layer reads and writes; the store keeps it as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub env: EnvId,
    pub biller: Biller,
    /// The path segment of `/webhooks/{biller}/{endpointId}`: unique across the install.
    pub endpoint_id: String,
    pub config: String,
    pub updated_at: Timestamp,
}

/// The environment a webhook endpoint belongs to, and its test-clock offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointTarget {
    pub clock_offset_seconds: i64,
    pub integration: Integration,
}

/// What became of a received biller event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillerEventStatus {
    /// It changed a subscription, a mapping or granted credits.
    Applied,
    /// Acknowledged; it changes nothing (an event type not used, an unmapped price...).
    Ignored,
    /// An older snapshot of a subscription than one applied, or one of a subscription that
    /// ended.
    Stale,
    /// No user or account is known for its customer yet: it is applied again when one is
    /// mapped.
    Unresolved,
    /// Processing failed (the biller was answered 5xx and retries).
    Failed,
}

impl BillerEventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Stale => "stale",
            Self::Unresolved => "unresolved",
            Self::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Applied,
            Self::Ignored,
            Self::Stale,
            Self::Unresolved,
            Self::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A received biller event as kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBillerEvent {
    pub biller: Biller,
    pub event_id: String,
    pub event_type: String,
    pub received_at: Timestamp,
    /// The biller's customer it names, if any (unresolved events wait on it).
    pub customer_id: Option<String>,
    pub status: BillerEventStatus,
    pub note: String,
    /// The raw body as received (signed; replays parse it again).
    pub body: String,
    /// Times it was received (deliveries and replays).
    pub deliveries: u32,
}

/// A verified biller event to apply.
#[derive(Debug, Clone)]
pub struct BillerEventCommand {
    pub env: EnvId,
    /// The environment's time.
    pub now: Timestamp,
    pub plans: Arc<PlanDocument>,
    pub past_due: PastDuePolicy,
    pub event: BillerEvent,
    pub body: String,
    /// Apply it again even if it was received before (`tollgate webhooks replay`, or a
    /// customer mapped after the event waited on it).
    pub replay: bool,
    /// Names a subscription created by this event, and grants made by it.
    pub new_subscription_id: String,
    pub ids: IdSeed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillerEventOutcome {
    pub status: BillerEventStatus,
    /// Received before (and not replayed): nothing was done again.
    pub duplicate: bool,
    pub note: String,
}

/// `GET /v1/integrations/{biller}/events`: newest first.
#[derive(Debug, Clone)]
pub struct BillerEventsQuery {
    pub env: EnvId,
    pub biller: Biller,
    pub status: Option<BillerEventStatus>,
    pub customer_id: Option<String>,
    pub limit: usize,
    /// Only events received before this one (its `received_at`, `event_id`).
    pub before: Option<(Timestamp, String)>,
}

/// Where a committed usage event stands on its way to a Stripe meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterStatus {
    Pending,
    Delivered,
    /// Refused by Stripe (a 4xx other than 429): not retried.
    Failed,
}

impl MeterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One committed usage event to forward to a Stripe meter (the outbox row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEventRow {
    pub env: EnvId,
    /// The usage event (`evt_…`): Stripe's `identifier`, so a retry never charges twice.
    pub event_id: String,
    pub meter_event_name: String,
    pub user_id: String,
    pub value: u64,
    pub occurred_at: Timestamp,
    pub status: MeterStatus,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterAttempt {
    Delivered {
        status: u16,
    },
    /// Try again at `next_attempt_at` (429, 5xx, network, no customer mapped yet).
    Retry {
        status: Option<u16>,
        error: String,
        next_attempt_at: Timestamp,
    },
    Failed {
        status: Option<u16>,
        error: String,
    },
}

/// `GET /v1/integrations/stripe/meter-events`: newest first.
#[derive(Debug, Clone)]
pub struct MeterEventsQuery {
    pub env: EnvId,
    pub status: Option<MeterStatus>,
    pub limit: usize,
    /// Only rows created before this one (its `created_at`, `event_id`).
    pub before: Option<(Timestamp, String)>,
}

/// What `PATCH /v1/settings` may change; the store keeps the document as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSettings {
    pub document: String,
    pub updated_at: Timestamp,
}

/// What the server learns about the writer, for `/metrics`.
/// What the hot-path engine reports for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Records in the command log that the tables do not hold yet.
    pub projection_lag: u64,
    /// Metering commands answered from memory since the start.
    pub carried: u64,
    /// Metering commands run on the tables since the start (the engine does not carry
    /// something they needed).
    pub on_tables: u64,
}

pub trait StoreObserver: Send + Sync + 'static {
    /// One writer transaction made durable, holding `commands` commands.
    fn batch_committed(&self, commands: usize);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("reservation is {}", status.as_str())]
    NotPending { status: ReservationStatus },
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    #[error("subscription has already ended")]
    AlreadyCanceled,
    /// Adding a member to an account whose seat cap (its subscription's `seats`, else its
    /// plan's) is reached.
    #[error("every seat of the account is taken ({max})")]
    SeatLimitReached { max: u32 },
    /// An identify of an anonymous id that already stands for another user.
    #[error("the anonymous id already stands for user {user_id}")]
    AlreadyIdentified { user_id: String },
    #[error("already exists")]
    AlreadyExists,
    /// A request that is well-formed but cannot apply (e.g. merged metadata over its cap).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Storage unreachable or overloaded; nothing was applied, retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Storage failed after the write's commit began (a failed COMMIT, a lost connection, a
    /// failed sync): the write may or may not have been applied. Only a retry with the same
    /// idempotency key or reservation id settles it, and counts it once.
    #[error("storage outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A bug or corrupt state; the message is for logs, never for clients.
    #[error("storage failure: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything Tollgate persists. Implementations are cheap to clone behind an `Arc`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- install, projects, keys
    /// Whether an install exists (an admin token was set).
    async fn is_initialized(&self) -> StoreResult<bool>;
    /// Creates the install in one transaction: admin token, first project (with its two
    /// environments) and its keys. `AlreadyExists` if the install exists.
    async fn initialize(
        &self,
        admin_token_hash: [u8; 32],
        project: Project,
        keys: Vec<NewKey>,
    ) -> StoreResult<()>;
    async fn verify_admin(&self, token_hash: [u8; 32]) -> StoreResult<bool>;
    /// Replaces the admin token's hash: the old token stops working at once, on every node.
    /// `NotFound` when there is no install yet.
    async fn rotate_admin_token(&self, token_hash: [u8; 32]) -> StoreResult<()>;
    /// Creates a project and its live and test environments.
    async fn create_project(&self, project: Project) -> StoreResult<()>;
    async fn list_projects(&self) -> StoreResult<Vec<Project>>;
    /// `NotFound` if the project does not exist.
    async fn create_key(&self, key: NewKey) -> StoreResult<()>;
    async fn list_keys(&self, project_id: &str) -> StoreResult<Vec<KeyInfo>>;
    /// `NotFound` for an unknown key id; revoking twice is fine.
    async fn revoke_key(&self, key_id: &str, now: Timestamp) -> StoreResult<()>;
    /// The context of an unrevoked key with this hash.
    async fn authenticate(&self, key_hash: [u8; 32]) -> StoreResult<Option<AuthContext>>;

    // ---- test clock
    /// Moves the environment's clock forward; returns the new offset in seconds.
    async fn advance_clock(&self, env: EnvId, seconds: i64) -> StoreResult<i64>;

    // ---- plans
    /// Stores a plan document (judged and normalized by the caller) as the environment's next
    /// version, unless it is the newest version's text already: then nothing is stored and
    /// that version is answered with `changed: false`. Reading the newest version and storing
    /// the next are one atomic step, so the same document applied at once through several
    /// nodes makes one version.
    async fn put_plans(
        &self,
        env: EnvId,
        document: String,
        now: Timestamp,
    ) -> StoreResult<PutPlansOutcome>;
    /// The newest stored plan document of an environment.
    async fn get_plans(&self, env: EnvId) -> StoreResult<Option<StoredPlans>>;
    /// The environment of `mode` in a project (each project has one of each).
    async fn environment_of(&self, project_id: &str, mode: Mode) -> StoreResult<Option<EnvId>>;
    /// The newest stored plan document older than `version`: where a node that cannot load
    /// a version looks for the last one it can. Every version is kept.
    async fn get_plans_before(&self, env: EnvId, version: i64) -> StoreResult<Option<StoredPlans>>;
    /// The newest plan document version of an environment (0 without one): a cheap check
    /// that lets a node notice a document another node applied.
    async fn plans_version(&self, env: EnvId) -> StoreResult<i64>;

    // ---- metering
    async fn reserve(&self, cmd: ReserveCommand) -> StoreResult<Idempotent<ReserveOutcome>>;
    async fn commit(&self, cmd: CommitCommand) -> StoreResult<CommitOutcome>;
    async fn release(&self, cmd: ReleaseCommand) -> StoreResult<ReleaseOutcome>;
    async fn extend(&self, cmd: ExtendCommand) -> StoreResult<ExtendOutcome>;
    async fn get_reservation(
        &self,
        env: EnvId,
        reservation_id: &str,
        now: Timestamp,
    ) -> StoreResult<ReservationView>;
    async fn track(&self, cmd: TrackCommand) -> StoreResult<Idempotent<TrackOutcome>>;
    async fn check(&self, cmd: CheckCommand) -> StoreResult<CheckOutcome>;
    /// Usage events, newest first (see [`EventsQuery`]).
    async fn events(&self, query: EventsQuery) -> StoreResult<Vec<StoredEvent>>;
    /// One usage event, with its logged prompt and response.
    async fn event(&self, env: EnvId, event_id: String) -> StoreResult<Option<StoredEventDetail>>;
    /// Usage events grouped and summed (see [`AnalyticsQuery`]), at most `limit` rows.
    async fn analytics(&self, query: AnalyticsQuery) -> StoreResult<Vec<AnalyticsRow>>;
    /// Records a product event (never metered).
    async fn capture(&self, cmd: CaptureCommand) -> StoreResult<()>;
    /// The occurrences of a funnel's step events, by user then time, at most `limit`.
    async fn funnel_occurrences(&self, query: FunnelQuery) -> StoreResult<Vec<Occurrence>>;
    /// Every subscription of the environment with its plan history, at most `limit`.
    async fn revenue_sources(&self, env: EnvId, limit: usize) -> StoreResult<Vec<RevenueSource>>;
    /// Merges an anonymous subject into a user: usage, pending holds and events move to the
    /// user, and the anonymous id stands for the user from then on. Idempotent.
    async fn identify(&self, cmd: IdentifyCommand) -> StoreResult<IdentifyOutcome>;
    async fn usage(&self, query: UsageQuery) -> StoreResult<UsageOutcome>;
    /// An account's pooled limits and each member's (`NotFound`: no members, no subscription;
    /// `Invalid`: more than [`ACCOUNT_USAGE_MEMBERS_MAX`] members).
    async fn account_usage(&self, query: AccountUsageQuery) -> StoreResult<AccountUsageOutcome>;

    // ---- persons (see [`persons`])
    /// One step of erasing a user (see [`EraseCommand`]): their logged prompts and responses
    /// cleared, events and reservations kept with every other field; their traits deleted.
    async fn erase_user(&self, cmd: EraseCommand) -> StoreResult<Erased>;
    /// The retention purge, one step: clears the prompt and response of at most `limit` usage
    /// events (and reservations) of `env` that happened more than `retention` before the
    /// environment's now (`real_now` plus its test-clock offset); returns how many rows changed.
    /// The caller repeats it until a step changes fewer than `limit`.
    async fn purge_logged_text(
        &self,
        env: EnvId,
        retention: jiff::SignedDuration,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<usize>;
    /// Every environment of the install (the purge walks them).
    async fn environments(&self) -> StoreResult<Vec<EnvId>>;
    /// Expires pending reservations past their expiry and credit grants past theirs, in every
    /// environment (each by its own clock: `real_now` plus its offset), at most
    /// [`SWEEP_BATCH_MAX`] of each; returns how many.
    async fn expire_due(&self, real_now: Timestamp, ids: IdSeed) -> StoreResult<usize>;

    // ---- credits
    /// Grants a pack, idempotently on `external_ref` (the same reference for another owner or
    /// pack is an `IdempotencyConflict`).
    async fn grant_credits(&self, cmd: GrantCommand) -> StoreResult<GrantOutcome>;
    /// Removes what is left of a grant, or of every grant made with a reference; `NotFound`
    /// if there is none.
    async fn revoke_credits(&self, cmd: RevokeCommand) -> StoreResult<RevokeOutcome>;
    async fn credits(&self, query: CreditsQuery) -> StoreResult<CreditsOutcome>;
    /// Ledger entries newest first (see [`LedgerQuery`]).
    async fn credit_ledger(&self, query: LedgerQuery) -> StoreResult<Vec<LedgerEntry>>;

    // ---- subscriptions
    /// Upserts a user's or an account's subscription (the plan was checked to exist in
    /// `plans`, the document in force, whose windows a change may move; see
    /// `procedure::carry_into_new_windows`).
    async fn upsert_subscription(
        &self,
        env: EnvId,
        owner: Owner,
        plans: Arc<PlanDocument>,
        request: UpsertRequest,
        new_id: String,
        now: Timestamp,
    ) -> StoreResult<UpsertOutcome>;
    async fn get_subscription(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Option<Subscription>>;
    /// Stored history rows, oldest first (see `subscription::history_view` for the reader's view).
    async fn subscription_history(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Vec<HistoryEntry>>;
    /// `NotFound` without a subscription; `AlreadyCanceled` after its end.
    async fn cancel_subscription(
        &self,
        env: EnvId,
        owner: Owner,
        plans: Arc<PlanDocument>,
        at: CancelAt,
        reason: Option<String>,
        now: Timestamp,
    ) -> StoreResult<(Subscription, HistoryEntry)>;

    // ---- accounts
    /// Adds a user to an account (moving them from another one); `SeatLimitReached` if the
    /// seat cap in force (the subscription's `seats`, else its plan's) is reached. Adding a member
    /// again changes nothing. Returns when the user joined the account.
    async fn add_member(
        &self,
        env: EnvId,
        account: AccountId,
        user: UserId,
        plans: Arc<PlanDocument>,
        now: Timestamp,
    ) -> StoreResult<Timestamp>;
    /// `NotFound` if the user is not a member of the account.
    async fn remove_member(&self, env: EnvId, account: AccountId, user: UserId) -> StoreResult<()>;
    /// `NotFound` if the account has neither members nor a subscription.
    async fn account(
        &self,
        env: EnvId,
        account: AccountId,
        plans: Arc<PlanDocument>,
        now: Timestamp,
    ) -> StoreResult<AccountView>;

    // ---- billers
    /// Stores an environment's integration with a biller; its endpoint id is kept once made
    /// (`endpoint_id` names a new one).
    async fn put_integration(
        &self,
        env: EnvId,
        biller: Biller,
        config: String,
        forwarding: Vec<(String, String)>,
        endpoint_id: String,
        now: Timestamp,
    ) -> StoreResult<Integration>;
    async fn integration(&self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>>;
    /// The integration a webhook endpoint belongs to.
    async fn endpoint(
        &self,
        biller: Biller,
        endpoint_id: &str,
    ) -> StoreResult<Option<EndpointTarget>>;
    /// Maps a biller's customer to a user or an account.
    async fn put_biller_customer(
        &self,
        env: EnvId,
        biller: Biller,
        customer_id: String,
        owner: Owner,
        now: Timestamp,
    ) -> StoreResult<()>;
    /// The biller customer mapped to a subject, if any (the newest mapping).
    async fn biller_customer_of(
        &self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Option<String>>;
    /// Applies a verified biller event (see `procedure::billers`).
    async fn apply_biller_event(&self, cmd: BillerEventCommand) -> StoreResult<BillerEventOutcome>;
    /// Records a received event whose processing failed (kept for inspection and replay).
    async fn record_biller_failure(&self, env: EnvId, event: StoredBillerEvent) -> StoreResult<()>;
    async fn biller_events(&self, query: BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>>;
    async fn biller_event(
        &self,
        env: EnvId,
        biller: Biller,
        event_id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>>;
    /// Forgets the bodies and ids of events received before `before` (deduplication needs
    /// them for Stripe's 3-day retry window; they are kept 30 days).
    async fn purge_biller_events(&self, before: Timestamp) -> StoreResult<usize>;
    /// Takes up to `limit` pending meter events due at `real_now` (each environment by its
    /// own clock) and leases them until `lease_until` (real time), so no other node sends them
    /// meanwhile; each with its environment's clock offset in seconds.
    async fn claim_meter_events(
        &self,
        real_now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>>;
    /// Records how an attempt to send a meter event ended.
    async fn finish_meter_event(
        &self,
        env: EnvId,
        event_id: &str,
        attempt: MeterAttempt,
        now: Timestamp,
    ) -> StoreResult<()>;
    async fn meter_events(&self, query: MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>>;
    /// Sends a failed meter event again (pending, due now); `NotFound` for an unknown one.
    async fn retry_meter_event(
        &self,
        env: EnvId,
        event_id: &str,
        now: Timestamp,
    ) -> StoreResult<()>;

    // ---- settings
    async fn settings(&self, env: EnvId) -> StoreResult<Option<StoredSettings>>;
    async fn put_settings(&self, env: EnvId, document: String, now: Timestamp) -> StoreResult<()>;
    /// The environment's user-token secret, `candidate` stored first if it has none.
    async fn token_secret(
        &self,
        env: EnvId,
        candidate: String,
        now: Timestamp,
    ) -> StoreResult<String>;

    // ---- system
    /// `Ok` when storage is reachable and takes writes; otherwise a sentence for an operator
    /// naming why (shown by `/readyz`; it never carries paths, URLs or other internals).
    async fn ready(&self) -> Result<(), String>;
    /// Commands waiting for the writer now.
    fn queue_depth(&self) -> usize;
    /// Whether other nodes may write to this storage (several `serve` processes on one
    /// database). A node then cannot learn another's test-clock advance from its own memory.
    fn shared_by_nodes(&self) -> bool {
        false
    }
    /// The hot-path engine's figures, for metrics; `None` for a store without one.
    fn engine_stats(&self) -> Option<EngineStats> {
        None
    }
    /// Finishes queued writes and stops the writer.
    async fn shutdown(&self);
}

pub mod analytics;
pub mod codec;
#[cfg(feature = "contract")]
pub mod contract;
pub mod persons;
pub mod procedure;
pub mod schema;
pub mod seed;

pub use persons::{
    EraseCommand, Erased, LoggedTextCleared, Traits, TraitsError, LOGGED_TEXT_BATCH_MAX,
    TRAITS_BYTES_MAX, TRAITS_KEYS_MAX,
};
