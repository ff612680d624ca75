//! The plan document (API.md §5, with the credit packs of §8 and the costs of §9): its wire
//! form, its defaults, and [`plan_document_from_json`], which checks a whole document and turns
//! it into the core's [`tollgate_core::plan::PlanDocument`].
//!
//! The document is stored as the normalized JSON this module produces (every default filled
//! in), so what `GET /v1/plans` shows is exactly what decides requests. Display fields (names,
//! prices, features, biller ids, credit packs, costs) are checked and kept in the JSON even
//! where no decision reads them yet.
//!
//! A document is judged once, on its way in, in the form it will be stored: the size limit
//! applies to the normalized text, not to the request body, because the defaults make it
//! larger. What is stored is read back by [`plan_document_from_stored`], which never applies
//! an input limit again: an input accepted today must load tomorrow, also after an upgrade
//! that tightens a limit. It checks only what the core's types need (shapes, names of
//! periods and enums, time zones, the quantity range), so a stored version fails to load only
//! when it cannot be represented at all, such as a time zone this build does not know.

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
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub default_plan: Option<String>,
    /// The plan of user ids starting with `anon_` (default: the default plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub anonymous_plan: Option<String>,
    #[serde(default)]
    pub unmatched_events: UnmatchedEvents,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub plans: Vec<Plan>,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub credit_packs: Vec<CreditPack>,
    #[serde(default)]
    #[schema(max_items = 500)]
    pub costs: Vec<Cost>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plan {
    #[schema(example = "pro")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 200,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shown to publishable keys (pricing pages). Default true.
    #[serde(default = "yes")]
    pub public: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub features: Vec<String>,
    #[serde(default)]
    pub billing: Billing,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub stripe_price_ids: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub polar_product_ids: Vec<String>,
    /// Caps the members of an account on this plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub seats: Option<u32>,
    #[serde(default)]
    #[schema(max_items = 100)]
    pub limits: Vec<Limit>,
}

/// A display price: `amount` minor units of `currency` per `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    #[schema(maximum = 9_007_199_254_740_991_u64)]
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
    #[schema(minimum = 1, maximum = 100)]
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
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub id: String,
    /// Default: the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub label: Option<String>,
    #[serde(default = "unit_default")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub unit: String,
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub quota: u64,
    #[serde(default)]
    pub kind: LimitKind,
    #[serde(default)]
    pub scope: LimitScope,
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Each unit of a matching event counts this many times. Default 1.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub multiplier: u64,
    /// Required, except for a concurrency limit (which ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The limit counts an event if any rule matches it.
    #[serde(rename = "match")]
    #[schema(min_items = 1, max_items = 32)]
    pub rules: Vec<MatchRule>,
    /// Thresholds in percent of the quota that notify (default `[80, 100]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 10)]
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
    #[schema(minimum = 1, maximum = 34560000)]
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
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub max_quantity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditPack {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 200,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    /// Higher is spent first. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Null: never.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_after_days: Option<u32>,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub stripe_price_ids: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub polar_product_ids: Vec<String>,
    /// Notify when the available balance falls to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub low_at: Option<u64>,
    #[schema(min_items = 1, max_items = 20)]
    pub items: Vec<CreditItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditItem {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub id: String,
    #[serde(default = "unit_default")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub unit: String,
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub quantity: u64,
    #[serde(rename = "match")]
    #[schema(min_items = 1, max_items = 32)]
    pub rules: Vec<MatchRule>,
}

/// What one unit of matching events costs, applied when a call gives no `costMicros`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cost {
    #[serde(rename = "match")]
    pub rule: MatchRule,
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub micros_per_unit: u64,
}

/// The answer of `GET /v1/plans`: the stored document and its version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionedPlanDocument {
    /// 0 before any document was applied.
    pub version: i64,
    #[serde(flatten)]
    pub document: PlanDocument,
}

/// The answer of `PUT /v1/plans`: the stored document, its version, and whether this apply
/// made that version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AppliedPlanDocument {
    pub version: i64,
    /// False when the document, normalized, was already the newest version: nothing was
    /// stored and `version` is that version.
    pub changed: bool,
    #[serde(flatten)]
    pub document: PlanDocument,
}

/// A plan document in its stored form: the normalized JSON (every default filled in, keys
/// sorted), that JSON as the text that is stored and compared, and the core's form.
#[derive(Debug, Clone)]
pub struct NormalizedPlans {
    pub json: serde_json::Value,
    pub text: String,
    pub document: core::PlanDocument,
}

