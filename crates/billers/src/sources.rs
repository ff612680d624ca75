//! Where in a biller object the app's subject is found: the integration's `userIdFrom` and
//! `accountIdFrom` dotted paths (API.md §10), resolved against the event's object.

use serde_json::Value;
use tollgate_core::biller::OwnerHint;

/// Longest id taken from a biller payload (an owner id, a pack id, an event id), in bytes.
pub const PAYLOAD_ID_BYTES_MAX: usize = 256;

/// Stripe's default user paths: the Checkout session's `client_reference_id`, then the
/// `user_id` metadata that subscriptions carry.
pub const STRIPE_USER_ID_FROM: &[&str] = &["client_reference_id", "metadata.user_id"];
/// Polar's default user paths: the customer's immutable `external_id`, then metadata.
pub const POLAR_USER_ID_FROM: &[&str] = &["customer.external_id", "metadata.user_id"];
/// The default account paths, for both billers.
pub const ACCOUNT_ID_FROM: &[&str] = &["metadata.account_id"];

/// Dotted paths (`metadata.user_id`, `customer.external_id`) naming the subject of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub user_id_from: Vec<String>,
    pub account_id_from: Vec<String>,
}

impl Sources {
    /// Stripe's defaults: [`STRIPE_USER_ID_FROM`] and [`ACCOUNT_ID_FROM`].
    pub fn stripe_default() -> Self {
        Self::from_paths(STRIPE_USER_ID_FROM, ACCOUNT_ID_FROM)
    }

    /// Polar's defaults: [`POLAR_USER_ID_FROM`] and [`ACCOUNT_ID_FROM`].
    pub fn polar_default() -> Self {
        Self::from_paths(POLAR_USER_ID_FROM, ACCOUNT_ID_FROM)
    }

    fn from_paths(users: &[&str], accounts: &[&str]) -> Self {
        Self {
            user_id_from: users.iter().map(|p| p.to_string()).collect(),
            account_id_from: accounts.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// The subject `object` names: an account when an account path holds an id (an account
    /// owns what its users buy for it), else a user; `None` when no path holds a usable id.
    pub fn owner(&self, object: &Value) -> Option<OwnerHint> {
        first_id(object, &self.account_id_from)
            .map(OwnerHint::Account)
            .or_else(|| first_id(object, &self.user_id_from).map(OwnerHint::User))
    }

    /// The user paths, for notes saying where no user id was found.
    pub(crate) fn user_paths(&self) -> String {
        self.user_id_from.join(", ")
    }
}

/// The first path whose value is a usable id.
fn first_id(object: &Value, paths: &[String]) -> Option<String> {
    paths
        .iter()
        .find_map(|path| resolve(object, path).and_then(clean_id))
        .map(str::to_string)
}

/// The value at a dotted path (`customer.metadata.user_id`) of nested objects.
pub(crate) fn resolve<'v>(object: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(object, |value, key| value.as_object()?.get(key))
}

/// A string usable as an id: non-empty, at most [`PAYLOAD_ID_BYTES_MAX`] bytes, no control
/// characters. Anything else is ignored, so a stray value never becomes a subject.
pub(crate) fn clean_id(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| is_clean_id(s))
}

pub(crate) fn is_clean_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= PAYLOAD_ID_BYTES_MAX && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(s: &str) -> Option<OwnerHint> {
        Some(OwnerHint::User(s.into()))
    }

    #[test]
    fn first_path_with_an_id_wins() {
        let s = Sources::stripe_default();
        let both = json!({"client_reference_id": "u_1", "metadata": {"user_id": "u_2"}});
        assert_eq!(s.owner(&both), user("u_1"));
        let meta = json!({"client_reference_id": null, "metadata": {"user_id": "u_2"}});
        assert_eq!(s.owner(&meta), user("u_2"));
        assert_eq!(s.owner(&json!({"metadata": {}})), None);
    }

    #[test]
    fn account_wins_over_user() {
        let s = Sources::polar_default();
        let o = json!({"customer": {"external_id": "u_1"}, "metadata": {"account_id": "acc_1"}});
        assert_eq!(s.owner(&o), Some(OwnerHint::Account("acc_1".into())));
    }

    #[test]
    fn unusable_values_are_skipped() {
        let s = Sources::stripe_default();
        let at_max = "u".repeat(PAYLOAD_ID_BYTES_MAX);
        let over = "u".repeat(PAYLOAD_ID_BYTES_MAX + 1);
        for bad in [
            json!(""),
            json!(42),
            json!("u\n1"),
            json!(over),
            json!({"id": "x"}),
        ] {
            let o = json!({"client_reference_id": bad, "metadata": {"user_id": "u_2"}});
            assert_eq!(s.owner(&o), user("u_2"));
        }
        let o = json!({"client_reference_id": at_max.clone()});
        assert_eq!(s.owner(&o), user(&at_max));
    }

    #[test]
    fn deep_paths_resolve_through_objects_only() {
        let s = Sources {
            user_id_from: vec!["customer.metadata.user_id".into()],
            account_id_from: vec![],
        };
        assert_eq!(
            s.owner(&json!({"customer": {"metadata": {"user_id": "u_9"}}})),
            user("u_9")
        );
        assert_eq!(s.owner(&json!({"customer": "cus_1"})), None);
        assert_eq!(
            s.owner(&json!({"customer": [{"metadata": {"user_id": "u"}}]})),
            None
        );
    }
}
