//! Webhook signature checks: Stripe's `Stripe-Signature` scheme and Standard Webhooks (Polar).
//!
//! Both are HMAC-SHA256 over the raw body; they differ in framing and in how the secret becomes
//! a key. A delivery is authentic when any listed signature matches under any configured secret
//! (secrets and signatures both rotate), compared in constant time, and only then is its
//! timestamp checked against `now` (injected: the server passes the real clock). Errors say what
//! is wrong without echoing the body or a signature.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Most comma-separated entries a `Stripe-Signature` header, or space-separated entries a
/// `webhook-signature` header, may hold: Stripe sends at most three (`t`, two `v1` during a
/// secret roll, a test `v0`); the cap bounds the HMACs one forged header can make us compute.
pub const SIGNATURE_ENTRIES_MAX: usize = 16;

/// Stripe endpoint secrets and Standard Webhooks secrets both start with this.
const WHSEC_PREFIX: &str = "whsec_";

/// Standard base64 that accepts the padding whether or not it is there: secrets and signatures
/// are copied by hand from dashboards, which sometimes drop the trailing `=`.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a delivery's signature was refused. None of them carries the body or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {header} header is missing or empty")]
    MissingHeader { header: &'static str },
    #[error("the signature header is malformed: {reason}")]
    MalformedHeader { reason: &'static str },
    #[error("the signature header holds no v1 signature")]
    NoV1Signature,
    #[error("no webhook secret is configured for this endpoint")]
    NoSecret,
    #[error("no signature matches the body under any configured secret")]
    NoMatch,
    #[error(
        "the signature timestamp is {} s beyond the tolerance of {tolerance_s} s ({age_s} s old)",
        .age_s.saturating_abs().saturating_sub(*.tolerance_s)
    )]
    TimestampOutsideTolerance {
        /// `now - t`: positive when the delivery is old, negative when it is from the future.
        age_s: i64,
        tolerance_s: i64,
    },
}

impl SignatureError {
    /// A short snake_case reason for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader { .. } => "missing_header",
            Self::MalformedHeader { .. } => "malformed_header",
            Self::NoV1Signature => "no_v1_signature",
            Self::NoSecret => "no_secret",
            Self::NoMatch => "no_match",
            Self::TimestampOutsideTolerance { .. } => "timestamp_outside_tolerance",
        }
    }
}

