//! Plans, limits and match rules: the part of the plan document that decisions need.
//!
//! Display fields (names, prices, features) stay in the stored JSON document; the domain keeps
//! only what decides a request. A [`PlanDocument`] is built once per applied document, checked as
//! a whole, and shared read-only by every decision.

use crate::input::{EventName, Metadata, QUANTITY_MAX};
use crate::window::{BillingInterval, CalendarPeriod};
use jiff::tz::TimeZone;

/// Most plans in one plan document.
pub const PLANS_MAX: usize = 200;
/// Most limits in one plan.
pub const LIMITS_PER_PLAN_MAX: usize = 100;
/// Largest plan document, in bytes of JSON.
pub const PLAN_DOCUMENT_BYTES_MAX: usize = 1024 * 1024;
/// Longest plan id or limit id, in bytes (`[A-Za-z0-9_.:-]`).
pub const PLAN_ID_BYTES_MAX: usize = 64;
/// Most match rules in one limit.
pub const MATCH_RULES_PER_LIMIT_MAX: usize = 32;
/// Longest rolling or first_use window, in seconds (400 days).
pub const WINDOW_SECONDS_MAX: u32 = 400 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Units are used up; `used` grows with every commit.
    Consumable,
    /// At most `quota` reservations in flight at once.
    Concurrency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Deny what does not fit.
    Hard,
    /// Allow, and flag what does not fit as overage.
    Soft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Account,
}

named_enum!(LimitKind { Consumable => "consumable", Concurrency => "concurrency" });
named_enum!(Enforcement { Hard => "hard", Soft => "soft" });
named_enum!(Scope { User => "user", Account => "account" });

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedEvents {
    Deny,
    Allow,
}

/// When a limit's counter resets.
#[derive(Debug, Clone)]
pub enum WindowSpec {
    Calendar {
        period: CalendarPeriod,
        timezone: TimeZone,
    },
    Subscription,
    Rolling {
        seconds: u32,
    },
    FirstUse {
        seconds: u32,
    },
    Lifetime,
}

/// An event name pattern: exact, or a glob where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPattern(String);

impl EventPattern {
    /// `pattern` is an event name that may contain `*`.
    pub fn parse(pattern: &str) -> Result<Self, crate::input::InputError> {
        let literal = pattern.replace('*', "x");
        EventName::parse(literal)?;
        Ok(Self(pattern.to_string()))
    }
    /// A pattern read back from a stored plan document. It was checked by
    /// [`EventPattern::parse`] when its document was accepted, and is not checked again: a
    /// later version of the event name rules must not refuse what was stored under an earlier
    /// one, and matching works on any text.
    pub fn stored(pattern: &str) -> Self {
        Self(pattern.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn matches(&self, event: &str) -> bool {
        glob_match(self.0.as_bytes(), event.as_bytes())
    }
}

/// Iterative wildcard match with backtracking to the last `*`: linear in practice, never
/// exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One rule of a limit: the event pattern and, for each listed metadata key, the values allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchRule {
    pub event: EventPattern,
    pub metadata: Vec<(String, Vec<String>)>,
}

impl MatchRule {
    pub fn matches(&self, event: &EventName, metadata: &Metadata) -> bool {
        self.matches_name(event.as_str(), metadata)
    }

    /// [`Self::matches`] for an event name as stored.
    pub fn matches_name(&self, event: &str, metadata: &Metadata) -> bool {
        self.event.matches(event)
            && self.metadata.iter().all(|(key, values)| {
                metadata
                    .get(key)
                    .is_some_and(|v| values.iter().any(|want| want == v))
            })
    }
}

#[derive(Debug, Clone)]
pub struct Limit {
    pub id: String,
    pub label: String,
    pub unit: String,
    pub quota: u64,
    pub kind: LimitKind,
    pub scope: Scope,
    pub enforcement: Enforcement,
    pub multiplier: u64,
    pub window: WindowSpec,
    pub rules: Vec<MatchRule>,
    /// `rollover.maxQuantity`: at most this much of a window's unused quota becomes a credit
    /// grant that expires at the end of the next window.
    pub rollover: Option<u64>,
}

impl Limit {
    /// A limit matches an event if any of its rules does.
    pub fn matches(&self, event: &EventName, metadata: &Metadata) -> bool {
        self.rules.iter().any(|r| r.matches(event, metadata))
    }

