//! Users and authentication, shared by every client listener (ManageSieve, IMAP; LMTP only asks
//! whether a user exists).
//!
//! - [`UserTable`]: `[[users]]`, each a name and an argon2 PHC hash, validated; replaced whole on
//!   a reload ([`Authenticator::replace_users`]), so a session sees either the old or the new
//!   table, never half of each.
//! - [`sasl`]: the PLAIN (RFC 4616) and LOGIN mechanisms' wire formats, pure.
//! - [`Authenticator::verify`]: checks a password. Argon2 is deliberately slow (tens of
//!   milliseconds), so it runs on tokio's blocking pool, never on the node's actor thread.
//! - [`FailureDelays`]: repeated failures from one IP address make that address wait longer
//!   before each answer (doubling from [`FIRST_DELAY`] up to [`MAX_DELAY`]); the wait is a timer
//!   of that connection alone, so no other client is slowed.
//!
//! An unknown user and a wrong password fail alike (same delay, same answer, and a hash is
//! still verified for an unknown user), so a client cannot learn which names exist.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use mailmesh_protocol::names::validate_user;

/// The delay after the first failure from an address; it doubles with each further one.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest an address is made to wait.
pub const MAX_DELAY: Duration = Duration::from_secs(16);
/// An address with no failure for this long starts again from no delay.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Password hashes verified at once. Each argon2 run takes 19 MiB and a core for tens of
/// milliseconds; without a bound, a crowd of clients trying passwords at once would take the
/// node's memory.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 4;
/// Addresses tracked at most; beyond this the one idle longest is forgotten, so a flood of
/// addresses costs bounded memory.
pub const MAX_TRACKED: usize = 65_536;

/// `[[users]]`, validated: name to PHC hash string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserTable {
    users: BTreeMap<String, String>,
}

impl UserTable {
    /// Checks each `(name, hash)`: a valid user name, not twice, and an argon2 PHC string.
    /// The error names the entry (`users[i].field`) and the problem.
    pub fn new(entries: &[(String, String)]) -> Result<UserTable, (String, String)> {
        let mut users = BTreeMap::new();
        for (i, (name, hash)) in entries.iter().enumerate() {
            validate_user(name).map_err(|e| (format!("users[{i}].name"), e.to_string()))?;
            if users.contains_key(name) {
                return Err((
                    format!("users[{i}].name"),
                    format!("user {name:?} is configured twice"),
                ));
            }
            check_hash(hash).map_err(|problem| (format!("users[{i}].password_hash"), problem))?;
            users.insert(name.clone(), hash.clone());
        }
        Ok(UserTable { users })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }
}

/// Whether `hash` is an argon2 PHC string this module can verify against.
fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not a PHC hash string ({e}); make one with `mailmesh user hash`"))?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        other => {
            return Err(format!(
                "algorithm {other:?} is not argon2 (use `mailmesh user hash`)"
            ))
        }
    }
    argon2::Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    Ok(())
}

/// A new argon2id hash of `password` with the crate's default parameters (RFC 9106's second
/// recommended set is heavier than a mail server's login rate can afford on two cores) and a
/// random salt, as a PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A hash that matches no password, verified for unknown users so that they cost the same time
/// as known ones.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$bWFpbG1lc2hkZWNveQ$R6q7bXvL0wH0s4xK3G8gqz5Q7oG3v0qK2lq8r3w4m5A";

/// Why an authentication failed, as a client may be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (never told apart).
    #[error("authentication failed")]
    Failed,
    /// The SASL exchange itself was malformed (bad base64, missing NULs, ...).
    #[error("malformed authentication exchange: {0}")]
    Malformed(String),
}

/// Failures per IP address and the delay they earn.
#[derive(Debug, Default)]
pub struct FailureDelays {
    by_address: BTreeMap<IpAddr, FailureRecord>,
}

#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    failures: u32,
    last: Instant,
}

impl FailureDelays {
    /// How long an attempt from `address` waits before it is answered, at `now`.
    pub fn delay(&self, address: IpAddr, now: Instant) -> Duration {
        match self.by_address.get(&address) {
            Some(r) if now.saturating_duration_since(r.last) < FORGET_AFTER => delay_for(r.failures),
            _ => Duration::ZERO,
        }
    }

    pub fn record_failure(&mut self, address: IpAddr, now: Instant) {
        let failures = match self.by_address.get(&address) {
            Some(r) if now.saturating_duration_since(r.last) < FORGET_AFTER => r.failures.saturating_add(1),
            _ => 1,
        };
        self.by_address
            .insert(address, FailureRecord { failures, last: now });
        if self.by_address.len() > MAX_TRACKED {
            self.forget_oldest(now);
        }
    }

