//! The plan document (API.md §5, with the credit packs of §8 and the costs of §9): its wire
//! form, its defaults, and [`plan_document_from_json`], which checks a whole document and turns
//! it into the core's [`tollgate_core::plan::PlanDocument`].
//!
//! The document is stored as the normalized JSON this module produces (every default filled
//! in), so what `GET /v1/plans` shows is exactly what decides requests. Display fields (names,
//! prices, features, biller ids, credit packs, costs) are checked and kept in the JSON even
//! where no decision reads them yet.

use crate::convert;
use crate::field::{field_path, index_path, FieldError};
use crate::metering::{Enforcement, LimitKind, LimitScope};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_core::input::{InputError, Metadata, METADATA_ENTRIES_MAX, QUANTITY_MAX};
use tollgate_core::plan::{
    self as core, check_id, EventPattern, LIMITS_PER_PLAN_MAX, MATCH_RULES_PER_LIMIT_MAX,
    PLANS_MAX, PLAN_DOCUMENT_BYTES_MAX, WINDOW_SECONDS_MAX,
};
use tollgate_core::window::{BillingInterval, CalendarPeriod, IntervalUnit};
use utoipa::ToSchema;

/// Longest plan or pack name, limit label or credit item unit label, in bytes.
pub const DISPLAY_NAME_BYTES_MAX: usize = 200;
/// Most feature lines on one plan.
pub const FEATURES_PER_PLAN_MAX: usize = 50;
/// Longest feature line, in bytes.
pub const FEATURE_BYTES_MAX: usize = 500;
/// Most Stripe price ids or Polar product ids on one plan or pack.
pub const BILLER_IDS_MAX: usize = 50;
/// Longest Stripe price id or Polar product id, in bytes.
pub const BILLER_ID_BYTES_MAX: usize = 200;
/// Largest `billing.intervalCount`.
pub const BILLING_INTERVAL_COUNT_MAX: u32 = 100;
/// Longest unit name (`count`, `tokens`), in bytes (`[A-Za-z0-9_.:-]`).
pub const UNIT_BYTES_MAX: usize = 64;
/// Most values one metadata key of a match rule may list.
pub const MATCH_VALUES_PER_KEY_MAX: usize = 100;
/// Most notification thresholds on one limit.
pub const NOTIFY_THRESHOLDS_MAX: usize = 10;
/// Largest notification threshold, in percent of the quota.
pub const NOTIFY_PERCENT_MAX: u32 = 1000;
/// The notification thresholds of a limit that names none, in percent.
pub const NOTIFY_DEFAULT: [u32; 2] = [80, 100];
/// Most credit packs in one document.
pub const CREDIT_PACKS_MAX: usize = 200;
/// Most items in one credit pack.
pub const ITEMS_PER_PACK_MAX: usize = 20;
/// Longest credit expiry, in days (ten years).
pub const EXPIRES_AFTER_DAYS_MAX: u32 = 3650;
/// Most cost rules in one document.
pub const COSTS_MAX: usize = 500;
/// The unit of a limit or credit item that names none.
pub const UNIT_DEFAULT: &str = "count";

fn yes() -> bool {
    true
}
fn one() -> u64 {
    1
}
fn unit_default() -> String {
    UNIT_DEFAULT.to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedEvents {
    /// An event no limit or credit matches is denied with `unmatched_event`.
    #[default]
    Deny,
    Allow,
}

/// A whole plan document, as `PUT /v1/plans` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanDocument {
    /// The plan of users without a subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "free")]
    pub default_plan: Option<String>,
    /// The plan of user ids starting with `anon_` (default: the default plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_plan: Option<String>,
    #[serde(default)]
    pub unmatched_events: UnmatchedEvents,
    #[serde(default)]
    pub plans: Vec<Plan>,
    #[serde(default)]
    pub credit_packs: Vec<CreditPack>,
    #[serde(default)]
    pub costs: Vec<Cost>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plan {
    #[schema(example = "pro")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shown to publishable keys (pricing pages). Default true.
    #[serde(default = "yes")]
    pub public: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub billing: Billing,
    #[serde(default)]
    pub stripe_price_ids: Vec<String>,
    #[serde(default)]
    pub polar_product_ids: Vec<String>,
    /// Caps the members of an account on this plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seats: Option<u32>,
    #[serde(default)]
    pub limits: Vec<Limit>,
}

/// A display price: `amount` minor units of `currency` per `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    pub amount: u64,
    #[schema(example = "usd")]
    pub currency: String,
    /// `day`, `week`, `month` or `year`; default: the billing interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// The billing cycle of subscriptions to a plan: `intervalCount` × `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Billing {
    #[serde(default = "Billing::default_interval")]
    pub interval: String,
    #[serde(default = "Billing::default_count")]
    pub interval_count: u32,
}