    /// The units this limit counts for `quantity` of a matching event, or `None` when
    /// `quantity × multiplier` is past [`QUANTITY_MAX`] and cannot be counted exactly.
    pub fn units(&self, quantity: u64) -> Option<u64> {
        match self.kind {
            LimitKind::Consumable => quantity
                .checked_mul(self.multiplier)
                .filter(|&units| units <= QUANTITY_MAX),
            LimitKind::Concurrency => Some(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub billing: BillingInterval,
    pub seats: Option<u32>,
    pub limits: Vec<Limit>,
}

impl Plan {
    /// The limits of this plan that count `event`, in plan order.
    pub fn matching_limits<'a>(
        &'a self,
        event: &'a EventName,
        metadata: &'a Metadata,
    ) -> impl Iterator<Item = &'a Limit> + 'a {
        self.limits
            .iter()
            .filter(move |l| l.matches(event, metadata))
    }
}

#[derive(Debug, Clone)]
pub struct PlanDocument {
    pub default_plan: Option<String>,
    pub anonymous_plan: Option<String>,
    pub unmatched_events: UnmatchedEvents,
    pub plans: Vec<Plan>,
    /// The credit packs grants are made from (API.md §8); set after the plans are checked.
    pub credit_packs: Vec<CreditPack>,
    /// Which plan or pack each Stripe price and Polar product sells; set with the packs.
    pub biller_ids: crate::biller::BillerIds,
    /// What a unit of usage costs where the call gives no cost; set with the packs.
    pub costs: Vec<CostRule>,
}

/// A line of the document's cost table: what one unit of the events it matches costs.
#[derive(Debug, Clone)]
pub struct CostRule {
    pub rule: MatchRule,
    pub micros_per_unit: u64,
}

/// The largest cost one usage event records, in micros: a computed cost past it is held there
/// (2^53 - 1 micros is about 9 billion in money units, far past any real call).
pub const COST_MICROS_MAX: u64 = (1 << 53) - 1;

/// A credit pack: what one purchase (or promotion, or refund) of it grants.
#[derive(Debug, Clone)]
pub struct CreditPack {
    pub id: String,
    /// Higher is spent first.
    pub priority: i32,
    /// Days from the grant to its expiry; `None`: never.
    pub expires_after_days: Option<u32>,
    pub items: Vec<CreditItem>,
}

/// One item of a pack: `quantity` units of `unit` for the events its rules match.
#[derive(Debug, Clone)]
pub struct CreditItem {
    pub id: String,
    pub unit: String,
    pub quantity: u64,
    pub rules: Vec<MatchRule>,
}

/// A plan document that does not hold together; `path` names the first bad field
/// (`plans[1].limits[0].id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    pub path: String,
    pub message: String,
}

impl PlanError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Checks a plan or limit id: `[A-Za-z0-9_.:-]{1,64}`.
pub fn check_id(path: &str, id: &str) -> Result<(), PlanError> {
    let ok = !id.is_empty()
        && id.len() <= PLAN_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PlanError::new(
            path,
            format!("must be 1-{PLAN_ID_BYTES_MAX} characters of A-Z a-z 0-9 _ . : -"),
        ))
    }
}

impl PlanDocument {
    /// Checks a document on its way in: the input limits of the whole document (plan and
    /// limit counts, id syntax), then what holds it together ([`PlanDocument::from_stored`]).
    /// Per-field checks happen while the fields are parsed.
    pub fn new(
        default_plan: Option<String>,
        anonymous_plan: Option<String>,
        unmatched_events: UnmatchedEvents,
        plans: Vec<Plan>,
    ) -> Result<Self, PlanError> {
        if plans.len() > PLANS_MAX {
            return Err(PlanError::new(
                "plans",
                format!("at most {PLANS_MAX} plans are allowed"),
            ));
        }
        for (i, plan) in plans.iter().enumerate() {
            check_id(&format!("plans[{i}].id"), &plan.id)?;
            if plan.limits.len() > LIMITS_PER_PLAN_MAX {
                return Err(PlanError::new(
                    format!("plans[{i}].limits"),
                    format!("at most {LIMITS_PER_PLAN_MAX} limits are allowed in a plan"),
                ));
            }
            for (j, limit) in plan.limits.iter().enumerate() {
                check_id(&format!("plans[{i}].limits[{j}].id"), &limit.id)?;
            }
        }
        Self::from_stored(default_plan, anonymous_plan, unmatched_events, plans)
    }

    /// Builds a document read back from the store. It passed [`PlanDocument::new`] when it
    /// was accepted, so only what decisions rely on is checked (unique plan and limit ids,
    /// references to plans, multipliers of at least 1), never the input limits again: a later
    /// version may tighten those, and a document accepted once must still load.
    pub fn from_stored(
        default_plan: Option<String>,
        anonymous_plan: Option<String>,
        unmatched_events: UnmatchedEvents,
        plans: Vec<Plan>,
    ) -> Result<Self, PlanError> {
        for (i, plan) in plans.iter().enumerate() {
            if plans[..i].iter().any(|p| p.id == plan.id) {
                return Err(PlanError::new(
                    format!("plans[{i}].id"),
                    format!("duplicate plan id {:?}", plan.id),
                ));
            }
            for (j, limit) in plan.limits.iter().enumerate() {
                let path = format!("plans[{i}].limits[{j}]");
                if plan.limits[..j].iter().any(|l| l.id == limit.id) {
                    return Err(PlanError::new(
                        format!("{path}.id"),
                        format!("duplicate limit id {:?} in plan {:?}", limit.id, plan.id),
                    ));
                }
                if limit.multiplier == 0 {
                    return Err(PlanError::new(
                        format!("{path}.multiplier"),
                        "must be at least 1",
                    ));
                }
            }
        }
        for (field, reference) in [
            ("defaultPlan", &default_plan),
            ("anonymousPlan", &anonymous_plan),
        ] {
            if let Some(id) = reference {
                if !plans.iter().any(|p| &p.id == id) {
                    return Err(PlanError::new(field, format!("no plan has id {id:?}")));
                }
            }
        }
        Ok(Self {
            default_plan,
            anonymous_plan,
            unmatched_events,
            plans,
            credit_packs: Vec::new(),
            biller_ids: Default::default(),
            costs: Vec::new(),
        })
    }