/// Judges a plan document on its way in (`PUT /v1/plans`) by every rule, the size limit on
/// its stored form included, and returns that form. The error names the first bad field.
pub fn plan_document_from_json(text: &str) -> Result<NormalizedPlans, FieldError> {
    // The body limit already bounds the text; this keeps parsing bounded for any caller.
    if text.len() > PLAN_DOCUMENT_BYTES_MAX {
        return Err(FieldError::new(
            "",
            format!("the plan document must be at most {PLAN_DOCUMENT_BYTES_MAX} bytes"),
        ));
    }
    let normalized = normalized(text, Judge::Input)?;
    if normalized.text.len() > PLAN_DOCUMENT_BYTES_MAX {
        return Err(FieldError::new(
            "",
            format!(
                "the plan document as stored, with every default filled in, is {} bytes; at \
                 most {PLAN_DOCUMENT_BYTES_MAX} are allowed (fewer plans or limits, or shorter \
                 labels and descriptions, make it smaller)",
                normalized.text.len()
            ),
        ));
    }
    Ok(normalized)
}

/// Reads back a document that [`plan_document_from_json`] accepted, possibly under an earlier
/// version of its rules: no input limit applies, only what the core's types need. An error
/// means this build cannot represent the document (a time zone it does not know, a field or
/// name from a newer version).
pub fn plan_document_from_stored(text: &str) -> Result<NormalizedPlans, FieldError> {
    normalized(text, Judge::Stored)
}

fn normalized(text: &str, judge: Judge) -> Result<NormalizedPlans, FieldError> {
    let mut wire: PlanDocument = crate::field::from_json_str(text)?;
    let document = normalize(&mut wire, judge)?;
    let json = serde_json::to_value(&wire)
        .map_err(|e| FieldError::new("", format!("the plan document cannot be encoded: {e}")))?;
    let text = json.to_string();
    Ok(NormalizedPlans {
        json,
        text,
        document,
    })
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

/// Which rules a document is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    /// A document on its way in: every rule, the input limits included.
    Input,
    /// A stored document, accepted once: only what the core's types need.
    Stored,
}

impl Judge {
    /// Applies an input rule (a limit, a syntax, a display field's form) to a document on
    /// its way in; a stored document was judged by it when it was accepted.
    fn rule(self, check: impl FnOnce() -> Result<(), FieldError>) -> Result<(), FieldError> {
        match self {
            Judge::Input => check(),
            Judge::Stored => Ok(()),
        }
    }
}

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
fn normalize(doc: &mut PlanDocument, judge: Judge) -> Result<core::PlanDocument, FieldError> {
    judge.rule(|| {
        if doc.plans.len() > PLANS_MAX {
            return Err(too_many("plans", PLANS_MAX));
        }
        Ok(())
    })?;
    let mut plans = Vec::with_capacity(doc.plans.len());
    for (i, plan) in doc.plans.iter_mut().enumerate() {
        plans.push(normalize_plan(&index_path("plans", i), plan, judge)?);
    }
    judge.rule(|| check_credit_packs(&doc.credit_packs))?;
    judge.rule(|| check_costs(&doc.costs))?;
    let credit_packs = doc.credit_packs.iter().map(|pack| credit_pack(pack, judge));
    let credit_packs = credit_packs.collect::<Result<Vec<_>, _>>()?;
    let unmatched = match doc.unmatched_events {
        UnmatchedEvents::Deny => core::UnmatchedEvents::Deny,
        UnmatchedEvents::Allow => core::UnmatchedEvents::Allow,
    };
    let (default_plan, anonymous_plan) = (doc.default_plan.clone(), doc.anonymous_plan.clone());
    let mut core_doc = match judge {
        Judge::Input => core::PlanDocument::new(default_plan, anonymous_plan, unmatched, plans),
        Judge::Stored => {
            core::PlanDocument::from_stored(default_plan, anonymous_plan, unmatched, plans)
        }
    }
    .map_err(plan_error)?;
    core_doc.credit_packs = credit_packs;
    core_doc.biller_ids = biller_targets(doc, judge)?;
    core_doc.costs = cost_rules(&doc.costs, judge)?;
    Ok(core_doc)
}

