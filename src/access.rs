//! Who may call what (SPEC §15): the API keys and their roles, the caller a credential
//! identifies, the reload of the keys (SIGHUP), and the limit on failed authentications per
//! client address.
//!
//! Which role a route needs is not here: each handler declares it by the extractor in its
//! signature (`crate::api::extract::{Viewer, Operator, Admin}`, or `CallbackToken`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq;

use crate::config::{AuthSettings, ConfigError, NamedKey, PLACEHOLDER_API_KEY, Role};
use crate::domain::TrialId;
use crate::engine::redact::MIN_SECRET_LEN;

/// The holder of an API key: the key's name and role (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub name: Arc<str>,
    pub role: Role,
}

/// Who a request's credential says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// One of the API keys.
    Key(KeyHolder),
    /// A trial's callback token (its signature and expiry verified; whether it opens the route
    /// is the route's check).
    Callback(TrialId),
}

impl fmt::Display for Actor {
    /// The key's name, or `callback:<trial id>`: the actor as a record of who did what names it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Key(holder) => f.write_str(&holder.name),
            Actor::Callback(trial) => write!(f, "callback:{trial}"),
        }
    }
}

/// The keys in force. Replaced whole on a reload, so a request sees one set or the other.
struct KeySet {
    keys: Vec<(NamedKey, Arc<str>)>,
}

impl KeySet {
    fn new(keys: Vec<NamedKey>) -> Self {
        let keys = keys
            .into_iter()
            .map(|key| {
                let name = Arc::from(key.name.as_str());
                (key, name)
            })
            .collect();
        Self { keys }
    }

    /// The key whose secret is `presented`. Every key is compared, in constant time, so the
    /// time taken tells nothing about which key came close.
    fn find(&self, presented: &str) -> Option<KeyHolder> {
        self.find_digest(&NamedKey::digest(presented))
    }

    /// The key whose secret has this SHA-256, compared like [`KeySet::find`].
    fn find_digest(&self, digest: &[u8; 32]) -> Option<KeyHolder> {
        let mut found = None;
        for (key, name) in &self.keys {
            if bool::from(key.sha256.ct_eq(digest)) {
                found = Some(KeyHolder {
                    name: name.clone(),
                    role: key.role,
                });
            }
        }
        found
    }

    /// Name → (digest, role), to tell what a reload changed.
    fn by_name(&self) -> BTreeMap<&str, (&[u8; 32], Role)> {
        self.keys
            .iter()
            .map(|(key, name)| (&**name, (&key.sha256, key.role)))
            .collect()
    }
}

/// What a reload changed, by key name (for the log; never the keys).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    pub count: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Keys whose secret or role changed.
    pub changed: Vec<String>,
}

impl fmt::Display for KeyChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key(s) in force", self.count)?;
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                write!(f, "; {what}: {}", names.join(", "))?;
            }
        }
        Ok(())
    }
}

/// A failed authentication from an address that has failed too often: try again after this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyFailures {
    pub retry_after: Duration,
}

/// A callback token used more often than the limit: try again after this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyCallbacks {
    pub retry_after: Duration,
    /// The limit, `auth.max_callbacks_per_minute`.
    pub per_minute: u32,
}

/// How often forgotten addresses are dropped from the failure counts.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// The API keys in force and the failed-authentication limit, shared by every request.
pub struct Access {
    keys: RwLock<Arc<KeySet>>,
    /// The settings the keys came from, to load them again from the same sources.
    auth: AuthSettings,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// The addresses refused for failing too often, with when their next failure is allowed:
    /// until then a key they send is not looked at (see [`Self::limited`]).
    limited_until: Mutex<HashMap<IpAddr, Instant>>,
    /// The requests made with each callback token, by the token's hash.
    callbacks: DefaultKeyedRateLimiter<u64>,
    /// What hashes a callback token for [`Self::callbacks`] (keyed at random at start).
    token_hasher: std::hash::RandomState,
    /// The warnings that a trial's token is throttled: one a minute.
    warned: DefaultKeyedRateLimiter<TrialId>,
    last_purge: Mutex<Instant>,
    /// Told of every reload that put keys in force.
    reloaded: tokio::sync::watch::Sender<()>,
}