impl Billing {
    fn default_interval() -> String {
        IntervalUnit::Month.as_str().to_string()
    }
    fn default_count() -> u32 {
        1
    }
}

impl Default for Billing {
    fn default() -> Self {
        Self {
            interval: Self::default_interval(),
            interval_count: Self::default_count(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    /// Unique within a plan; the same id in two plans is the same counter.
    #[schema(example = "images_daily")]
    pub id: String,
    /// Default: the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default = "unit_default")]
    pub unit: String,
    pub quota: u64,
    #[serde(default)]
    pub kind: LimitKind,
    #[serde(default)]
    pub scope: LimitScope,
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Each unit of a matching event counts this many times. Default 1.
    #[serde(default = "one")]
    pub multiplier: u64,
    /// Required, except for a concurrency limit (which ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The limit counts an event if any rule matches it.
    #[serde(rename = "match")]
    pub rules: Vec<MatchRule>,
    /// Thresholds in percent of the quota that notify (default `[80, 100]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover: Option<Rollover>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowType {
    Calendar,
    Subscription,
    Rolling,
    FirstUse,
    Lifetime,
}

/// When a limit's counter resets. `period` and `timezone` belong to calendar windows,
/// `seconds` to rolling and first_use windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    #[serde(rename = "type")]
    pub kind: WindowType,
    /// `minute`, `hour`, `day`, `week` (from Monday), `month` or `year`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// An IANA time zone; default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "Europe/Paris")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
}

/// One match rule: an event name or glob, and for each listed metadata key the values allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchRule {
    #[schema(example = "image.*")]
    pub event: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, MatchValues>,
}

/// One allowed value, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MatchValues {
    One(String),
    Any(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollover {
    pub max_quantity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditPack {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Higher is spent first. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Null: never.
    #[serde(default)]
    pub expires_after_days: Option<u32>,
    #[serde(default)]
    pub stripe_price_ids: Vec<String>,
    #[serde(default)]
    pub polar_product_ids: Vec<String>,
    /// Notify when the available balance falls to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_at: Option<u64>,
    pub items: Vec<CreditItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditItem {
    pub id: String,
    #[serde(default = "unit_default")]
    pub unit: String,
    pub quantity: u64,
    #[serde(rename = "match")]
    pub rules: Vec<MatchRule>,
}

/// What one unit of matching events costs, applied when a call gives no `costMicros`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cost {
    #[serde(rename = "match")]
    pub rule: MatchRule,
    pub micros_per_unit: u64,
}

/// The answer of `PUT /v1/plans` and `GET /v1/plans`: the stored document and its version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionedPlanDocument {
    /// 0 before any document was applied.
    pub version: i64,
    #[serde(flatten)]
    pub document: PlanDocument,
}

/// Checks a whole plan document and returns it normalized (every default filled in) and as
/// the core sees it. The error names the first bad field.
pub fn plan_document_from_json(
    text: &str,
) -> Result<(serde_json::Value, core::PlanDocument), FieldError> {
    if text.len() > PLAN_DOCUMENT_BYTES_MAX {
        return Err(FieldError::new(
            "",
            format!("the plan document must be at most {PLAN_DOCUMENT_BYTES_MAX} bytes"),
        ));
    }
    let mut wire: PlanDocument = crate::field::from_json_str(text)?;
    let domain = normalize(&mut wire)?;
    let value = serde_json::to_value(&wire)
        .map_err(|e| FieldError::new("", format!("the plan document cannot be encoded: {e}")))?;
    Ok((value, domain))
}

/// The normalized form of an environment that has no document yet.
pub fn empty_plan_document() -> serde_json::Value {
    serde_json::to_value(PlanDocument::default()).unwrap_or(serde_json::Value::Null)
}

/// What a publishable key may see of a normalized document: public plans only, and no biller
/// ids or costs anywhere.
pub fn public_plan_document(document: &serde_json::Value) -> serde_json::Value {
    let mut doc = document.clone();
    let Some(obj) = doc.as_object_mut() else {
        return doc;
    };
    obj.remove("costs");
    if let Some(plans) = obj.get_mut("plans").and_then(|p| p.as_array_mut()) {
        plans.retain(is_public);
        plans.iter_mut().for_each(strip_biller_ids);
    }
    if let Some(packs) = obj.get_mut("creditPacks").and_then(|p| p.as_array_mut()) {
        packs.iter_mut().for_each(strip_biller_ids);
    }
    doc
}

/// Whether a normalized plan is shown to publishable keys.
pub fn is_public(plan: &serde_json::Value) -> bool {
    plan.get("public").and_then(|p| p.as_bool()).unwrap_or(true)
}

/// Removes the biller ids of a normalized plan or credit pack.
pub fn strip_biller_ids(value: &mut serde_json::Value) {
    if let Some(obj) = value.as_object_mut() {
        obj.remove("stripePriceIds");
        obj.remove("polarProductIds");
    }
}

// ---------------------------------------------------------------- checking

fn plan_error(e: core::PlanError) -> FieldError {
    FieldError::new(e.path, e.message)
}

fn too_many(field: &str, max: usize) -> FieldError {
    convert::refuse(field, InputError::TooMany { max })
}

fn at_most_quantity(field: &str, n: u64, min: u64) -> Result<(), FieldError> {
    if n < min || n > QUANTITY_MAX {
        return Err(convert::refuse(
            field,
            InputError::OutOfRange {
                min,
                max: QUANTITY_MAX,
            },
        ));
    }
    Ok(())
}

/// Fills the defaults of `doc` in place and builds the core document.
fn normalize(doc: &mut PlanDocument) -> Result<core::PlanDocument, FieldError> {
    if doc.plans.len() > PLANS_MAX {
        return Err(too_many("plans", PLANS_MAX));
    }
    let mut plans = Vec::with_capacity(doc.plans.len());
    for (i, plan) in doc.plans.iter_mut().enumerate() {
        plans.push(normalize_plan(&index_path("plans", i), plan)?);
    }
    check_credit_packs(&mut doc.credit_packs)?;
    check_costs(&doc.costs)?;
    let unmatched = match doc.unmatched_events {
        UnmatchedEvents::Deny => core::UnmatchedEvents::Deny,
        UnmatchedEvents::Allow => core::UnmatchedEvents::Allow,
    };
    core::PlanDocument::new(
        doc.default_plan.clone(),
        doc.anonymous_plan.clone(),
        unmatched,
        plans,
    )
    .map_err(plan_error)
}

fn normalize_plan(path: &str, plan: &mut Plan) -> Result<core::Plan, FieldError> {
    check_id(&field_path(path, "id"), &plan.id).map_err(plan_error)?;
    if let Some(name) = &plan.name {
        convert::bounded_text(&field_path(path, "name"), name, DISPLAY_NAME_BYTES_MAX)?;
    }
    if let Some(description) = &plan.description {
        // Long-form text: only the whole document's size bounds it.
        convert::bounded_text(
            &field_path(path, "description"),
            description,
            PLAN_DOCUMENT_BYTES_MAX,
        )?;
    }
    let features = field_path(path, "features");
    if plan.features.len() > FEATURES_PER_PLAN_MAX {
        return Err(too_many(&features, FEATURES_PER_PLAN_MAX));
    }
    for (k, feature) in plan.features.iter().enumerate() {
        convert::bounded_text(&index_path(&features, k), feature, FEATURE_BYTES_MAX)?;
    }
    let billing = billing(&field_path(path, "billing"), &plan.billing)?;
    if let Some(price) = &mut plan.price {
        normalize_price(&field_path(path, "price"), price, &plan.billing.interval)?;
    }
    biller_ids(&field_path(path, "stripePriceIds"), &plan.stripe_price_ids)?;
    biller_ids(
        &field_path(path, "polarProductIds"),
        &plan.polar_product_ids,
    )?;
    if plan.seats == Some(0) {
        return Err(convert::refuse(
            &field_path(path, "seats"),
            InputError::OutOfRange {
                min: 1,
                max: u32::MAX.into(),
            },
        ));
    }
    let limits_path = field_path(path, "limits");
    if plan.limits.len() > LIMITS_PER_PLAN_MAX {
        return Err(too_many(&limits_path, LIMITS_PER_PLAN_MAX));
    }
    let mut limits = Vec::with_capacity(plan.limits.len());
    for (j, limit) in plan.limits.iter_mut().enumerate() {
        limits.push(normalize_limit(&index_path(&limits_path, j), limit)?);
    }
    Ok(core::Plan {
        id: plan.id.clone(),
        billing,
        seats: plan.seats,
        limits,
    })
}

fn billing(path: &str, billing: &Billing) -> Result<BillingInterval, FieldError> {
    let unit = interval_unit(&field_path(path, "interval"), &billing.interval)?;
    if billing.interval_count == 0 || billing.interval_count > BILLING_INTERVAL_COUNT_MAX {
        return Err(convert::refuse(
            &field_path(path, "intervalCount"),
            InputError::OutOfRange {
                min: 1,
                max: BILLING_INTERVAL_COUNT_MAX.into(),
            },
        ));
    }
    Ok(BillingInterval {
        unit,
        count: billing.interval_count,
    })
}

fn interval_unit(path: &str, s: &str) -> Result<IntervalUnit, FieldError> {
    IntervalUnit::parse(s)
        .ok_or_else(|| FieldError::new(path, "must be one of day, week, month, year"))
}

fn normalize_price(path: &str, price: &mut Price, billing: &str) -> Result<(), FieldError> {
    at_most_quantity(&field_path(path, "amount"), price.amount, 0)?;
    let currency = &price.currency;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(FieldError::new(
            field_path(path, "currency"),
            "must be a three-letter ISO 4217 code such as usd",
        ));
    }
    price.currency = currency.to_ascii_lowercase();
    let interval = price.interval.get_or_insert_with(|| billing.to_string());
    interval_unit(&field_path(path, "interval"), interval)?;
    Ok(())
}

fn biller_ids(path: &str, ids: &[String]) -> Result<(), FieldError> {
    if ids.len() > BILLER_IDS_MAX {
        return Err(too_many(path, BILLER_IDS_MAX));
    }
    for (k, id) in ids.iter().enumerate() {
        convert::bounded_name(&index_path(path, k), id, BILLER_ID_BYTES_MAX)?;
    }
    Ok(())
}

fn unit(path: &str, unit: &str) -> Result<(), FieldError> {
    let ok = !unit.is_empty()
        && unit.len() <= UNIT_BYTES_MAX
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            path,
            format!("must be 1-{UNIT_BYTES_MAX} characters of A-Z a-z 0-9 _ . : -"),
        ))
    }
}

