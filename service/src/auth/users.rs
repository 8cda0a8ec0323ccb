//! The people who sign in to the screens: a name, a role and an argon2id hash of a password (or, for warehouse
//! staff, a PIN), kept in the same file as the API keys (`DATA_DIR/keys.json`, [`super::keys`]) so that one
//! lock, one durable write and one reload cover both, and `oms users` works like `oms keys`.
//!
//! A password is at least [`PASSWORD_CHARS_MIN`] characters. A PIN (4 to 12 digits, `staff` only: a picker
//! signs in on a shared phone with gloves on) is weak against anyone holding the file, so the file is `0600`
//! and sign-in attempts are limited per user ([`super::session`]). Disabling a user keeps the entry, so the
//! audit trail's names stay explained, and ends their sessions at the next reload.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use serde::{Deserialize, Serialize};

use super::keys::{self, KeyError, Role};

/// Shortest password, characters.
pub const PASSWORD_CHARS_MIN: usize = 10;
/// Longest password, bytes (argon2 takes any length; a bound keeps a sign-in's cost bounded).
pub const PASSWORD_BYTES_MAX: usize = 128;
/// Digits of a PIN.
pub const PIN_DIGITS: std::ops::RangeInclusive<usize> = 4..=12;
/// Users a file may hold, disabled ones included.
pub const USERS_MAX: usize = 10_000;
/// Longest stored hash, bytes (a PHC string of argon2id is about 100).
const HASH_BYTES_MAX: usize = 256;

/// One user as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// The sign-in name, unique among live users; also the actor's name in the audit trail (`user:<name>`).
    pub name: String,
    /// What the user may do (`channel` and `monitor` are for keys, not people).
    pub role: Role,
    /// The argon2id hash of the password or PIN, as a PHC string.
    pub password_hash: String,
    /// Whether the secret is a PIN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin: bool,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was disabled, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at_ms: Option<u64>,
}

impl UserRecord {
    /// Whether the user may sign in.
    pub fn live(&self) -> bool {
        self.disabled_at_ms.is_none()
    }
}

/// What `oms users create` asks for.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The sign-in name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// The password or PIN.
    pub secret: String,
    /// Whether `secret` is a PIN.
    pub pin: bool,
}

/// Checks what serde cannot: names, roles, hashes and counts.
pub(crate) fn validate(users: &[UserRecord]) -> Result<(), String> {
    if users.len() > USERS_MAX {
        return Err(format!("{} users, more than the {USERS_MAX} allowed", users.len()));
    }
    let mut live = std::collections::HashSet::new();
    for u in users {
        keys::check_name(&u.name).map_err(|e| e.to_string())?;
        check_role(u.role, u.pin).map_err(|e| format!("user {:?}: {e}", u.name))?;
        if u.password_hash.len() > HASH_BYTES_MAX || PasswordHash::new(&u.password_hash).is_err() {
            return Err(format!("user {:?}: password_hash is not a PHC string", u.name));
        }
        if u.live() && !live.insert(u.name.as_str()) {
            return Err(format!("two live users are named {:?}", u.name));
        }
    }
    Ok(())
}

fn check_role(role: Role, pin: bool) -> Result<(), KeyError> {
    match role {
        Role::Channel | Role::Monitor | Role::Supplier => {
            Err(KeyError::Invalid(format!("{role} is a role for API keys; a user is staff, planner, service or admin")))
        }
        r if pin && r != Role::Staff => {
            Err(KeyError::Invalid(format!("a PIN is for staff only; {r} needs a password")))
        }
        _ => Ok(()),
    }
}

fn check_secret(secret: &str, pin: bool) -> Result<(), KeyError> {
    if pin {
        if !PIN_DIGITS.contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyError::Invalid(format!("a PIN is {} to {} digits", PIN_DIGITS.start(), PIN_DIGITS.end())));
        }
    } else if secret.chars().count() < PASSWORD_CHARS_MIN || secret.len() > PASSWORD_BYTES_MAX {
        return Err(KeyError::Invalid(format!(
            "a password is {PASSWORD_CHARS_MIN} characters to {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// argon2id with the crate's defaults (OWASP's minimum: 19 MiB, 2 passes, 1 lane).
fn argon2() -> Argon2<'static> {
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, Params::default())
}

/// The PHC string of `secret` under a fresh random salt.
pub fn hash_secret(secret: &str) -> Result<String, KeyError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| KeyError::Invalid(format!("salt: {e}")))?;
    argon2()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| KeyError::Invalid(format!("cannot hash the password: {e}")))
}

/// Whether `secret` matches the PHC string `hash` (argon2 compares in constant time).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    if secret.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|h| argon2().verify_password(secret.as_bytes(), &h).is_ok())
}