impl Access {
    /// The keys of `auth` (validated), and a limit of `auth.max_failures_per_minute` failed
    /// authentications per client address and of `auth.max_callbacks_per_minute` requests per
    /// trial's callback token.
    pub fn new(auth: &AuthSettings) -> Result<Self, ConfigError> {
        let keys = KeySet::new(auth.api_keys()?);
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Ok(Self {
            keys: RwLock::new(Arc::new(keys)),
            auth: auth.clone(),
            failures: RateLimiter::keyed(per_minute(auth.max_failures_per_minute)),
            limited_until: Mutex::new(HashMap::new()),
            callbacks: RateLimiter::keyed(per_minute(auth.max_callbacks_per_minute)),
            token_hasher: std::hash::RandomState::new(),
            warned: RateLimiter::keyed(per_minute(1)),
            last_purge: Mutex::new(Instant::now()),
            reloaded: tokio::sync::watch::Sender::new(()),
        })
    }

    /// The holder of the API key `presented`, if it is one of the keys in force.
    pub fn key_holder(&self, presented: &str) -> Option<KeyHolder> {
        // The set is cloned out (an `Arc`), so the lock is held for no more than that.
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        keys.find(presented)
    }

    /// The holder of the key whose secret has this SHA-256, if it is in force: a session
    /// opened with a key (the console's) lasts only while that key does, with the same role.
    pub fn key_holder_by_digest(&self, digest: &[u8; 32]) -> Option<KeyHolder> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        keys.find_digest(digest)
    }

    /// Resolves once the key whose secret has this SHA-256 is no longer in force as `holder`
    /// (a reload removed it or changed its name or role): what a stream opened with the key
    /// ends on.
    pub async fn withdrawn(self: Arc<Self>, digest: [u8; 32], holder: KeyHolder) {
        let mut reloads = self.reloaded.subscribe();
        while self.key_holder_by_digest(&digest).as_ref() == Some(&holder) {
            if reloads.changed().await.is_err() {
                return;
            }
        }
    }

    /// Counts a failed authentication from `addr`; past the limit, says how long to wait, and
    /// the address is [`Self::limited`] until then.
    pub fn note_failure(&self, addr: IpAddr) -> Result<(), TooManyFailures> {
        self.purge_now_and_then();
        let client = client_key(addr);
        self.failures.check_key(&client).map_err(|not_until| {
            metrics::counter!("lcm_requests_throttled_total").increment(1);
            let retry_after = not_until.wait_time_from(self.failures.clock().now());
            self.limited_until
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(client, Instant::now() + retry_after);
            TooManyFailures { retry_after }
        })
    }

    /// Whether `addr` was refused for failing too often and its next failure is not allowed
    /// yet: then an API key it sends is answered 429 whether it is right or wrong, so the
    /// answer tells a guesser nothing (a right key passing while wrong ones are refused would
    /// let guessing go on at full speed). Callback tokens, which cannot be guessed, are not held
    /// back by this: a component with one bad token does not hold up its host's other trials.
    pub fn limited(&self, addr: IpAddr) -> Option<TooManyFailures> {
        let client = client_key(addr);
        let mut limited = self
            .limited_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let until = *limited.get(&client)?;
        let now = Instant::now();
        if until <= now {
            limited.remove(&client);
            return None;
        }
        drop(limited);
        metrics::counter!("lcm_requests_throttled_total").increment(1);
        Some(TooManyFailures {
            retry_after: until - now,
        })
    }

    /// Counts a request made with `token`, a callback token of trial `trial` (whatever its
    /// answer: a component in a loop is held back before it is refused or audited); past the
    /// limit, says how long to wait. Each token counts apart, so one that leaked and was
    /// revoked cannot use up what its trial's components may send. `warn`: the first time in
    /// a minute this trial is held back.
    pub fn note_callback(
        &self,
        trial: &TrialId,
        token: &str,
    ) -> Result<(), (TooManyCallbacks, bool)> {
        use std::hash::BuildHasher;
        self.purge_now_and_then();
        let key = self.token_hasher.hash_one(token);
        self.callbacks.check_key(&key).map_err(|not_until| {
            metrics::counter!("lcm_requests_throttled_total").increment(1);
            let throttled = TooManyCallbacks {
                retry_after: not_until.wait_time_from(self.callbacks.clock().now()),
                per_minute: self.auth.max_callbacks_per_minute,
            };
            (throttled, self.warned.check_key(trial).is_ok())
        })
    }

    /// Drops the addresses, tokens and trials whose count is back to nothing, so the maps do
    /// not grow with every address that ever failed once or every token that called back.
    fn purge_now_and_then(&self) {
        let Ok(mut last) = self.last_purge.try_lock() else {
            return;
        };
        if last.elapsed() >= PURGE_EVERY {
            *last = Instant::now();
            drop(last);
            self.failures.retain_recent();
            self.failures.shrink_to_fit();
            let now = Instant::now();
            let mut limited = self
                .limited_until
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            limited.retain(|_, until| *until > now);
            limited.shrink_to_fit();
            drop(limited);
            self.callbacks.retain_recent();
            self.callbacks.shrink_to_fit();
            self.warned.retain_recent();
            self.warned.shrink_to_fit();
        }
    }

    /// Whether the keys can be loaded again (settings loaded from files and the environment;
    /// not settings made in code).
    pub fn reloads(&self) -> bool {
        self.auth.sources.is_some()
    }

    /// Loads the keys again from the configuration's sources (`auth.api_key`, `auth.keys`,
    /// `auth.api_key_file`, `auth.keys_file`) and puts them in force. Keys that fail
    /// validation change nothing, and so does a reload that would let the built-in placeholder
    /// in where it was not (its file or variable went missing, most likely) or give it a role
    /// it did not have, or a key that is the id of one of the trials `held` (every viewer sees
    /// those ids). Reads files: call it off the async threads.
    pub fn reload(&self, held: &[String]) -> Result<Reloaded, ConfigError> {
        let loaded = match self.auth.reload() {
            Some(loaded) => loaded?,
            None => self.auth.clone(),
        };
        let fresh = Arc::new(KeySet::new(loaded.api_keys()?));
        let shown = |id: &String| {
            let whole = fresh
                .find(id)
                .map(|holder| (holder.name.to_string(), "the"));
            whole.or_else(|| {
                (loaded.written_keys())
                    .find(|(_, key)| key.len() >= MIN_SECRET_LEN && id.contains(key))
                    .map(|(name, _)| (name.to_owned(), "part of the"))
            })
        };
        if let Some((name, how)) = held.iter().find_map(shown) {
            return Err(ConfigError::Invalid {
                key: loaded.source_of(&name).to_owned(),
                reason: format!(
                    "key '{name}' is {how} id of a trial this service holds, and /status, /trials and the log show trial ids to every viewer: choose another key"
                ),
            });
        }
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Nor may it gain a role it did not have: the placeholder already in force (warned of
        // at start) may stay as it is, no more.
        if let Some(holder) = fresh.find(PLACEHOLDER_API_KEY)
            && keys
                .find(PLACEHOLDER_API_KEY)
                .is_none_or(|before| holder.role > before.role)
        {
            return Err(ConfigError::Invalid {
                key: loaded.source_of(&holder.name).to_owned(),
                reason: format!(
                    "key '{}' would be the built-in placeholder with the {} role, which it does not have now, and anyone who read the defaults knows it (for auth.api_key: is its file or LCM__AUTH__API_KEY missing?)",
                    holder.name, holder.role
                ),
            });
        }
        let changes = changes(&keys, &fresh);
        *keys = fresh;
        drop(keys);
        self.reloaded.send_replace(());
        Ok(Reloaded {
            changes,
            secrets: loaded.secret_values(),
            warnings: loaded.key_warnings(),
        })
    }
}

