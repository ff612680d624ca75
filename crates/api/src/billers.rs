//! Biller integrations (API.md §10), the events they received, the Stripe meter outbox, and an
//! environment's settings (§12).
//!
//! An integration's settings are stored as the JSON of [`IntegrationConfig`], secrets included;
//! answers show them masked. A stored config is read leniently (unknown fields ignored), so a
//! setting added later never stops an older install from loading.

use crate::field::{index_path, FieldError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Most signing secrets at once (two during a rotation, with room to spare).
pub const WEBHOOK_SECRETS_MAX: usize = 5;
/// Longest signing secret, in bytes.
pub const WEBHOOK_SECRET_BYTES_MAX: usize = 256;
/// Most paths in `userIdFrom` / `accountIdFrom`.
pub const SOURCE_PATHS_MAX: usize = 8;
/// Longest such path, in bytes.
pub const SOURCE_PATH_BYTES_MAX: usize = 128;
/// Signature timestamp tolerance: default and largest, in seconds.
pub const TOLERANCE_SECONDS_DEFAULT: u32 = 300;
pub const TOLERANCE_SECONDS_MAX: u32 = 3600;
/// Most usage event names forwarded to Stripe meters.
pub const METER_EVENT_NAMES_MAX: usize = 100;
/// Longest Stripe meter event name (Stripe's own limit), in bytes.
pub const METER_EVENT_NAME_BYTES_MAX: usize = 100;
/// Longest Stripe API key and API base URL, in bytes.
pub const STRIPE_API_KEY_BYTES_MAX: usize = 256;
pub const API_BASE_BYTES_MAX: usize = 256;
/// Where meter events go unless `apiBase` says otherwise.
pub const STRIPE_API_BASE_DEFAULT: &str = "https://api.stripe.com";

/// `PUT /v1/integrations/stripe` and `PUT /v1/integrations/polar`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrationRequest {
    /// Signing secrets; during a rotation give the new one and the old one.
    pub webhook_secrets: Vec<String>,
    /// Paths into the biller object that hold the app's user id, tried in order.
    #[serde(default)]
    pub user_id_from: Option<Vec<String>>,
    /// Paths that hold an account id (they win over a user id).
    #[serde(default)]
    pub account_id_from: Option<Vec<String>>,
    /// How far a signature's timestamp may be from the real clock. Default 300.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub tolerance_seconds: Option<u32>,
    /// Stripe only: forward committed usage to Stripe Billing Meters.
    #[serde(default)]
    pub meter_forwarding: Option<MeterForwardingRequest>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterForwardingRequest {
    #[serde(default)]
    pub enabled: bool,
    /// A Stripe secret or restricted key allowed to write meter events.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Default `https://api.stripe.com`.
    #[serde(default)]
    pub api_base: Option<String>,
    /// Usage event name → Stripe meter `event_name`. Only these are forwarded.
    #[serde(default)]
    pub event_names: BTreeMap<String, String>,
}

/// An integration's settings as stored (secrets included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationConfig {
    pub webhook_secrets: Vec<String>,
    pub user_id_from: Vec<String>,
    pub account_id_from: Vec<String>,
    pub tolerance_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_forwarding: Option<MeterForwardingConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterForwardingConfig {
    pub enabled: bool,
    pub api_key: Option<String>,
    pub api_base: String,
    pub event_names: BTreeMap<String, String>,
}

impl IntegrationConfig {
    /// Reads a stored config back.
    pub fn from_stored(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_stored(&self) -> String {
        // A struct of strings, numbers and maps always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The (usage event, meter event) pairs forwarded: none while forwarding is off.
    pub fn forwarded(&self) -> Vec<(String, String)> {
        match &self.meter_forwarding {
            Some(m) if m.enabled => m
                .event_names
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Which biller a request configures: they differ in defaults and in what they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillerKind {
    Stripe,
    Polar,
}

impl IntegrationRequest {
    /// Checks every field and fills the defaults.
    pub fn parse(self, kind: BillerKind) -> Result<IntegrationConfig, FieldError> {
        secrets(&self.webhook_secrets, kind)?;
        let (user_default, account_default): (&[&str], &[&str]) = match kind {
            BillerKind::Stripe => (
                &["client_reference_id", "metadata.user_id"],
                &["metadata.account_id"],
            ),
            BillerKind::Polar => (
                &["customer.external_id", "metadata.user_id"],
                &["metadata.account_id"],
            ),
        };
        let paths = |field: &str, given: Option<Vec<String>>, default: &[&str]| {
            let list = given.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            source_paths(field, &list).map(|()| list)
        };
        let user_id_from = paths("userIdFrom", self.user_id_from, user_default)?;
        let account_id_from = paths("accountIdFrom", self.account_id_from, account_default)?;
        let tolerance_seconds = self.tolerance_seconds.unwrap_or(TOLERANCE_SECONDS_DEFAULT);
        if tolerance_seconds == 0 || tolerance_seconds > TOLERANCE_SECONDS_MAX {
            return Err(FieldError::new(
                "toleranceSeconds",
                format!("must be 1-{TOLERANCE_SECONDS_MAX}"),
            ));
        }
        let meter_forwarding = match (self.meter_forwarding, kind) {
            (None, _) => None,
            (Some(_), BillerKind::Polar) => {
                return Err(FieldError::new(
                    "meterForwarding",
                    "meter forwarding goes to Stripe; set it on the Stripe integration",
                ))
            }
            (Some(m), BillerKind::Stripe) => Some(forwarding(m)?),
        };
        Ok(IntegrationConfig {
            webhook_secrets: self.webhook_secrets,
            user_id_from,
            account_id_from,
            tolerance_seconds,
            meter_forwarding,
        })
    }
}

fn printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn secrets(list: &[String], kind: BillerKind) -> Result<(), FieldError> {
    if list.is_empty() || list.len() > WEBHOOK_SECRETS_MAX {
        return Err(FieldError::new(
            "webhookSecrets",
            format!("give 1-{WEBHOOK_SECRETS_MAX} signing secrets"),
        ));
    }
    for (i, secret) in list.iter().enumerate() {
        let path = index_path("webhookSecrets", i);
        if !printable(secret) || secret.len() > WEBHOOK_SECRET_BYTES_MAX {
            return Err(FieldError::new(
                path,
                format!("must be 1-{WEBHOOK_SECRET_BYTES_MAX} printable ASCII characters"),
            ));
        }
        if kind == BillerKind::Stripe && !secret.starts_with("whsec_") {
            return Err(FieldError::new(
                path,
                "a Stripe signing secret starts with whsec_ (Developers → Webhooks → the \
                 endpoint → Signing secret); an API key (sk_…) is not one",
            ));
        }
    }
    Ok(())
}

fn source_paths(field: &str, list: &[String]) -> Result<(), FieldError> {
    if list.len() > SOURCE_PATHS_MAX {
        return Err(FieldError::new(
            field,
            format!("at most {SOURCE_PATHS_MAX} paths"),
        ));
    }
    for (i, path) in list.iter().enumerate() {
        let ok = !path.is_empty()
            && path.len() <= SOURCE_PATH_BYTES_MAX
            && path.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !ok {
            return Err(FieldError::new(
                index_path(field, i),
                format!(
                    "must be a dotted path of A-Z a-z 0-9 _ - names, at most \
                     {SOURCE_PATH_BYTES_MAX} bytes (e.g. metadata.user_id)"
                ),
            ));
        }
    }
    Ok(())
}

fn forwarding(m: MeterForwardingRequest) -> Result<MeterForwardingConfig, FieldError> {
    if let Some(key) = &m.api_key {
        if !printable(key) || key.len() > STRIPE_API_KEY_BYTES_MAX {
            return Err(FieldError::new(
                "meterForwarding.apiKey",
                format!("must be 1-{STRIPE_API_KEY_BYTES_MAX} printable ASCII characters"),
            ));
        }
    }
    if m.enabled && m.api_key.is_none() {
        return Err(FieldError::new(
            "meterForwarding.apiKey",
            "forwarding needs a Stripe API key that may write meter events",
        ));
    }
    let api_base = m
        .api_base
        .unwrap_or_else(|| STRIPE_API_BASE_DEFAULT.to_string());
    let scheme_ok = api_base.starts_with("https://") || api_base.starts_with("http://");
    if !scheme_ok || !printable(&api_base) || api_base.len() > API_BASE_BYTES_MAX {
        return Err(FieldError::new(
            "meterForwarding.apiBase",
            format!("must be an http(s) URL of at most {API_BASE_BYTES_MAX} bytes"),
        ));
    }
    if m.event_names.len() > METER_EVENT_NAMES_MAX {
        return Err(FieldError::new(
            "meterForwarding.eventNames",
            format!("at most {METER_EVENT_NAMES_MAX} event names"),
        ));
    }
    for (event, meter) in &m.event_names {
        let path = format!("meterForwarding.eventNames.{event}");
        tollgate_core::input::EventName::parse(event.clone())
            .map_err(|e| FieldError::new(&path, e.to_string()))?;
        if !printable(meter) || meter.len() > METER_EVENT_NAME_BYTES_MAX {
            return Err(FieldError::new(
                path,
                format!(
                    "a meter event name is 1-{METER_EVENT_NAME_BYTES_MAX} printable characters"
                ),
            ));
        }
    }
    Ok(MeterForwardingConfig {
        enabled: m.enabled,
        api_key: m.api_key,
        api_base: api_base.trim_end_matches('/').to_string(),
        event_names: m.event_names,
    })
}

/// A secret as answers show it: its prefix and last four characters.
pub fn mask(secret: &str) -> String {
    let prefix = [
        "whsec_",
        "polar_whs_",
        "sk_test_",
        "sk_live_",
        "rk_test_",
        "rk_live_",
    ]
    .into_iter()
    .find(|p| secret.starts_with(p))
    .unwrap_or("");
    let tail: String = {
        let chars: Vec<char> = secret.chars().collect();
        let from = chars.len().saturating_sub(4).max(prefix.len());
        chars[from..].iter().collect()
    };
    format!("{prefix}…{tail}")
}

/// An integration as answered (secrets masked).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationResponse {
    pub endpoint_id: String,
    /// Where the biller posts: `/webhooks/{biller}/{endpointId}` on this server.
    pub webhook_path: String,
    /// Masked: the prefix and the last four characters.
    pub webhook_secrets: Vec<String>,
    pub user_id_from: Vec<String>,
    pub account_id_from: Vec<String>,
    pub tolerance_seconds: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter_forwarding: Option<MeterForwardingView>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterForwardingView {
    pub enabled: bool,
    /// Masked.
    pub api_key: Option<String>,
    pub api_base: String,
    pub event_names: BTreeMap<String, String>,
}

impl IntegrationResponse {
    pub fn new(
        config: &IntegrationConfig,
        (biller, endpoint_id): (&str, &str),
        updated_at: String,
    ) -> Self {
        Self {
            endpoint_id: endpoint_id.to_string(),
            webhook_path: format!("/webhooks/{biller}/{endpoint_id}"),
            webhook_secrets: config.webhook_secrets.iter().map(|s| mask(s)).collect(),
            user_id_from: config.user_id_from.clone(),
            account_id_from: config.account_id_from.clone(),
            tolerance_seconds: config.tolerance_seconds,
            meter_forwarding: config
                .meter_forwarding
                .as_ref()
                .map(|m| MeterForwardingView {
                    enabled: m.enabled,
                    api_key: m.api_key.as_deref().map(mask),
                    api_base: m.api_base.clone(),
                    event_names: m.event_names.clone(),
                }),
            updated_at,
        }
    }
}

/// `PUT /v1/integrations/{biller}/customers/{customerId}`: exactly one of the two.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomerMappingRequest {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerMappingResponse {
    pub customer_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Events that waited on this customer and were applied now.
    pub replayed: Vec<WebhookAnswer>,
}

/// The answer to a biller's delivery (and to a replay).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAnswer {
    pub received: bool,
    /// It changed a subscription, a mapping or granted credits just now.
    pub applied: bool,
    /// `applied`, `ignored`, `stale`, `unresolved`, `failed`.
    pub status: String,
    /// Received before: nothing was done again.
    pub duplicate: bool,
    pub event_id: String,
    /// What happened, in a sentence.
    pub note: String,
}

/// A received biller event, as `GET /v1/integrations/{biller}/events` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillerEventView {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub received_at: String,
    pub customer_id: Option<String>,
    pub status: String,
    pub note: String,
    pub deliveries: u32,
    /// The raw body as received; only `GET …/events/{eventId}` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillerEventsResponse {
    pub events: Vec<BillerEventView>,
    pub next_cursor: Option<String>,
}

/// A usage event on its way to a Stripe meter.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterEventView {
    /// The usage event, sent to Stripe as `identifier`.
    pub event_id: String,
    pub meter_event_name: String,
    pub user_id: String,
    pub value: u64,
    pub occurred_at: String,
    /// `pending`, `delivered`, `failed`.
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterEventsResponse {
    pub meter_events: Vec<MeterEventView>,
    pub next_cursor: Option<String>,
}

/// What a subscription whose renewal payment failed keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PastDue {
    /// Keep the plan while the biller retries the payment.
    #[default]
    Keep,
    /// End the subscription at once (the default plan applies); a recovery brings it back.
    End,
}

/// Most origins of `corsOrigins`.
pub const CORS_ORIGINS_MAX: usize = 50;
/// Longest origin of `corsOrigins`, in bytes.
pub const CORS_ORIGIN_BYTES_MAX: usize = 256;

/// Fewest days a logged prompt or response is kept (`promptRetentionDays`).
pub const PROMPT_RETENTION_DAYS_MIN: u32 = 1;
/// Most days a logged prompt or response is kept (ten years).
pub const PROMPT_RETENTION_DAYS_MAX: u32 = 3650;
/// Days a logged prompt or response is kept unless the settings say otherwise.
pub const PROMPT_RETENTION_DAYS_DEFAULT: u32 = 30;

/// An environment's settings as stored: what `PATCH /v1/settings` changes. Every field has a
/// serde default, so a document stored before a field existed still loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    #[serde(default)]
    pub past_due: PastDue,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Whether prompts and responses sent with metering calls are stored with their usage
    /// events (off: they are checked for size and dropped).
    #[serde(default)]
    pub prompt_logging: bool,
    /// Days a logged prompt or response is kept, on the environment's clock; then it is
    /// cleared and its event stays.
    #[serde(default = "prompt_retention_days_default")]
    pub prompt_retention_days: u32,
    /// Whether a denied reserve or enforced track is recorded as a `denied` usage event.
    #[serde(default = "record_denials_default")]
    pub record_denials: bool,
}

fn prompt_retention_days_default() -> u32 {
    PROMPT_RETENTION_DAYS_DEFAULT
}

fn record_denials_default() -> bool {
    true
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            past_due: PastDue::default(),
            cors_origins: Vec::new(),
            prompt_logging: false,
            prompt_retention_days: PROMPT_RETENTION_DAYS_DEFAULT,
            record_denials: true,
        }
    }
}

