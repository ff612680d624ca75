//! What the text of a key says, and what it must not be mistaken for.
//!
//! A Tollgate key names its kind and environment in its prefix (`tg_sk_live_…`), and the `tg_`
//! makes it unmistakable beside an app's Stripe keys, for people and for secret scanners. Keys
//! minted before the `tg_` prefix (`sk_live_…`, `pk_test_…`) keep working, so everything that
//! reads a key's text reads both forms through [`key_form`].
//!
//! The server never decides anything from a key's text: a key is authenticated by its hash
//! alone. The text is read to mint keys, to explain a failed authentication (a Stripe key sent
//! by mistake is named in the `401`, see [`stripe_prefix`]), and by clients that check a key
//! before using it (`tollgate bench` refuses anything but a test secret key).

use tollgate_store::{KeyKind, Mode};

/// What every key and admin token minted today starts with.
pub const TOLLGATE_PREFIX: &str = "tg_";

/// The prefixes of Stripe's secrets that a Tollgate key could be confused with: secret,
/// publishable and restricted keys in both modes, and a webhook endpoint's signing secret.
/// A Tollgate key minted before the `tg_` prefix has the shape of the first four.
pub const STRIPE_PREFIXES: [&str; 7] = [
    "sk_live_", "sk_test_", "pk_live_", "pk_test_", "rk_live_", "rk_test_", "whsec_",
];

/// The prefix of a key minted before the `tg_` prefix: `sk_live_`, `sk_test_`, `pk_live_` or
/// `pk_test_`.
fn unprefixed(mode: Mode, kind: KeyKind) -> &'static str {
    match (kind, mode) {
        (KeyKind::Secret, Mode::Live) => "sk_live_",
        (KeyKind::Secret, Mode::Test) => "sk_test_",
        (KeyKind::Publishable, Mode::Live) => "pk_live_",
        (KeyKind::Publishable, Mode::Test) => "pk_test_",
    }
}

/// The prefix of a key minted today: `tg_sk_live_`, `tg_sk_test_`, `tg_pk_live_` or
/// `tg_pk_test_`.
pub fn key_prefix(mode: Mode, kind: KeyKind) -> &'static str {
    match (kind, mode) {
        (KeyKind::Secret, Mode::Live) => "tg_sk_live_",
        (KeyKind::Secret, Mode::Test) => "tg_sk_test_",
        (KeyKind::Publishable, Mode::Live) => "tg_pk_live_",
        (KeyKind::Publishable, Mode::Test) => "tg_pk_test_",
    }
}

/// The kind and environment a key's prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyForm {
    pub mode: Mode,
    pub kind: KeyKind,
    /// Minted before the `tg_` prefix (`sk_test_…`).
    pub unprefixed: bool,
}

/// The kind and environment `key`'s prefix names, in either form (`tg_sk_test_…` or the older
/// `sk_test_…`); `None` for text that is not shaped like a Tollgate API key. Only the shape is
/// read: whether the key exists is for the server to say.
pub fn key_form(key: &str) -> Option<KeyForm> {
    let (rest, unprefixed) = match key.strip_prefix(TOLLGATE_PREFIX) {
        Some(rest) => (rest, false),
        None => (key, true),
    };
    let forms = [
        (Mode::Live, KeyKind::Secret),
        (Mode::Test, KeyKind::Secret),
        (Mode::Live, KeyKind::Publishable),
        (Mode::Test, KeyKind::Publishable),
    ];
    forms.into_iter().find_map(|(mode, kind)| {
        let prefix = self::unprefixed(mode, kind);
        (rest.len() > prefix.len() && rest.starts_with(prefix)).then_some(KeyForm {
            mode,
            kind,
            unprefixed,
        })
    })
}

/// The Stripe prefix `token` starts with (`sk_test_`, `whsec_`, ...), if any. A Tollgate key
/// minted before the `tg_` prefix has this shape too, so this is asked only of a token that
/// failed to authenticate.
pub fn stripe_prefix(token: &str) -> Option<&'static str> {
    STRIPE_PREFIXES
        .into_iter()
        .find(|prefix| token.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_name_kind_and_environment() {
        for (mode, kind) in [
            (Mode::Live, KeyKind::Secret),
            (Mode::Test, KeyKind::Secret),
            (Mode::Live, KeyKind::Publishable),
            (Mode::Test, KeyKind::Publishable),
        ] {
            let today = format!("{}abc", key_prefix(mode, kind));
            let before = format!("{}abc", unprefixed(mode, kind));
            assert!(today.starts_with(TOLLGATE_PREFIX), "{today}");
            assert_eq!(
                key_form(&today),
                Some(KeyForm {
                    mode,
                    kind,
                    unprefixed: false
                }),
                "{today}"
            );
            assert_eq!(
                key_form(&before),
                Some(KeyForm {
                    mode,
                    kind,
                    unprefixed: true
                }),
                "{before}"
            );
        }
    }

    #[test]
    fn other_text_is_no_key_form() {
        for text in [
            "",
            "tg_",
            "tg_sk_test_",
            "sk_test_",
            "tg_admin_abc",
            "rk_test_abc",
            "whsec_abc",
            "tg_tg_sk_test_abc",
            "tg_rk_live_abc",
            "SK_TEST_abc",
            "sk_prod_abc",
            "xsk_test_abc",
        ] {
            assert_eq!(key_form(text), None, "{text:?}");
        }
    }

    #[test]
    fn stripe_shapes_are_recognized_and_tollgate_ones_are_not() {
        assert_eq!(stripe_prefix("sk_live_51Habc"), Some("sk_live_"));
        assert_eq!(stripe_prefix("sk_test_51Habc"), Some("sk_test_"));
        assert_eq!(stripe_prefix("pk_live_51Habc"), Some("pk_live_"));
        assert_eq!(stripe_prefix("pk_test_51Habc"), Some("pk_test_"));
        assert_eq!(stripe_prefix("rk_live_51Habc"), Some("rk_live_"));
        assert_eq!(stripe_prefix("rk_test_51Habc"), Some("rk_test_"));
        assert_eq!(stripe_prefix("whsec_abc"), Some("whsec_"));
        for text in [
            "tg_sk_live_abc",
            "tg_pk_test_abc",
            "tg_admin_abc",
            "",
            "sk_",
            "whsec",
            "acct_123",
        ] {
            assert_eq!(stripe_prefix(text), None, "{text:?}");
        }
    }
}
