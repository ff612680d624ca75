//! Fresh ids for everything the server creates (`rsv_…`, `evt_…`, `sub_…`, `key_…`, `prj_…`).
//!
//! Ids are made here, not in the store or the core, so every decision stays a function of its
//! inputs and a replayed command carries the ids it was first given.
//!
//! An id's first [`ID_TIME_CHARS`] characters after the prefix are its creation time in
//! milliseconds, base 62, so ids made later sort later. The stores key their tables by id: a
//! batch of new reservations and events lands on the last page of each index instead of a
//! random page each, which is most of what a group commit writes.

use rand::distr::{Alphanumeric, SampleString};

/// Characters after an id's prefix: [`ID_TIME_CHARS`] of time, then random ones.
pub const ID_RANDOM_CHARS: usize = 24;
/// Leading characters of creation time: 62^8 ms last until the year 8883.
pub const ID_TIME_CHARS: usize = 8;
/// The base-62 digits in ASCII order, so a string comparison orders times.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Longest id the API accepts in a path, in bytes (longer ones cannot exist).
pub const ID_BYTES_MAX: usize = 64;

pub const RESERVATION_PREFIX: &str = "rsv_";
pub const EVENT_PREFIX: &str = "evt_";
pub const SUBSCRIPTION_PREFIX: &str = "sub_";
pub const KEY_ID_PREFIX: &str = "key_";
pub const PROJECT_PREFIX: &str = "prj_";
pub const REQUEST_PREFIX: &str = "req_";

pub const GRANT_PREFIX: &str = "grt_";
pub const LEDGER_PREFIX: &str = "led_";

/// The seed of the ids one command makes several of (ledger entries, rollover grants): the
/// time in base 62 and random characters; each id adds four hex digits of its number.
pub fn new_seed() -> tollgate_store::IdSeed {
    let mut seed = new_id("");
    seed.truncate(ID_RANDOM_CHARS - 4);
    tollgate_store::IdSeed(seed)
}

/// `prefix`, the time in base 62, then random alphanumeric characters (about 95 bits).
pub fn new_id(prefix: &str) -> String {
    let millis = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
    let mut id = String::with_capacity(prefix.len() + ID_RANDOM_CHARS);
    id.push_str(prefix);
    id.push_str(base62_time(millis).as_str());
    Alphanumeric.append_string(&mut rand::rng(), &mut id, ID_RANDOM_CHARS - ID_TIME_CHARS);
    id
}

/// The [`ID_TIME_CHARS`] base-62 digits of a time, as text.
struct Base62Time([u8; ID_TIME_CHARS]);

impl Base62Time {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base-62 digits are ASCII")
    }
}

/// `millis` as exactly [`ID_TIME_CHARS`] base-62 digits, most significant first.
fn base62_time(mut millis: u64) -> Base62Time {
    let mut digits = [b'0'; ID_TIME_CHARS];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(millis % 62) as usize];
        millis /= 62;
    }
    Base62Time(digits)
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

    #[test]
    fn ids_made_later_sort_later() {
        assert_eq!(base62_time(0).as_str(), "00000000");
        assert_eq!(base62_time(61).as_str(), "0000000z");
        assert_eq!(base62_time(62).as_str(), "00000010");
        let times = [
            0,
            1,
            61,
            62,
            1_700_000_000_000,
            1_700_000_000_001,
            62u64.pow(8) - 1,
        ];
        for pair in times.windows(2) {
            assert!(
                base62_time(pair[0]).as_str() < base62_time(pair[1]).as_str(),
                "{pair:?}"
            );
        }
        let a = new_id(EVENT_PREFIX);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id(EVENT_PREFIX);
        assert!(a < b, "{a} then {b}");
    }
}