/// `GET /v1/settings`: the settings, and what an SDK needs to mint user tokens offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsResponse {
    pub past_due: PastDue,
    /// Origins a browser may call the publishable-key routes from (`*`: any).
    #[schema(example = json!(["https://app.example.com"]))]
    pub cors_origins: Vec<String>,
    /// Whether prompts and responses are stored with usage events (`GET /v1/events/{id}`).
    pub prompt_logging: bool,
    /// Days a logged prompt or response is kept before it is cleared (its event stays).
    #[schema(minimum = 1, maximum = 3650, example = 30)]
    pub prompt_retention_days: u32,
    /// Whether denied reserves and enforced tracks are recorded as `denied` usage events.
    pub record_denials: bool,
    /// Signs user tokens (read-only): keep it on the server, like a secret key.
    #[schema(example = "tg_ts_test_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG")]
    pub token_secret: String,
    /// The project, as a user token names it.
    pub project_id: String,
    /// `test` or `live`, as a user token names it.
    pub environment: String,
}

/// `PATCH /v1/settings`: only the fields given change.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default)]
    pub past_due: Option<PastDue>,
    /// Replaces the list: each `*` or `scheme://host[:port]` (http or https, no path), at most
    /// 50, each at most 256 bytes.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub cors_origins: Option<Vec<String>>,
    /// Store prompts and responses with usage events (default off).
    #[serde(default)]
    pub prompt_logging: Option<bool>,
    /// Days a logged prompt or response is kept, 1–3650 (default 30).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub prompt_retention_days: Option<i64>,
    /// Record denied reserves and enforced tracks as `denied` usage events (default on).
    #[serde(default)]
    pub record_denials: Option<bool>,
}