fn normalize_limit(path: &str, limit: &mut Limit) -> Result<core::Limit, FieldError> {
    check_id(&field_path(path, "id"), &limit.id).map_err(plan_error)?;
    let label = limit.label.get_or_insert_with(|| limit.id.clone()).clone();
    convert::bounded_name(&field_path(path, "label"), &label, DISPLAY_NAME_BYTES_MAX)?;
    unit(&field_path(path, "unit"), &limit.unit)?;
    at_most_quantity(&field_path(path, "quota"), limit.quota, 0)?;
    at_most_quantity(&field_path(path, "multiplier"), limit.multiplier, 1)?;
    let window_path = field_path(path, "window");
    if limit.window.is_none() && limit.kind == LimitKind::Concurrency {
        limit.window = Some(Window {
            kind: WindowType::Lifetime,
            period: None,
            timezone: None,
            seconds: None,
        });
    }
    let Some(window) = &mut limit.window else {
        return Err(FieldError::new(window_path, "missing field `window`"));
    };
    let window = normalize_window(&window_path, window)?;
    let rules = match_rules(&field_path(path, "match"), &limit.rules)?;
    let notify = limit.notify.get_or_insert_with(|| NOTIFY_DEFAULT.to_vec());
    let notify_path = field_path(path, "notify");
    if notify.len() > NOTIFY_THRESHOLDS_MAX {
        return Err(too_many(&notify_path, NOTIFY_THRESHOLDS_MAX));
    }
    for (k, percent) in notify.iter().enumerate() {
        if *percent == 0 || *percent > NOTIFY_PERCENT_MAX {
            return Err(convert::refuse(
                &index_path(&notify_path, k),
                InputError::OutOfRange {
                    min: 1,
                    max: NOTIFY_PERCENT_MAX.into(),
                },
            ));
        }
    }
    if let Some(rollover) = &limit.rollover {
        at_most_quantity(
            &field_path(&field_path(path, "rollover"), "maxQuantity"),
            rollover.max_quantity,
            0,
        )?;
    }
    Ok(core::Limit {
        id: limit.id.clone(),
        label,
        unit: limit.unit.clone(),
        quota: limit.quota,
        kind: match limit.kind {
            LimitKind::Consumable => core::LimitKind::Consumable,
            LimitKind::Concurrency => core::LimitKind::Concurrency,
        },
        scope: match limit.scope {
            LimitScope::User => core::Scope::User,
            LimitScope::Account => core::Scope::Account,
        },
        enforcement: match limit.enforcement {
            Enforcement::Hard => core::Enforcement::Hard,
            Enforcement::Soft => core::Enforcement::Soft,
        },
        multiplier: limit.multiplier,
        window,
        rules,
    })
}