/// What a reload put in force.
pub struct Reloaded {
    pub changes: KeyChanges,
    /// The section's secret values now, to hide wherever they are pasted.
    pub secrets: Vec<String>,
    /// What the keys in force still warn about (the placeholder, keys short enough to guess).
    pub warnings: Vec<String>,
}

fn changes(old: &KeySet, new: &KeySet) -> KeyChanges {
    let (old, new) = (old.by_name(), new.by_name());
    let names = |f: &dyn Fn(&str) -> bool, from: &BTreeMap<&str, _>| -> Vec<String> {
        from.keys()
            .filter(|name| f(name))
            .map(|name| name.to_string())
            .collect()
    };
    KeyChanges {
        count: new.len(),
        added: names(&|name| !old.contains_key(name), &new),
        removed: names(&|name| !new.contains_key(name), &old),
        changed: names(
            &|name| matches!((old.get(name), new.get(name)), (Some(a), Some(b)) if a != b),
            &old,
        ),
    }
}

/// The address failures are counted under: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64, so counting single addresses would not limit it).
fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from_bits(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeySettings, Secret, Settings};

    fn auth(keys: &[(&str, &str, Role)]) -> AuthSettings {
        let mut auth = Settings::defaults().unwrap().auth;
        auth.api_key = Secret::new("the-default-key");
        auth.keys = keys
            .iter()
            .map(|(name, key, role)| KeySettings {
                name: (*name).to_owned(),
                key: Some(Secret::new(*key)),
                key_sha256: None,
                role: *role,
            })
            .collect();
        auth
    }

    #[test]
    fn a_key_identifies_its_holder_and_role() {
        let access = Access::new(&auth(&[("ci", "ci-key", Role::Viewer)])).unwrap();
        let holder = access.key_holder("ci-key").unwrap();
        assert_eq!((&*holder.name, holder.role), ("ci", Role::Viewer));
        let holder = access.key_holder("the-default-key").unwrap();
        assert_eq!((&*holder.name, holder.role), ("default", Role::Admin));
        assert_eq!(access.key_holder("ci-ke"), None);
        assert_eq!(access.key_holder(""), None);
    }

    #[test]
    fn failures_beyond_the_limit_are_refused_per_address() {
        let mut settings = auth(&[]);
        settings.max_failures_per_minute = 3;
        let access = Access::new(&settings).unwrap();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(access.note_failure(one), Ok(()));
        }
        let refused = access.note_failure(one).unwrap_err();
        assert!(refused.retry_after > Duration::ZERO, "{refused:?}");
        assert!(
            refused.retry_after <= Duration::from_secs(20),
            "{refused:?}"
        );
        assert_eq!(access.note_failure("192.0.2.2".parse().unwrap()), Ok(()));
    }

    #[test]
    fn an_address_refused_is_limited_until_its_next_failure_is_allowed() {
        let mut settings = auth(&[]);
        // One failure every 100 ms once the 600 in a row are spent.
        settings.max_failures_per_minute = 600;
        let access = Access::new(&settings).unwrap();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..600 {
            assert_eq!(access.note_failure(one), Ok(()));
            assert_eq!(access.limited(one), None, "not refused yet");
        }
        let refused = access.note_failure(one).unwrap_err();
        let limited = access.limited(one).expect("limited once refused");
        assert!(limited.retry_after <= refused.retry_after, "{limited:?}");
        assert_eq!(access.limited("192.0.2.2".parse().unwrap()), None);
        let waited = Instant::now();
        while access.limited(one).is_some() {
            assert!(waited.elapsed() < Duration::from_secs(5), "never lifted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            access.note_failure(one),
            Ok(()),
            "its next failure is allowed"
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a = client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = client_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = client_key("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_reload_reports_what_changed_by_name() {
        let old = KeySet::new(
            auth(&[("a", "key-a", Role::Viewer), ("b", "key-b", Role::Viewer)])
                .api_keys()
                .unwrap(),
        );
        let new = KeySet::new(
            auth(&[("b", "key-b", Role::Operator), ("c", "key-c", Role::Viewer)])
                .api_keys()
                .unwrap(),
        );
        let changes = changes(&old, &new);
        assert_eq!(changes.added, ["c"]);
        assert_eq!(changes.removed, ["a"]);
        assert_eq!(changes.changed, ["b"]);
        assert_eq!(
            changes.to_string(),
            "3 key(s) in force; added: c; removed: a; changed: b"
        );
    }
}