/// What each Stripe price and Polar product sells. A price listed twice (by two plans, two
/// packs, or a plan and a pack) would make a purchase ambiguous: refused on input, and in a
/// stored document the first listing wins.
fn biller_targets(
    doc: &PlanDocument,
    judge: Judge,
) -> Result<tollgate_core::biller::BillerIds, FieldError> {
    use tollgate_core::biller::{BillerIds, BillerTarget};
    let mut out = BillerIds::default();
    let plans = doc.plans.iter().enumerate().map(|(i, p)| {
        let path = index_path("plans", i);
        let target = BillerTarget::Plan(p.id.clone());
        (path, target, &p.stripe_price_ids, &p.polar_product_ids)
    });
    let packs = doc.credit_packs.iter().enumerate().map(|(i, p)| {
        let path = index_path("creditPacks", i);
        let target = BillerTarget::Pack(p.id.clone());
        (path, target, &p.stripe_price_ids, &p.polar_product_ids)
    });
    for (path, target, stripe, polar) in plans.chain(packs) {
        for (field, ids, into) in [
            ("stripePriceIds", stripe, &mut out.stripe),
            ("polarProductIds", polar, &mut out.polar),
        ] {
            for (k, id) in ids.iter().enumerate() {
                if into.iter().any(|(seen, _)| seen == id) {
                    let at = index_path(&field_path(&path, field), k);
                    judge.rule(|| {
                        Err(FieldError::new(
                            at,
                            format!("`{id}` is listed already: a biller id sells one plan or pack"),
                        ))
                    })?;
                    continue;
                }
                into.push((id.clone(), target.clone()));
            }
        }
    }
    Ok(out)
}

/// The cost table as usage events are costed from it (its input rules were checked with the
/// document's).
fn cost_rules(costs: &[Cost], judge: Judge) -> Result<Vec<core::CostRule>, FieldError> {
    let mut out = Vec::with_capacity(costs.len());
    for (k, cost) in costs.iter().enumerate() {
        let rule = match judge {
            Judge::Input => match_rule(&field_path(&index_path("costs", k), "match"), &cost.rule)?,
            Judge::Stored => stored_match_rule(&cost.rule),
        };
        out.push(core::CostRule {
            rule,
            micros_per_unit: cost.micros_per_unit,
        });
    }
    Ok(out)
}

/// A credit pack as grants are made from it (its input rules were checked with the document's).
fn credit_pack(pack: &CreditPack, judge: Judge) -> Result<core::CreditPack, FieldError> {
    let mut items = Vec::with_capacity(pack.items.len());
    for item in &pack.items {
        let rules = match judge {
            Judge::Input => match_rules("creditPacks", &item.rules)?,
            Judge::Stored => item.rules.iter().map(stored_match_rule).collect(),
        };
        items.push(core::CreditItem {
            id: item.id.clone(),
            unit: item.unit.clone(),
            quantity: item.quantity,
            rules,
        });
    }
    Ok(core::CreditPack {
        id: pack.id.clone(),
        priority: pack.priority,
        expires_after_days: pack.expires_after_days,
        items,
    })
}

fn normalize_plan(path: &str, plan: &mut Plan, judge: Judge) -> Result<core::Plan, FieldError> {
    judge.rule(|| check_plan_display(path, plan))?;
    let billing = billing(&field_path(path, "billing"), &plan.billing, judge)?;
    if let Some(price) = &mut plan.price {
        normalize_price(price, &plan.billing.interval);
        judge.rule(|| check_price(&field_path(path, "price"), price))?;
    }
    let limits_path = field_path(path, "limits");
    judge.rule(|| {
        if plan.limits.len() > LIMITS_PER_PLAN_MAX {
            return Err(too_many(&limits_path, LIMITS_PER_PLAN_MAX));
        }
        Ok(())
    })?;
    let mut limits = Vec::with_capacity(plan.limits.len());
    for (j, limit) in plan.limits.iter_mut().enumerate() {
        limits.push(normalize_limit(&index_path(&limits_path, j), limit, judge)?);
    }
    Ok(core::Plan {
        id: plan.id.clone(),
        billing,
        seats: plan.seats,
        limits,
    })
}

/// The input rules of a plan's id and display fields, which no decision reads.
fn check_plan_display(path: &str, plan: &Plan) -> Result<(), FieldError> {
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
    Ok(())
}

fn billing(path: &str, billing: &Billing, judge: Judge) -> Result<BillingInterval, FieldError> {
    let unit = interval_unit(&field_path(path, "interval"), &billing.interval)?;
    let count = billing.interval_count;
    // A cycle of zero intervals has no length; the largest count is an input limit.
    let max = match judge {
        Judge::Input => BILLING_INTERVAL_COUNT_MAX,
        Judge::Stored => u32::MAX,
    };
    if count == 0 || count > max {
        return Err(convert::refuse(
            &field_path(path, "intervalCount"),
            InputError::OutOfRange {
                min: 1,
                max: max.into(),
            },
        ));
    }
    Ok(BillingInterval { unit, count })
}