fn normalize_window(path: &str, window: &mut Window) -> Result<core::WindowSpec, FieldError> {
    let not_here = |field: &str| {
        FieldError::new(
            field_path(path, field),
            format!("is not allowed in a {} window", window_name(window.kind)),
        )
    };
    let calendar = window.kind == WindowType::Calendar;
    let timed = matches!(window.kind, WindowType::Rolling | WindowType::FirstUse);
    if !calendar && window.period.is_some() {
        return Err(not_here("period"));
    }
    if !calendar && window.timezone.is_some() {
        return Err(not_here("timezone"));
    }
    if !timed && window.seconds.is_some() {
        return Err(not_here("seconds"));
    }
    match window.kind {
        WindowType::Calendar => {
            let period_path = field_path(path, "period");
            let Some(period) = &window.period else {
                return Err(FieldError::new(period_path, "missing field `period`"));
            };
            let period = CalendarPeriod::parse(period).ok_or_else(|| {
                FieldError::new(
                    period_path,
                    "must be one of minute, hour, day, week, month, year",
                )
            })?;
            let name = window.timezone.get_or_insert_with(|| "UTC".to_string());
            let timezone = TimeZone::get(name).map_err(|_| {
                FieldError::new(
                    field_path(path, "timezone"),
                    format!("unknown time zone {name:?}; use an IANA name such as Europe/Paris"),
                )
            })?;
            Ok(core::WindowSpec::Calendar { period, timezone })
        }
        WindowType::Rolling | WindowType::FirstUse => {
            let seconds_path = field_path(path, "seconds");
            let Some(seconds) = window.seconds else {
                return Err(FieldError::new(seconds_path, "missing field `seconds`"));
            };
            let seconds = u32::try_from(seconds)
                .ok()
                .filter(|s| (1..=WINDOW_SECONDS_MAX).contains(s))
                .ok_or_else(|| {
                    convert::refuse(
                        &seconds_path,
                        InputError::OutOfRange {
                            min: 1,
                            max: WINDOW_SECONDS_MAX.into(),
                        },
                    )
                })?;
            Ok(if window.kind == WindowType::Rolling {
                core::WindowSpec::Rolling { seconds }
            } else {
                core::WindowSpec::FirstUse { seconds }
            })
        }
        WindowType::Subscription => Ok(core::WindowSpec::Subscription),
        WindowType::Lifetime => Ok(core::WindowSpec::Lifetime),
    }
}

