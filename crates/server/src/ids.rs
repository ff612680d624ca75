//! Fresh ids for everything the server creates (`rsv_…`, `evt_…`, `sub_…`, `key_…`, `prj_…`).
//!
//! Ids are made here, not in the store or the core, so every decision stays a function of its
//! inputs and a replayed command carries the ids it was first given.

use rand::distr::{Alphanumeric, SampleString};

/// Random characters after an id's prefix: 24 of 62 symbols, about 143 bits.
pub const ID_RANDOM_CHARS: usize = 24;
/// Longest id the API accepts in a path, in bytes (longer ones cannot exist).
pub const ID_BYTES_MAX: usize = 64;

pub const RESERVATION_PREFIX: &str = "rsv_";
pub const EVENT_PREFIX: &str = "evt_";
pub const SUBSCRIPTION_PREFIX: &str = "sub_";
pub const KEY_ID_PREFIX: &str = "key_";
pub const PROJECT_PREFIX: &str = "prj_";
pub const REQUEST_PREFIX: &str = "req_";

/// `prefix` followed by [`ID_RANDOM_CHARS`] random alphanumeric characters.
pub fn new_id(prefix: &str) -> String {
    random_string(prefix, ID_RANDOM_CHARS)
}

/// `prefix` followed by `chars` random alphanumeric characters from the thread's CSPRNG.
pub fn random_string(prefix: &str, chars: usize) -> String {
    let mut s = String::with_capacity(prefix.len() + chars);
    s.push_str(prefix);
    Alphanumeric.append_string(&mut rand::rng(), &mut s, chars);
    s
}

/// Whether `id` could be an id made with `prefix`; anything else is certainly unknown.
pub fn looks_like(prefix: &str, id: &str) -> bool {
    id.starts_with(prefix) && id.len() <= ID_BYTES_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_differ() {
        let a = new_id(RESERVATION_PREFIX);
        let b = new_id(RESERVATION_PREFIX);
        assert!(a.starts_with("rsv_"));
        assert_eq!(a.len(), 4 + ID_RANDOM_CHARS);
        assert_ne!(a, b);
        assert!(looks_like(RESERVATION_PREFIX, &a));
        assert!(!looks_like(EVENT_PREFIX, &a));
    }
}