    /// A success from an address clears its record.
    pub fn record_success(&mut self, address: IpAddr) {
        self.by_address.remove(&address);
    }

    /// Drops records past [`FORGET_AFTER`], and if none was, the single oldest one.
    fn forget_oldest(&mut self, now: Instant) {
        let before = self.by_address.len();
        self.by_address
            .retain(|_, r| now.saturating_duration_since(r.last) < FORGET_AFTER);
        if self.by_address.len() == before {
            if let Some(oldest) = self
                .by_address
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(a, _)| *a)
            {
                self.by_address.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.by_address.len()
    }
}

/// The delay after `failures` consecutive failures: none, then [`FIRST_DELAY`] doubling.
pub fn delay_for(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// What every listener authenticates with. Cheap to clone; the clones share the users and the
/// failure records.
#[derive(Clone, Debug)]
pub struct Authenticator {
    users: Arc<RwLock<Arc<UserTable>>>,
    failures: Arc<Mutex<FailureDelays>>,
    failed_logins: Arc<AtomicU64>,
    delayed_attempts: Arc<AtomicU64>,
    verifications: Arc<tokio::sync::Semaphore>,
}

impl Authenticator {
    pub fn new(users: UserTable) -> Authenticator {
        Authenticator {
            users: Arc::new(RwLock::new(Arc::new(users))),
            failures: Arc::new(Mutex::new(FailureDelays::default())),
            failed_logins: Arc::new(AtomicU64::new(0)),
            delayed_attempts: Arc::new(AtomicU64::new(0)),
            verifications: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFICATIONS)),
        }
    }

    /// Takes a reloaded `[[users]]`; sessions already logged in stay logged in.
    pub fn replace_users(&self, users: UserTable) {
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
    }

    pub fn users(&self) -> Arc<UserTable> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[cfg(test)]
    pub fn user_exists(&self, name: &str) -> bool {
        self.users().contains(name)
    }

    /// Failed logins since the node started (for the metrics).
    pub fn failed_logins(&self) -> u64 {
        self.failed_logins.load(Ordering::Relaxed)
    }

    /// Attempts that waited out their address's failure delay before being checked (for the
    /// metrics: they show the delay at work without anyone timing it).
    pub fn delayed_attempts(&self) -> u64 {
        self.delayed_attempts.load(Ordering::Relaxed)
    }

    /// The delay an attempt from `address` would wait now.
    pub fn delay_for_address(&self, address: IpAddr) -> Duration {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .delay(address, Instant::now())
    }

    /// Checks `password` for `user`, from a client at `address` (`None`: a Unix socket, which
    /// only local users reach and which no delay applies to). Waits first for the delay the
    /// address has earned; answers the user name on success.
    pub async fn verify(
        &self,
        address: Option<IpAddr>,
        user: &str,
        password: &[u8],
    ) -> Result<String, AuthError> {
        if let Some(address) = address {
            let delay = self.delay_for_address(address);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                self.delayed_attempts.fetch_add(1, Ordering::Relaxed);
            }
        }
        let hash = self.users().users.get(user).cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.to_string());
        let password = password.to_vec();
        let matched = match self.verifications.acquire().await {
            Ok(_permit) => tokio::task::spawn_blocking(move || password_matches(&hash, &password))
                .await
                .unwrap_or(false),
            Err(_) => false,
        };
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if known && matched {
            if let Some(address) = address {
                failures.record_success(address);
            }
            Ok(user.to_string())
        } else {
            if let Some(address) = address {
                failures.record_failure(address, Instant::now());
            }
            self.failed_logins.fetch_add(1, Ordering::Relaxed);
            Err(AuthError::Failed)
        }
    }
}