    /// A document with no plans: every user is `no_subscription` until one is applied.
    pub fn empty() -> Self {
        Self {
            default_plan: None,
            anonymous_plan: None,
            unmatched_events: UnmatchedEvents::Deny,
            plans: Vec::new(),
            credit_packs: Vec::new(),
            biller_ids: Default::default(),
            costs: Vec::new(),
        }
    }

    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }

    /// The cost of `quantity` units of an event by the first cost rule that matches it, or
    /// `None` when none does. Held at [`COST_MICROS_MAX`].
    pub fn cost_of(&self, event: &str, metadata: &Metadata, quantity: u64) -> Option<u64> {
        let rule = self
            .costs
            .iter()
            .find(|c| c.rule.matches_name(event, metadata))?;
        Some(
            quantity
                .checked_mul(rule.micros_per_unit)
                .map_or(COST_MICROS_MAX, |c| c.min(COST_MICROS_MAX)),
        )
    }

    pub fn credit_pack(&self, id: &str) -> Option<&CreditPack> {
        self.credit_packs.iter().find(|p| p.id == id)
    }

    /// The plan of a user without an active subscription: the anonymous plan for `anon_` ids
    /// when the document names one, else the default plan.
    pub fn fallback_plan(&self, user_id: &str) -> Option<&Plan> {
        let id = match (&self.anonymous_plan, user_id.starts_with("anon_")) {
            (Some(anon), true) => anon,
            _ => self.default_plan.as_ref()?,
        };
        self.plan(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let p = |s: &str| EventPattern::parse(s).unwrap();
        assert!(p("image.*").matches("image.render"));
        assert!(!p("image.*").matches("images.render"));
        assert!(p("*").matches("anything"));
        assert!(p("image.render").matches("image.render"));
        assert!(!p("image.render").matches("image.render2"));
        assert!(p("*.tokens").matches("llm.tokens"));
        assert!(p("a*b*c").matches("axxbyyc"));
        assert!(!p("a*b*c").matches("axxbyy"));
        assert!(EventPattern::parse("bad pattern*").is_err());
    }

    fn plan(id: &str) -> Plan {
        Plan {
            id: id.to_string(),
            billing: BillingInterval {
                unit: crate::window::IntervalUnit::Month,
                count: 1,
            },
            seats: None,
            limits: Vec::new(),
        }
    }

    #[test]
    fn stored_documents_skip_the_input_limits_only() {
        let many: Vec<Plan> = (0..=PLANS_MAX).map(|i| plan(&format!("p{i}"))).collect();
        let deny = UnmatchedEvents::Deny;
        let e = PlanDocument::new(None, None, deny, many.clone()).unwrap_err();
        assert_eq!(e.path, "plans");
        let doc = PlanDocument::from_stored(Some("p0".into()), None, deny, many).unwrap();
        assert_eq!(doc.plans.len(), PLANS_MAX + 1);
        let odd_id = vec![plan("a plan id with spaces")];
        assert!(PlanDocument::new(None, None, deny, odd_id.clone()).is_err());
        assert!(PlanDocument::from_stored(None, None, deny, odd_id).is_ok());
        // What decisions rely on still holds a stored document to account.
        let twice = vec![plan("a"), plan("a")];
        let e = PlanDocument::from_stored(None, None, deny, twice).unwrap_err();
        assert_eq!(e.path, "plans[1].id");
        let e = PlanDocument::from_stored(Some("b".into()), None, deny, vec![plan("a")]);
        assert_eq!(e.unwrap_err().path, "defaultPlan");
    }

    #[test]
    fn metadata_rules_need_every_key() {
        let rule = MatchRule {
            event: EventPattern::parse("image.*").unwrap(),
            metadata: vec![("model".into(), vec!["flux-pro".into(), "dall-e-3".into()])],
        };
        let ev = EventName::parse("image.render").unwrap();
        let md = |pairs: &[(&str, &str)]| {
            Metadata::parse(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .unwrap()
        };
        assert!(rule.matches(&ev, &md(&[("model", "dall-e-3")])));
        assert!(!rule.matches(&ev, &md(&[("model", "sdxl")])));
        assert!(!rule.matches(&ev, &md(&[])));
    }
}