fn window_name(kind: WindowType) -> &'static str {
    match kind {
        WindowType::Calendar => "calendar",
        WindowType::Subscription => "subscription",
        WindowType::Rolling => "rolling",
        WindowType::FirstUse => "first_use",
        WindowType::Lifetime => "lifetime",
    }
}

fn match_rules(path: &str, rules: &[MatchRule]) -> Result<Vec<core::MatchRule>, FieldError> {
    if rules.is_empty() {
        return Err(FieldError::new(path, "must have at least one rule"));
    }
    if rules.len() > MATCH_RULES_PER_LIMIT_MAX {
        return Err(too_many(path, MATCH_RULES_PER_LIMIT_MAX));
    }
    rules
        .iter()
        .enumerate()
        .map(|(k, rule)| match_rule(&index_path(path, k), rule))
        .collect()
}

fn match_rule(path: &str, rule: &MatchRule) -> Result<core::MatchRule, FieldError> {
    let event = EventPattern::parse(&rule.event)
        .map_err(|e| convert::refuse(&field_path(path, "event"), e))?;
    let metadata_path = field_path(path, "metadata");
    if rule.metadata.len() > METADATA_ENTRIES_MAX {
        return Err(too_many(&metadata_path, METADATA_ENTRIES_MAX));
    }
    let mut metadata = Vec::with_capacity(rule.metadata.len());
    for (key, values) in &rule.metadata {
        let key_path = field_path(&metadata_path, key);
        let values = match values {
            MatchValues::One(v) => vec![v.clone()],
            MatchValues::Any(vs) => vs.clone(),
        };
        if values.is_empty() {
            return Err(FieldError::new(&key_path, "must list at least one value"));
        }
        if values.len() > MATCH_VALUES_PER_KEY_MAX {
            return Err(too_many(&key_path, MATCH_VALUES_PER_KEY_MAX));
        }
        for value in &values {
            // The same rules as metadata on events: a value that no event can carry is a typo.
            Metadata::parse(BTreeMap::from([(key.clone(), value.clone())]))
                .map_err(|e| convert::refuse(&key_path, e.error))?;
        }
        metadata.push((key.clone(), values));
    }
    Ok(core::MatchRule { event, metadata })
}