fn password_matches(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The SASL mechanisms' formats (no I/O): a listener decodes the client's base64 itself or lets
/// these do it.
pub mod sasl {
    use base64::Engine;

    use super::AuthError;

    /// Credentials a client sent.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Credentials {
        pub user: String,
        pub password: Vec<u8>,
    }

    /// Decodes base64 as SASL sends it (`=` alone is an empty response).
    pub fn decode_base64(text: &[u8]) -> Result<Vec<u8>, AuthError> {
        let text = text.trim_ascii();
        if text == b"=" {
            return Ok(Vec::new());
        }
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| AuthError::Malformed(format!("bad base64: {e}")))
    }

    pub fn encode_base64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// RFC 4616 PLAIN: `[authzid] NUL authcid NUL passwd`, decoded. An authorization identity
    /// other than the authentication identity is refused: no user may act as another.
    pub fn plain(message: &[u8]) -> Result<Credentials, AuthError> {
        let mut parts = message.splitn(3, |&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "PLAIN needs authzid NUL authcid NUL password".into(),
            ));
        };
        if password.contains(&0) {
            return Err(AuthError::Malformed("a NUL inside the PLAIN password".into()));
        }
        let user = std::str::from_utf8(authcid)
            .map_err(|_| AuthError::Malformed("user name is not UTF-8".into()))?
            .to_string();
        if user.is_empty() || authcid.len() > 255 || password.len() > 255 {
            return Err(AuthError::Malformed("empty user or field over 255 bytes".into()));
        }
        if !authzid.is_empty() && authzid != authcid {
            return Err(AuthError::Failed);
        }
        Ok(Credentials {
            user,
            password: password.to_vec(),
        })
    }

    /// The LOGIN mechanism (draft-murchison-sasl-login): the server asks `Username:` then
    /// `Password:`, each answer one base64 line. Fed the client's decoded answers one by one.
    #[derive(Debug, Default)]
    pub struct Login {
        user: Option<String>,
    }

    /// What LOGIN does next.
    #[derive(Debug, PartialEq, Eq)]
    pub enum LoginStep {
        /// Send this challenge (already the text to base64-encode).
        Challenge(&'static str),
        Done(Credentials),
    }

    impl Login {
        /// The first challenge; `initial` is an initial response carrying the user name, if the
        /// client sent one.
        pub fn start(initial: Option<&[u8]>) -> Result<(Login, LoginStep), AuthError> {
            let mut login = Login::default();
            match initial {
                Some(user) => {
                    let step = login.answer(user)?;
                    Ok((login, step))
                }
                None => Ok((login, LoginStep::Challenge("Username:"))),
            }
        }

        pub fn answer(&mut self, response: &[u8]) -> Result<LoginStep, AuthError> {
            if response.len() > 255 {
                return Err(AuthError::Malformed("LOGIN answer over 255 bytes".into()));
            }
            match self.user.take() {
                None => {
                    let user = std::str::from_utf8(response)
                        .map_err(|_| AuthError::Malformed("user name is not UTF-8".into()))?;
                    if user.is_empty() {
                        return Err(AuthError::Malformed("empty user name".into()));
                    }
                    self.user = Some(user.to_string());
                    Ok(LoginStep::Challenge("Password:"))
                }
                Some(user) => Ok(LoginStep::Done(Credentials {
                    user,
                    password: response.to_vec(),
                })),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sasl::{self, Credentials, Login, LoginStep};
    use super::*;

    /// A hash with argon2's smallest parameters, so the tests do not spend seconds hashing.
    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        argon
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn table() -> UserTable {
        UserTable::new(&[("alice".into(), cheap_hash("right"))]).unwrap()
    }

    #[test]
    fn users_are_validated_and_errors_name_the_entry() {
        let good = cheap_hash("x");
        let (key, _) = UserTable::new(&[("Alice".into(), good.clone())]).unwrap_err();
        assert_eq!(key, "users[0].name");
        let (key, problem) =
            UserTable::new(&[("a".into(), good.clone()), ("a".into(), good.clone())]).unwrap_err();
        assert_eq!(key, "users[1].name");
        assert!(problem.contains("twice"), "{problem}");
        let (key, _) = UserTable::new(&[("a".into(), "secret".into())]).unwrap_err();
        assert_eq!(key, "users[0].password_hash");
        let bcrypt_like = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        let (_, problem) = UserTable::new(&[("a".into(), bcrypt_like.into())]).unwrap_err();
        assert!(problem.contains("not argon2"), "{problem}");
        assert!(UserTable::new(&[("a".into(), good)]).unwrap().contains("a"));
    }

    #[test]
    fn a_made_hash_verifies_and_the_decoy_is_well_formed() {
        let hash = hash_password(b"pw").unwrap();
        check_hash(&hash).unwrap();
        assert!(password_matches(&hash, b"pw"));
        assert!(!password_matches(&hash, b"pw2"));
        check_hash(DECOY_HASH).unwrap();
    }

    #[test]
    fn plain_decodes_rfc_4616_messages() {
        assert_eq!(
            sasl::plain(b"\0tim\0tanstaaftanstaaf").unwrap(),
            Credentials {
                user: "tim".into(),
                password: b"tanstaaftanstaaf".to_vec()
            }
        );
        assert_eq!(sasl::plain(b"tim\0tim\0pw").unwrap().user, "tim");
        assert_eq!(sasl::plain(b"Ursel\0Kurt\0xipj3plmq"), Err(AuthError::Failed));
        assert!(matches!(sasl::plain(b"no nuls"), Err(AuthError::Malformed(_))));
        assert!(matches!(sasl::plain(b"\0\0pw"), Err(AuthError::Malformed(_))));
        let encoded = sasl::encode_base64(b"\0tim\0pw");
        assert_eq!(sasl::decode_base64(encoded.as_bytes()).unwrap(), b"\0tim\0pw");
        assert!(sasl::decode_base64(b"!!").is_err());
        assert_eq!(sasl::decode_base64(b"=").unwrap(), b"");
    }

    #[test]
    fn login_asks_user_then_password() {
        let (mut login, step) = Login::start(None).unwrap();
        assert_eq!(step, LoginStep::Challenge("Username:"));
        assert_eq!(login.answer(b"alice").unwrap(), LoginStep::Challenge("Password:"));
        assert_eq!(
            login.answer(b"pw").unwrap(),
            LoginStep::Done(Credentials {
                user: "alice".into(),
                password: b"pw".to_vec()
            })
        );
        let (_, step) = Login::start(Some(b"bob")).unwrap();
        assert_eq!(step, LoginStep::Challenge("Password:"));
    }

    #[test]
    fn delays_double_per_failure_up_to_the_cap_and_are_forgotten() {
        assert_eq!(delay_for(0), Duration::ZERO);
        assert_eq!(delay_for(1), FIRST_DELAY);
        assert_eq!(delay_for(3), FIRST_DELAY * 4);
        assert_eq!(delay_for(40), MAX_DELAY);
        let mut delays = FailureDelays::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            delays.record_failure(a, t0);
        }
        assert_eq!(delays.delay(a, t0), FIRST_DELAY * 4);
        assert_eq!(delays.delay(b, t0), Duration::ZERO);
        assert_eq!(delays.delay(a, t0 + FORGET_AFTER), Duration::ZERO);
        delays.record_failure(a, t0 + FORGET_AFTER);
        assert_eq!(delays.delay(a, t0 + FORGET_AFTER), FIRST_DELAY);
        delays.record_success(a);
        assert_eq!(delays.delay(a, t0 + FORGET_AFTER), Duration::ZERO);
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let mut delays = FailureDelays::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            delays.record_failure(IpAddr::from(i.to_be_bytes()), t0 + Duration::from_nanos(i as u64));
        }
        assert!(delays.tracked() <= MAX_TRACKED);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_address_is_held_while_another_address_logs_in() {
        let auth = Authenticator::new(table());
        let bad: IpAddr = "198.51.100.7".parse().unwrap();
        let good: IpAddr = "198.51.100.8".parse().unwrap();
        // The first failure is answered at once; after it the address owes a delay.
        assert_eq!(
            auth.verify(Some(bad), "alice", b"wrong").await,
            Err(AuthError::Failed)
        );
        assert_eq!(
            auth.verify(Some(bad), "nobody", b"x").await,
            Err(AuthError::Failed)
        );
        assert_eq!(auth.delay_for_address(bad), FIRST_DELAY * 2);
        assert_eq!(auth.delay_for_address(good), Duration::ZERO);
        assert_eq!(auth.failed_logins(), 2);
        // Raise the bad address's delay to the cap by recording failures directly (each real
        // attempt would wait out the one before).
        for _ in 0..10 {
            auth.failures.lock().unwrap().record_failure(bad, Instant::now());
        }
        assert_eq!(auth.delay_for_address(bad), MAX_DELAY);
        let held = tokio::spawn({
            let auth = auth.clone();
            async move { auth.verify(Some(bad), "alice", b"right").await }
        });
        // The good client, started after the held one, completes while the held one still waits.
        assert_eq!(
            auth.verify(Some(good), "alice", b"right").await,
            Ok("alice".to_string())
        );
        assert!(!held.is_finished(), "the failing address was not held");
        held.abort();
        // A Unix-socket client (no address) is never delayed.
        assert_eq!(
            auth.verify(None, "alice", b"right").await,
            Ok("alice".to_string())
        );
    }

    #[test]
    fn reloaded_users_replace_the_old_ones() {
        let auth = Authenticator::new(table());
        assert!(auth.user_exists("alice"));
        auth.replace_users(UserTable::new(&[("bob".into(), cheap_hash("b"))]).unwrap());
        assert!(!auth.user_exists("alice"));
        assert!(auth.user_exists("bob"));
    }
}