fn interval_unit(path: &str, s: &str) -> Result<IntervalUnit, FieldError> {
    IntervalUnit::parse(s)
        .ok_or_else(|| FieldError::new(path, "must be one of day, week, month, year"))
}

fn normalize_price(price: &mut Price, billing: &str) {
    price.currency = price.currency.to_ascii_lowercase();
    price.interval.get_or_insert_with(|| billing.to_string());
}

fn check_price(path: &str, price: &Price) -> Result<(), FieldError> {
    at_most_quantity(&field_path(path, "amount"), price.amount, 0)?;
    let currency = &price.currency;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(FieldError::new(
            field_path(path, "currency"),
            "must be a three-letter ISO 4217 code such as usd",
        ));
    }
    if let Some(interval) = &price.interval {
        interval_unit(&field_path(path, "interval"), interval)?;
    }
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

fn normalize_limit(path: &str, limit: &mut Limit, judge: Judge) -> Result<core::Limit, FieldError> {
    let label = limit.label.get_or_insert_with(|| limit.id.clone()).clone();
    limit.notify.get_or_insert_with(|| NOTIFY_DEFAULT.to_vec());
    judge.rule(|| check_limit_form(path, limit))?;
    // The quantity range is not a limit that may tighten but the range every count is exact
    // in (API.md §1): the arithmetic relies on it, so a stored limit is held to it as well.
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
    let window = normalize_window(&window_path, window, judge)?;
    let rules_path = field_path(path, "match");
    let rules = match judge {
        Judge::Input => match_rules(&rules_path, &limit.rules)?,
        Judge::Stored => limit.rules.iter().map(stored_match_rule).collect(),
    };
    // Unused quota rolls over from a window that ends into the next one: a calendar or
    // subscription window of a consumable limit. A stored limit that declares it elsewhere
    // loads, and its rollover never happens.
    let rolls = limit.kind == LimitKind::Consumable
        && matches!(
            window,
            core::WindowSpec::Calendar { .. } | core::WindowSpec::Subscription
        );
    judge.rule(|| match &limit.rollover {
        Some(_) if !rolls => Err(FieldError::new(
            field_path(path, "rollover"),
            "needs a consumable limit with a calendar or subscription window",
        )),
        _ => Ok(()),
    })?;
    Ok(core::Limit {
        rollover: limit
            .rollover
            .as_ref()
            .filter(|_| rolls)
            .map(|r| r.max_quantity),
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

/// The input rules of a limit's id, display fields, notifications and rollover.
fn check_limit_form(path: &str, limit: &Limit) -> Result<(), FieldError> {
    check_id(&field_path(path, "id"), &limit.id).map_err(plan_error)?;
    if let Some(label) = &limit.label {
        convert::bounded_name(&field_path(path, "label"), label, DISPLAY_NAME_BYTES_MAX)?;
    }
    unit(&field_path(path, "unit"), &limit.unit)?;
    let notify_path = field_path(path, "notify");
    let notify = limit.notify.as_deref().unwrap_or_default();
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
    Ok(())
}

fn normalize_window(
    path: &str,
    window: &mut Window,
    judge: Judge,
) -> Result<core::WindowSpec, FieldError> {
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
            // A window of no time has no length; the longest window is an input limit.
            let max = match judge {
                Judge::Input => WINDOW_SECONDS_MAX,
                Judge::Stored => u32::MAX,
            };
            let seconds = u32::try_from(seconds)
                .ok()
                .filter(|s| (1..=max).contains(s))
                .ok_or_else(|| {
                    convert::refuse(
                        &seconds_path,
                        InputError::OutOfRange {
                            min: 1,
                            max: max.into(),
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

/// A match rule of a stored document: the event pattern and metadata values as they were
/// accepted, not checked against today's name rules.
fn stored_match_rule(rule: &MatchRule) -> core::MatchRule {
    let metadata = rule
        .metadata
        .iter()
        .map(|(key, values)| {
            let values = match values {
                MatchValues::One(v) => vec![v.clone()],
                MatchValues::Any(vs) => vs.clone(),
            };
            (key.clone(), values)
        })
        .collect();
    core::MatchRule {
        event: EventPattern::stored(&rule.event),
        metadata,
    }
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

fn check_credit_packs(packs: &[CreditPack]) -> Result<(), FieldError> {
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
mod tests;