fn check_credit_packs(packs: &mut [CreditPack]) -> Result<(), FieldError> {
    if packs.len() > CREDIT_PACKS_MAX {
        return Err(too_many("creditPacks", CREDIT_PACKS_MAX));
    }
    for i in 0..packs.len() {
        let path = index_path("creditPacks", i);
        let pack = &packs[i];
        check_id(&field_path(&path, "id"), &pack.id).map_err(plan_error)?;
        if packs[..i].iter().any(|p| p.id == pack.id) {
            return Err(FieldError::new(
                field_path(&path, "id"),
                format!("duplicate credit pack id {:?}", pack.id),
            ));
        }
        if let Some(name) = &pack.name {
            convert::bounded_text(&field_path(&path, "name"), name, DISPLAY_NAME_BYTES_MAX)?;
        }
        if let Some(days) = pack.expires_after_days {
            if days == 0 || days > EXPIRES_AFTER_DAYS_MAX {
                return Err(convert::refuse(
                    &field_path(&path, "expiresAfterDays"),
                    InputError::OutOfRange {
                        min: 1,
                        max: EXPIRES_AFTER_DAYS_MAX.into(),
                    },
                ));
            }
        }
        biller_ids(&field_path(&path, "stripePriceIds"), &pack.stripe_price_ids)?;
        biller_ids(
            &field_path(&path, "polarProductIds"),
            &pack.polar_product_ids,
        )?;
        if let Some(low) = pack.low_at {
            at_most_quantity(&field_path(&path, "lowAt"), low, 0)?;
        }
        check_credit_items(&field_path(&path, "items"), &pack.items)?;
    }
    Ok(())
}