/// A hash of nothing anyone types, checked against when the name is unknown so that a wrong name takes as
/// long as a wrong password (names cannot be probed by timing).
pub(crate) fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_secret("decoy password that is never used").unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$qE6VTpt3w8eTqnr+Sb3LoWpWdXQ1V8eI4V0Lq7Q1yqU".into()
        })
    })
}

/// Creates a user in `dir`'s key file.
pub fn create(dir: &std::path::Path, new: NewUser, now_ms: u64) -> Result<UserRecord, KeyError> {
    keys::check_name(&new.name)?;
    check_role(new.role, new.pin)?;
    check_secret(&new.secret, new.pin)?;
    let password_hash = hash_secret(&new.secret)?;
    keys::change(dir, |file| {
        if file.users.iter().any(|u| u.live() && u.name == new.name) {
            return Err(KeyError::Invalid(format!("a live user named {:?} exists; disable it first", new.name)));
        }
        if file.users.len() >= USERS_MAX {
            return Err(KeyError::Invalid(format!("the file holds {USERS_MAX} users, the most it may")));
        }
        let user = UserRecord {
            name: new.name,
            role: new.role,
            password_hash,
            pin: new.pin,
            created_at_ms: now_ms,
            disabled_at_ms: None,
        };
        file.users.push(user.clone());
        Ok(user)
    })
}

/// Disables the live user named `name`; their sessions end at the process's next reload of the file.
pub fn disable(dir: &std::path::Path, name: &str, now_ms: u64) -> Result<UserRecord, KeyError> {
    keys::change(dir, |file| {
        let user = file
            .users
            .iter_mut()
            .find(|u| u.live() && u.name == name)
            .ok_or_else(|| KeyError::Invalid(format!("no live user is named {name:?}")))?;
        user.disabled_at_ms = Some(now_ms);
        Ok(user.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, role: Role, secret: &str, pin: bool) -> NewUser {
        NewUser { name: name.into(), role, secret: secret.into(), pin }
    }

    #[test]
    fn create_verify_disable_and_the_file_keeps_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let u = create(dir.path(), new("ana", Role::Staff, "4711", true), 1).unwrap();
        let p = create(dir.path(), new("per", Role::Planner, "correct horse battery", false), 2).unwrap();
        assert!(verify_secret("4711", &u.password_hash));
        assert!(!verify_secret("4712", &u.password_hash));
        assert!(verify_secret("correct horse battery", &p.password_hash));
        let text = std::fs::read_to_string(keys::keys_path(dir.path())).unwrap();
        assert!(!text.contains("correct horse"), "only the hash is stored");
        let f = keys::read(dir.path()).unwrap();
        assert_eq!(f.users.len(), 2);
        assert!(f.keys.is_empty());
        let d = disable(dir.path(), "ana", 3).unwrap();
        assert_eq!(d.disabled_at_ms, Some(3));
        assert!(!keys::read(dir.path()).unwrap().users[0].live());
        // The name is free again once disabled.
        create(dir.path(), new("ana", Role::Staff, "1234", true), 4).unwrap();
        assert!(disable(dir.path(), "nobody", 5).is_err());
    }

    #[test]
    fn refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), new("ana", Role::Staff, "4711", true), 1).unwrap();
        let before = std::fs::read(keys::keys_path(dir.path())).unwrap();
        for (bad, why) in [
            (new("ana", Role::Staff, "9999", true), "name taken"),
            (new("bo", Role::Planner, "4711", true), "PIN for a planner"),
            (new("bo", Role::Staff, "47a1", true), "PIN with a letter"),
            (new("bo", Role::Staff, "123", true), "PIN too short"),
            (new("bo", Role::Admin, "short", false), "password too short"),
            (new("bo", Role::Channel, "long enough password", false), "channel is for keys"),
            (new("bo", Role::Monitor, "long enough password", false), "monitor is for keys"),
            (new("b o", Role::Staff, "1234", true), "bad name"),
            (new("bo", Role::Admin, &"x".repeat(PASSWORD_BYTES_MAX + 1), false), "password too long"),
        ] {
            assert!(create(dir.path(), bad, 2).is_err(), "{why}");
        }
        assert_eq!(std::fs::read(keys::keys_path(dir.path())).unwrap(), before);
    }

    #[test]
    fn a_file_with_a_bad_user_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            keys::keys_path(dir.path()),
            r#"{"version":1,"keys":[],"users":[{"name":"x","role":"staff","password_hash":"plain","created_at_ms":1}]}"#,
        )
        .unwrap();
        assert!(matches!(keys::read(dir.path()), Err(KeyError::Corrupt { .. })));
    }
}