/// An origin of `corsOrigins`, as browsers send it in `Origin`: `*`, or `http[s]://host[:port]`
/// in lower case, without path or trailing slash.
pub fn parse_origin(field: &str, s: &str) -> Result<String, FieldError> {
    let refuse = |why: &str| FieldError::new(field, format!("{why}: {s:?}"));
    if s == "*" {
        return Ok(s.to_string());
    }
    if s.len() > CORS_ORIGIN_BYTES_MAX {
        return Err(refuse("an origin is at most 256 bytes"));
    }
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| refuse("an origin starts with http:// or https://"))?;
    let (host, port) = match rest.find(']') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(end) if rest.starts_with('[') => match &rest[end + 1..] {
            "" => (&rest[..=end], None),
            after => (&rest[..=end], Some(after.strip_prefix(':').unwrap_or("x"))),
        },
        _ => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let host_ok = !host.is_empty()
        && (host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
    });
    if !host_ok || !port_ok {
        return Err(refuse(
            "an origin is scheme://host[:port], without path, query or trailing slash",
        ));
    }
    Ok(lower)
}

impl Settings {
    /// Reads stored settings back (unknown fields ignored).
    pub fn from_stored(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Applies a patch, or names the field it refuses (nothing changes then).
    pub fn apply(&mut self, patch: SettingsPatch) -> Result<(), FieldError> {
        let origins = match patch.cors_origins {
            None => None,
            Some(list) if list.len() > CORS_ORIGINS_MAX => {
                return Err(FieldError::new(
                    "corsOrigins",
                    format!("at most {CORS_ORIGINS_MAX} origins, got {}", list.len()),
                ))
            }
            Some(list) => {
                let mut parsed: Vec<String> = Vec::with_capacity(list.len());
                for (i, s) in list.iter().enumerate() {
                    let origin = parse_origin(&format!("corsOrigins[{i}]"), s)?;
                    if !parsed.contains(&origin) {
                        parsed.push(origin);
                    }
                }
                Some(parsed)
            }
        };
        let retention = match patch.prompt_retention_days {
            None => None,
            Some(days) => Some(
                u32::try_from(days)
                    .ok()
                    .filter(|d| (PROMPT_RETENTION_DAYS_MIN..=PROMPT_RETENTION_DAYS_MAX).contains(d))
                    .ok_or_else(|| {
                        FieldError::new(
                            "promptRetentionDays",
                            format!(
                                "from {PROMPT_RETENTION_DAYS_MIN} to \
                                 {PROMPT_RETENTION_DAYS_MAX} days, got {days}"
                            ),
                        )
                    })?,
            ),
        };
        if let Some(p) = patch.past_due {
            self.past_due = p;
        }
        if let Some(o) = origins {
            self.cors_origins = o;
        }
        if let Some(on) = patch.prompt_logging {
            self.prompt_logging = on;
        }
        if let Some(days) = retention {
            self.prompt_retention_days = days;
        }
        if let Some(on) = patch.record_denials {
            self.record_denials = on;
        }
        Ok(())
    }

    /// Whether a browser at `origin` may call this environment's publishable-key routes.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for (given, kept) in [
            ("*", "*"),
            ("https://App.Example.com", "https://app.example.com"),
            ("http://127.0.0.1:5173", "http://127.0.0.1:5173"),
            ("http://[::1]", "http://[::1]"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://localhost:65535", "http://localhost:65535"),
        ] {
            assert_eq!(parse_origin("o", given).unwrap(), kept);
        }
        for bad in [
            "",
            "app.example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://example.com?x=1",
            "https://",
            "https://example.com:",
            "https://example.com:0",
            "https://example.com:65536",
            "https://exa mple.com",
            "http://[::1]x",
        ] {
            assert!(parse_origin("o", bad).is_err(), "{bad:?} was taken");
        }
        let long = format!("https://{}.com", "a".repeat(CORS_ORIGIN_BYTES_MAX));
        assert!(parse_origin("o", &long).is_err());
    }