/// Verifies a Stripe delivery: `header` is the `Stripe-Signature` value
/// (`t=…,v1=…[,v1=…][,v0=…]`), `secrets` the endpoint's `whsec_…` secrets (old and new during
/// a roll), used whole as UTF-8 key bytes. Only `v1` counts: `v0` and unknown schemes are
/// ignored so a downgrade cannot pass. The timestamp must lie within `tolerance_s` of
/// `now_unix`, on both sides.
pub fn verify_stripe(
    body: &[u8],
    header: &str,
    secrets: &[String],
    now_unix: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let parsed = parse_stripe_header(header)?;
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let matched = secrets.iter().any(|secret| {
        let Some(mac) = stripe_mac(body, secret, parsed.t) else {
            return false;
        };
        parsed
            .v1
            .iter()
            .any(|sig| mac.clone().verify_slice(sig).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    check_timestamp(parsed.t, now_unix, tolerance_s)
}

/// Verifies a Standard Webhooks delivery (Polar): `id`, `timestamp` and `signature_header` are
/// the `webhook-id`, `webhook-timestamp` and `webhook-signature` values; the signature header is
/// a space-separated list of `v1,<base64>` entries (other versions are ignored). Each secret is
/// tried under both keys Polar signs with: the standard one (`whsec_` stripped, the rest
/// base64-decoded) and the legacy one (the whole secret's UTF-8 bytes, also for `polar_whs_…`).
pub fn verify_standard(
    body: &[u8],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    secrets: &[String],
    now_unix: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let t = parse_standard_id_and_timestamp(id, timestamp)?;
    let signatures = parse_standard_signatures(signature_header)?;
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let matched = secrets.iter().any(|secret| {
        standard_keys(secret).iter().any(|key| {
            let tag = standard_tag(key, id, t, body);
            signatures
                .iter()
                .any(|sig| bool::from(tag.as_slice().ct_eq(sig.as_slice())))
        })
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    check_timestamp(t, now_unix, tolerance_s)
}

/// Test signer: the full `Stripe-Signature` value (`t=…,v1=…`) for `body` under `secret` at `t`.
pub fn sign_stripe(body: &[u8], secret: &str, t: i64) -> String {
    let sig = stripe_mac(body, secret, t)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={t},v1={sig}")
}

/// Test signer: one `webhook-signature` entry (`v1,<base64>`) for a Standard Webhooks delivery.
/// `legacy` signs with Polar's legacy key (the whole secret's UTF-8 bytes); otherwise with the
/// standard key, `whsec_` stripped and the rest base64-decoded (a secret that is not of that
/// form is used as raw bytes, as the legacy key would be).
pub fn sign_standard(id: &str, t: i64, body: &[u8], secret: &str, legacy: bool) -> String {
    let key = if legacy {
        secret.as_bytes().to_vec()
    } else {
        standard_key(secret).unwrap_or_else(|| secret.as_bytes().to_vec())
    };
    format!(
        "v1,{}",
        BASE64_LENIENT.encode(standard_tag(&key, id, t, body))
    )
}

/// The parts of a `Stripe-Signature` header that count.
struct StripeHeader {
    t: i64,
    /// Every hex-decodable `v1` signature.
    v1: Vec<Vec<u8>>,
}

/// Splits on `,` and each piece on its first `=`, as Stripe's libraries do; keeps `t` and every
/// `v1` (a `v1` that is not hex is skipped), ignores the rest.
fn parse_stripe_header(header: &str) -> Result<StripeHeader, SignatureError> {
    let header = header.trim();
    if header.is_empty() {
        return Err(SignatureError::MissingHeader {
            header: "Stripe-Signature",
        });
    }
    let mut t = None;
    let mut v1 = Vec::new();
    for (n, piece) in header.split(',').enumerate() {
        if n >= SIGNATURE_ENTRIES_MAX {
            return Err(malformed("too many entries"));
        }
        let (key, value) = piece
            .split_once('=')
            .ok_or_else(|| malformed("an entry is not key=value"))?;
        match key.trim() {
            "t" if t.is_some() => return Err(malformed("more than one t")),
            "t" => {
                t = Some(parse_unix(value.trim()).ok_or_else(|| malformed("t is not a number"))?)
            }
            "v1" => {
                if let Ok(sig) = hex::decode(value.trim()) {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or_else(|| malformed("no t"))?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(StripeHeader { t, v1 })
}

/// The MAC over `"{t}.{body}"` keyed by the whole secret string, ready to finalize or verify.
fn stripe_mac(body: &[u8], secret: &str, t: i64) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// Checks the id and timestamp headers: both present, neither holding the `.` that frames the
/// signed message, the timestamp in unix seconds.
fn parse_standard_id_and_timestamp(id: &str, timestamp: &str) -> Result<i64, SignatureError> {
    if id.is_empty() {
        return Err(SignatureError::MissingHeader {
            header: "webhook-id",
        });
    }
    if timestamp.is_empty() {
        return Err(SignatureError::MissingHeader {
            header: "webhook-timestamp",
        });
    }
    if id.contains('.') {
        return Err(malformed("webhook-id contains '.'"));
    }
    if timestamp.contains('.') {
        return Err(malformed("webhook-timestamp contains '.'"));
    }
    parse_unix(timestamp).ok_or_else(|| malformed("webhook-timestamp is not a number"))
}

/// Every decodable `v1,<base64>` entry of a `webhook-signature` header.
fn parse_standard_signatures(header: &str) -> Result<Vec<Vec<u8>>, SignatureError> {
    if header.trim().is_empty() {
        return Err(SignatureError::MissingHeader {
            header: "webhook-signature",
        });
    }
    let mut signatures = Vec::new();
    for (n, entry) in header.split_whitespace().enumerate() {
        if n >= SIGNATURE_ENTRIES_MAX {
            return Err(malformed("too many entries"));
        }
        if let Some(("v1", sig)) = entry.split_once(',') {
            if let Ok(sig) = BASE64_LENIENT.decode(sig) {
                signatures.push(sig);
            }
        }
    }
    if signatures.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(signatures)
}

/// The keys one secret may sign with: the standard key when the secret decodes as one, then
/// Polar's legacy key.
fn standard_keys(secret: &str) -> Vec<Vec<u8>> {
    let mut keys = Vec::with_capacity(2);
    if let Some(key) = standard_key(secret) {
        keys.push(key);
    }
    keys.push(secret.as_bytes().to_vec());
    keys
}

/// The Standard Webhooks key: the base64 after `whsec_`, decoded; `None` if it is not that.
fn standard_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(WHSEC_PREFIX)?;
    BASE64_LENIENT
        .decode(encoded)
        .ok()
        .filter(|k| !k.is_empty())
}

/// HMAC-SHA256 of `"{id}.{t}.{body}"`.
fn standard_tag(key: &[u8], id: &str, t: i64, body: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Unix seconds written as ASCII digits (an optional leading `-`), nothing else.
fn parse_unix(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `|now - t| <= tolerance`: refuses deliveries too old (replays) and too far ahead.
fn check_timestamp(t: i64, now_unix: i64, tolerance_s: i64) -> Result<(), SignatureError> {
    let age_s = now_unix.saturating_sub(t);
    if age_s.saturating_abs() > tolerance_s {
        return Err(SignatureError::TimestampOutsideTolerance { age_s, tolerance_s });
    }
    Ok(())
}

fn malformed(reason: &'static str) -> SignatureError {
    SignatureError::MalformedHeader { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        br#"{"id":"evt_test_1","object":"event","type":"customer.subscription.updated"}"#;
    const SECRET: &str = "whsec_test_secret";
    const T: i64 = 1_700_000_000;
    const HEX: &str = "6d1695090a29031f4a635fba8776b80e9058dddec671fd5bdf1d7c278222cf63";

    const SW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SW_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SW_T: i64 = 1_649_367_553;
    const SW_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SW_STANDARD: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    const SW_LEGACY: &str = "v1,n6rJjo/CnEaFyJ+uWWflwGkHSGocTY6bAD6ImjhpG8E=";

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn stripe(header: &str, secret_list: &[&str], now: i64) -> Result<(), SignatureError> {
        verify_stripe(BODY, header, &secrets(secret_list), now, 300)
    }

    fn standard(sig: &str, secret_list: &[&str], now: i64) -> Result<(), SignatureError> {
        verify_standard(
            SW_BODY,
            SW_ID,
            &SW_T.to_string(),
            sig,
            &secrets(secret_list),
            now,
            300,
        )
    }

    #[test]
    fn stripe_worked_example_signs_and_verifies() {
        let header = sign_stripe(BODY, SECRET, T);
        assert_eq!(header, format!("t=1700000000,v1={HEX}"));
        assert_eq!(stripe(&header, &[SECRET], T), Ok(()));
    }

    #[test]
    fn stripe_rotation_any_v1_and_any_secret_is_enough() {
        let old = sign_stripe(BODY, "whsec_old", T);
        let old_hex = old.split_once(",v1=").map(|(_, h)| h.to_string()).unwrap();
        let junk = "00".repeat(32);
        // Two v1 entries, either one enough.
        let new_first = format!("t={T},v1={HEX},v1={old_hex}");
        let old_second = format!("t={T},v1={junk},v1={old_hex}");
        assert_eq!(stripe(&new_first, &[SECRET], T), Ok(()));
        assert_eq!(stripe(&new_first, &["whsec_old"], T), Ok(()));
        assert_eq!(stripe(&old_second, &["whsec_old"], T), Ok(()));
        // Two secrets configured, either enough.
        let single = format!("t={T},v1={HEX}");
        assert_eq!(stripe(&single, &["whsec_old", SECRET], T), Ok(()));
        assert_eq!(stripe(&single, &[SECRET, "whsec_old"], T), Ok(()));
        assert_eq!(
            stripe(&old_second, &[SECRET], T),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn stripe_v0_only_is_refused_even_when_valid() {
        let header = format!("t={T},v0={HEX}");
        assert_eq!(
            stripe(&header, &[SECRET], T),
            Err(SignatureError::NoV1Signature)
        );
        // The docs' three-entry example: v0 ignored, v1 used.
        let with_v0 = format!("t={T},v1={HEX},v0={}", "ab".repeat(32));
        assert_eq!(stripe(&with_v0, &[SECRET], T), Ok(()));
    }

    #[test]
    fn stripe_tampered_body_and_wrong_secret_are_refused() {
        let header = sign_stripe(BODY, SECRET, T);
        let tampered =
            br#"{"id":"evt_test_2","object":"event","type":"customer.subscription.updated"}"#;
        assert_eq!(
            verify_stripe(tampered, &header, &secrets(&[SECRET]), T, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            stripe(&header, &["whsec_wrong"], T),
            Err(SignatureError::NoMatch)
        );
        // The prefix is part of the key: stripping it must not verify.
        assert_eq!(
            stripe(&header, &["test_secret"], T),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(stripe(&header, &[], T), Err(SignatureError::NoSecret));
    }

    #[test]
    fn stripe_tolerance_boundaries() {
        let header = sign_stripe(BODY, SECRET, T);
        assert_eq!(stripe(&header, &[SECRET], T + 300), Ok(()));
        assert_eq!(stripe(&header, &[SECRET], T - 300), Ok(()));
        let late = stripe(&header, &[SECRET], T + 301).unwrap_err();
        assert_eq!(
            late,
            SignatureError::TimestampOutsideTolerance {
                age_s: 301,
                tolerance_s: 300
            }
        );
        assert_eq!(late.code(), "timestamp_outside_tolerance");
        assert!(late.to_string().contains("1 s beyond"), "{late}");
        assert_eq!(
            stripe(&header, &[SECRET], T - 301),
            Err(SignatureError::TimestampOutsideTolerance {
                age_s: -301,
                tolerance_s: 300
            })
        );
    }

    #[test]
    fn stripe_signature_is_checked_before_the_timestamp() {
        let header = sign_stripe(BODY, SECRET, T);
        assert_eq!(
            stripe(&header, &["whsec_wrong"], T + 10_000),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn stripe_malformed_headers() {
        let m = |reason| Err(SignatureError::MalformedHeader { reason });
        assert_eq!(stripe(&format!("v1={HEX}"), &[SECRET], T), m("no t"));
        assert_eq!(
            stripe(&format!("t=abc,v1={HEX}"), &[SECRET], T),
            m("t is not a number")
        );
        assert_eq!(
            stripe(&format!("t=+1700000000,v1={HEX}"), &[SECRET], T),
            m("t is not a number")
        );
        assert_eq!(
            stripe(&format!("t={T},v1{HEX}"), &[SECRET], T),
            m("an entry is not key=value")
        );
        assert_eq!(
            stripe(&format!("t={T},t={T},v1={HEX}"), &[SECRET], T),
            m("more than one t")
        );
        assert_eq!(
            stripe("", &[SECRET], T),
            Err(SignatureError::MissingHeader {
                header: "Stripe-Signature"
            })
        );
        // A v1 that is not hex is skipped; none left means no v1.
        assert_eq!(
            stripe(&format!("t={T},v1=zz"), &[SECRET], T),
            Err(SignatureError::NoV1Signature)
        );
        assert_eq!(
            stripe(&format!("t={T},v1=zz,v1={HEX}"), &[SECRET], T),
            Ok(())
        );
    }

    #[test]
    fn stripe_entry_count_is_capped() {
        let just_inside = format!(
            "t={T},v1={HEX}{}",
            ",v0=00".repeat(SIGNATURE_ENTRIES_MAX - 2)
        );
        assert_eq!(stripe(&just_inside, &[SECRET], T), Ok(()));
        let over = format!(
            "t={T},v1={HEX}{}",
            ",v0=00".repeat(SIGNATURE_ENTRIES_MAX - 1)
        );
        assert_eq!(
            stripe(&over, &[SECRET], T),
            Err(SignatureError::MalformedHeader {
                reason: "too many entries"
            })
        );
    }

    #[test]
    fn standard_spec_vector_under_the_standard_key() {
        assert_eq!(
            sign_standard(SW_ID, SW_T, SW_BODY, SW_SECRET, false),
            SW_STANDARD
        );
        assert_eq!(standard(SW_STANDARD, &[SW_SECRET], SW_T), Ok(()));
    }

    #[test]
    fn standard_spec_vector_under_polars_legacy_key() {
        assert_eq!(
            sign_standard(SW_ID, SW_T, SW_BODY, SW_SECRET, true),
            SW_LEGACY
        );
        assert_eq!(standard(SW_LEGACY, &[SW_SECRET], SW_T), Ok(()));
        // polar_whs_ secrets only have the legacy key.
        let old = "polar_whs_abcdef";
        let sig = sign_standard(SW_ID, SW_T, SW_BODY, old, true);
        assert_eq!(standard(&sig, &[old], SW_T), Ok(()));
        assert_eq!(
            standard(&sig, &[SW_SECRET], SW_T),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn standard_several_signatures_and_secrets() {
        let junk = format!("v1,{}", BASE64_LENIENT.encode([7u8; 32]));
        let header = format!("v1a,abc {junk} v2,xyz {SW_STANDARD}");
        assert_eq!(standard(&header, &[SW_SECRET], SW_T), Ok(()));
        assert_eq!(standard(&header, &["whsec_other", SW_SECRET], SW_T), Ok(()));
        assert_eq!(
            standard(&junk, &[SW_SECRET], SW_T),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            standard("v1a,abc v2,xyz", &[SW_SECRET], SW_T),
            Err(SignatureError::NoV1Signature)
        );
        // Unpadded base64 is accepted.
        let unpadded = SW_STANDARD.trim_end_matches('=');
        assert_eq!(standard(unpadded, &[SW_SECRET], SW_T), Ok(()));
    }

    #[test]
    fn standard_tampered_body_and_tolerance() {
        let ts = SW_T.to_string();
        let s = secrets(&[SW_SECRET]);
        assert_eq!(
            verify_standard(b"{}", SW_ID, &ts, SW_STANDARD, &s, SW_T, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(standard(SW_STANDARD, &[SW_SECRET], SW_T + 300), Ok(()));
        assert_eq!(
            standard(SW_STANDARD, &[SW_SECRET], SW_T + 301),
            Err(SignatureError::TimestampOutsideTolerance {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert_eq!(
            standard(SW_STANDARD, &[SW_SECRET], SW_T - 301),
            Err(SignatureError::TimestampOutsideTolerance {
                age_s: -301,
                tolerance_s: 300
            })
        );
    }

    #[test]
    fn standard_refuses_dots_and_missing_or_bad_headers() {
        let s = secrets(&[SW_SECRET]);
        let ts = SW_T.to_string();
        let run = |id: &str, t: &str, sig: &str| {
            verify_standard(SW_BODY, id, t, sig, &s, SW_T, 300).map_err(|e| e.code())
        };
        assert_eq!(run("msg.1", &ts, SW_STANDARD), Err("malformed_header"));
        assert_eq!(
            run(SW_ID, "1649367553.0", SW_STANDARD),
            Err("malformed_header")
        );
        assert_eq!(run(SW_ID, "soon", SW_STANDARD), Err("malformed_header"));
        assert_eq!(run("", &ts, SW_STANDARD), Err("missing_header"));
        assert_eq!(run(SW_ID, "", SW_STANDARD), Err("missing_header"));
        assert_eq!(run(SW_ID, &ts, "  "), Err("missing_header"));
        assert_eq!(run(SW_ID, &ts, SW_STANDARD), Ok(()));
    }

    #[test]
    fn error_codes_are_distinct_snake_case() {
        let all = [
            SignatureError::MissingHeader { header: "x" },
            SignatureError::MalformedHeader { reason: "x" },
            SignatureError::NoV1Signature,
            SignatureError::NoSecret,
            SignatureError::NoMatch,
            SignatureError::TimestampOutsideTolerance {
                age_s: 1,
                tolerance_s: 0,
            },
        ];
        let mut codes: Vec<&str> = all.iter().map(SignatureError::code).collect();
        assert!(codes.iter().all(|c| c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