fn check_credit_items(path: &str, items: &[CreditItem]) -> Result<(), FieldError> {
    if items.is_empty() {
        return Err(FieldError::new(path, "must have at least one item"));
    }
    if items.len() > ITEMS_PER_PACK_MAX {
        return Err(too_many(path, ITEMS_PER_PACK_MAX));
    }
    for (k, item) in items.iter().enumerate() {
        let item_path = index_path(path, k);
        check_id(&field_path(&item_path, "id"), &item.id).map_err(plan_error)?;
        if items[..k].iter().any(|other| other.id == item.id) {
            return Err(FieldError::new(
                field_path(&item_path, "id"),
                format!("duplicate item id {:?}", item.id),
            ));
        }
        unit(&field_path(&item_path, "unit"), &item.unit)?;
        at_most_quantity(&field_path(&item_path, "quantity"), item.quantity, 1)?;
        match_rules(&field_path(&item_path, "match"), &item.rules)?;
    }
    Ok(())
}

fn check_costs(costs: &[Cost]) -> Result<(), FieldError> {
    if costs.len() > COSTS_MAX {
        return Err(too_many("costs", COSTS_MAX));
    }
    for (k, cost) in costs.iter().enumerate() {
        let path = index_path("costs", k);
        match_rule(&field_path(&path, "match"), &cost.rule)?;
        at_most_quantity(&field_path(&path, "microsPerUnit"), cost.micros_per_unit, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(
        doc: serde_json::Value,
    ) -> Result<(serde_json::Value, core::PlanDocument), FieldError> {
        plan_document_from_json(&doc.to_string())
    }

    fn error_field(doc: serde_json::Value) -> String {
        apply(doc).unwrap_err().field
    }

    fn example() -> serde_json::Value {
        json!({
          "defaultPlan": "free",
          "plans": [{
            "id": "free", "name": "Free",
            "price": {"amount": 0, "currency": "USD"},
            "stripePriceIds": ["price_1"],
            "limits": [
              {"id": "images_daily", "label": "Images per day", "quota": 10,
               "window": {"type": "calendar", "period": "day", "timezone": "Europe/Paris"},
               "match": [{"event": "image.*"}]},
              {"id": "premium_images", "quota": 0, "window": {"type": "subscription"},
               "match": [{"event": "image.*", "metadata": {"model": ["flux-pro", "dall-e-3"]}}]},
              {"id": "streams", "quota": 2, "kind": "concurrency", "match": [{"event": "*"}]}
            ]}]
        })
    }

    #[test]
    fn defaults_are_filled_in() {
        let (value, doc) = apply(example()).unwrap();
        assert_eq!(value["unmatchedEvents"], "deny");
        let plan = &value["plans"][0];
        assert_eq!(plan["public"], true);
        assert_eq!(
            plan["billing"],
            json!({"interval": "month", "intervalCount": 1})
        );
        assert_eq!(
            plan["price"],
            json!({"amount": 0, "currency": "usd", "interval": "month"})
        );
        let limit = &plan["limits"][1];
        assert_eq!(limit["label"], "premium_images");
        assert_eq!(limit["kind"], "consumable");
        assert_eq!(limit["scope"], "user");
        assert_eq!(limit["enforcement"], "hard");
        assert_eq!(limit["multiplier"], 1);
        assert_eq!(limit["unit"], "count");
        assert_eq!(limit["notify"], json!([80, 100]));
        assert_eq!(plan["limits"][2]["window"], json!({"type": "lifetime"}));
        assert_eq!(doc.plans[0].limits.len(), 3);
        assert_eq!(doc.default_plan.as_deref(), Some("free"));
        // Normalizing is idempotent: the stored form parses to itself.
        let (again, _) = plan_document_from_json(&value.to_string()).unwrap();
        assert_eq!(again, value);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut doc = example();
        doc["plans"][0]["limits"][0]["window"]["timezone"] = json!("Mars/Olympus");
        assert_eq!(error_field(doc), "plans[0].limits[0].window.timezone");
        let mut doc = example();
        doc["plans"][0]["limits"][1]["quota"] = json!(1.5);
        assert_eq!(error_field(doc), "plans[0].limits[1].quota");
        let mut doc = example();
        doc["plans"][0]["limits"][1]["quota"] = json!(-1);
        assert_eq!(error_field(doc), "plans[0].limits[1].quota");
        let mut doc = example();
        doc["plans"][0]["limits"][1]["quota"] = json!(9_007_199_254_740_992u64);
        assert_eq!(error_field(doc), "plans[0].limits[1].quota");
        let mut doc = example();
        doc["plans"][0]["limits"][1]["match"][0]["event"] = json!("image render");
        assert_eq!(error_field(doc), "plans[0].limits[1].match[0].event");
        let mut doc = example();
        doc["plans"][0]["limits"][0]["quotta"] = json!(3);
        assert_eq!(error_field(doc), "plans[0].limits[0].quotta");
        let mut doc = example();
        doc["plans"][0]["limits"][0]["window"]["seconds"] = json!(60);
        assert_eq!(error_field(doc), "plans[0].limits[0].window.seconds");
        let mut doc = example();
        doc["plans"][0]["limits"][1]["window"] = json!({"type": "rolling"});
        assert_eq!(error_field(doc), "plans[0].limits[1].window.seconds");
        let mut doc = example();
        doc["plans"][0]["limits"][1]["id"] = json!("images_daily");
        assert_eq!(error_field(doc), "plans[0].limits[1].id");
        let mut doc = example();
        doc["defaultPlan"] = json!("pro");
        assert_eq!(error_field(doc), "defaultPlan");
        let mut doc = example();
        doc["plans"][0]["limits"][0]
            .as_object_mut()
            .unwrap()
            .remove("window");
        assert_eq!(error_field(doc), "plans[0].limits[0].window");
    }

    #[test]
    fn counts_are_capped() {
        let plan = |i: usize| json!({"id": format!("p{i}")});
        let plans: Vec<_> = (0..PLANS_MAX).map(plan).collect();
        assert!(apply(json!({"plans": plans})).is_ok());
        let plans: Vec<_> = (0..=PLANS_MAX).map(plan).collect();
        assert_eq!(error_field(json!({"plans": plans})), "plans");
        let limit = |j: usize| {
            json!({"id": format!("l{j}"), "quota": 1, "window": {"type": "lifetime"},
                   "match": [{"event": "*"}]})
        };
        let limits: Vec<_> = (0..LIMITS_PER_PLAN_MAX).map(limit).collect();
        assert!(apply(json!({"plans": [{"id": "p", "limits": limits}]})).is_ok());
        let limits: Vec<_> = (0..=LIMITS_PER_PLAN_MAX).map(limit).collect();
        assert_eq!(
            error_field(json!({"plans": [{"id": "p", "limits": limits}]})),
            "plans[0].limits"
        );
    }

    #[test]
    fn document_size_is_capped() {
        let padding = " ".repeat(PLAN_DOCUMENT_BYTES_MAX - 2);
        assert!(plan_document_from_json(&format!("{{{padding}}}")).is_ok());
        let padding = " ".repeat(PLAN_DOCUMENT_BYTES_MAX - 1);
        assert!(plan_document_from_json(&format!("{{{padding}}}")).is_err());
    }

    #[test]
    fn publishable_view_hides_private_plans_and_biller_ids() {
        let mut doc = example();
        doc["plans"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "secret", "public": false}));
        let (value, _) = apply(doc).unwrap();
        let public = public_plan_document(&value);
        assert_eq!(public["plans"].as_array().unwrap().len(), 1);
        assert!(public["plans"][0].get("stripePriceIds").is_none());
        assert!(public.get("costs").is_none());
    }
}