    #[test]
    fn a_refused_origin_changes_nothing() {
        let mut s = Settings::default();
        let patch: SettingsPatch = serde_json::from_str(
            r#"{"pastDue": "end", "corsOrigins": ["https://a.example", "nope"]}"#,
        )
        .unwrap();
        assert_eq!(s.apply(patch).unwrap_err().field, "corsOrigins[1]");
        assert_eq!(s, Settings::default());
        let patch: SettingsPatch =
            serde_json::from_str(r#"{"corsOrigins": ["https://a.example", "https://A.example"]}"#)
                .unwrap();
        s.apply(patch).unwrap();
        assert_eq!(s.cors_origins, ["https://a.example"]);
        assert!(s.allows_origin("https://a.example"));
        assert!(!s.allows_origin("https://b.example"));
        let too_many = format!(r#"{{"corsOrigins": [{}]}}"#, vec![r#""*""#; 51].join(","));
        let patch: SettingsPatch = serde_json::from_str(&too_many).unwrap();
        assert_eq!(s.apply(patch).unwrap_err().field, "corsOrigins");
    }

    #[test]
    fn documents_stored_before_the_prompt_fields_load_with_their_defaults() {
        let s = Settings::from_stored(r#"{"pastDue":"end","corsOrigins":[]}"#).unwrap();
        assert_eq!(s.past_due, PastDue::End);
        assert!(!s.prompt_logging);
        assert_eq!(s.prompt_retention_days, PROMPT_RETENTION_DAYS_DEFAULT);
        assert!(s.record_denials);
        assert_eq!(Settings::from_stored("{}").unwrap(), Settings::default());
        let round = Settings {
            prompt_logging: true,
            prompt_retention_days: 7,
            record_denials: false,
            ..Settings::default()
        };
        assert_eq!(Settings::from_stored(&round.to_stored()).unwrap(), round);
    }

    #[test]
    fn prompt_retention_days_is_bounded_and_a_patch_changes_only_what_it_names() {
        let patch = |json: &str| serde_json::from_str::<SettingsPatch>(json).unwrap();
        let mut s = Settings::default();
        s.apply(patch(r#"{"promptLogging": true}"#)).unwrap();
        assert!(s.prompt_logging);
        assert_eq!(s.prompt_retention_days, PROMPT_RETENTION_DAYS_DEFAULT);
        assert!(s.record_denials);
        for inside in [PROMPT_RETENTION_DAYS_MIN, PROMPT_RETENTION_DAYS_MAX] {
            s.apply(patch(&format!(r#"{{"promptRetentionDays": {inside}}}"#)))
                .unwrap();
            assert_eq!(s.prompt_retention_days, inside);
        }
        let before = s.clone();
        for outside in [
            i64::from(PROMPT_RETENTION_DAYS_MIN) - 1,
            i64::from(PROMPT_RETENTION_DAYS_MAX) + 1,
            -1,
            i64::MAX,
        ] {
            let refused = s
                .apply(patch(&format!(
                    r#"{{"recordDenials": false, "promptRetentionDays": {outside}}}"#
                )))
                .unwrap_err();
            assert_eq!(refused.field, "promptRetentionDays");
            assert_eq!(s, before, "a refused patch changes nothing");
        }
        s.apply(patch(r#"{"recordDenials": false}"#)).unwrap();
        assert!(!s.record_denials);
        assert!(s.prompt_logging);
    }

    fn request(json: &str) -> IntegrationRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn stripe_defaults_and_refusals() {
        let c = request(r#"{"webhookSecrets": ["whsec_abc"]}"#)
            .parse(BillerKind::Stripe)
            .unwrap();
        assert_eq!(c.user_id_from, ["client_reference_id", "metadata.user_id"]);
        assert_eq!(c.tolerance_seconds, 300);
        let e = request(r#"{"webhookSecrets": ["sk_test_abc"]}"#)
            .parse(BillerKind::Stripe)
            .unwrap_err();
        assert_eq!(e.field, "webhookSecrets[0]");
        let e = request(r#"{"webhookSecrets": []}"#)
            .parse(BillerKind::Stripe)
            .unwrap_err();
        assert_eq!(e.field, "webhookSecrets");
        let e = request(r#"{"webhookSecrets": ["whsec_a"], "toleranceSeconds": 3601}"#)
            .parse(BillerKind::Stripe)
            .unwrap_err();
        assert_eq!(e.field, "toleranceSeconds");
        let e = request(r#"{"webhookSecrets": ["whsec_a"], "userIdFrom": ["metadata..x"]}"#)
            .parse(BillerKind::Stripe)
            .unwrap_err();
        assert_eq!(e.field, "userIdFrom[0]");
        let e = request(r#"{"webhookSecrets": ["whsec_a"], "meterForwarding": {"enabled": true}}"#)
            .parse(BillerKind::Stripe)
            .unwrap_err();
        assert_eq!(e.field, "meterForwarding.apiKey");
    }

    #[test]
    fn polar_takes_any_secret_and_no_forwarding() {
        let c = request(r#"{"webhookSecrets": ["polar_whs_abc"]}"#)
            .parse(BillerKind::Polar)
            .unwrap();
        assert_eq!(c.user_id_from[0], "customer.external_id");
        let e =
            request(r#"{"webhookSecrets": ["whsec_a"], "meterForwarding": {"enabled": false}}"#)
                .parse(BillerKind::Polar)
                .unwrap_err();
        assert_eq!(e.field, "meterForwarding");
    }

    #[test]
    fn masks_keep_prefix_and_last_four() {
        assert_eq!(mask("whsec_abcdefgh1234"), "whsec_…1234");
        assert_eq!(mask("whsec_ab"), "whsec_…ab");
        assert_eq!(mask("sk_test_51Habc9999"), "sk_test_…9999");
    }

    #[test]
    fn forwarded_pairs_only_while_enabled() {
        let c = request(
            r#"{"webhookSecrets": ["whsec_a"], "meterForwarding": {"enabled": true,
                "apiKey": "sk_test_x", "apiBase": "http://127.0.0.1:9/",
                "eventNames": {"image.render": "images"}}}"#,
        )
        .parse(BillerKind::Stripe)
        .unwrap();
        assert_eq!(c.forwarded(), [("image.render".into(), "images".into())]);
        assert_eq!(
            c.meter_forwarding.as_ref().unwrap().api_base,
            "http://127.0.0.1:9"
        );
        let stored = IntegrationConfig::from_stored(&c.to_stored()).unwrap();
        assert_eq!(stored, c);
    }
}
