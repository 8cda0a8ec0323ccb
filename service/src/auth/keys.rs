//! API keys on disk: `DIR/keys.json` in a node's or the hub's data directory, written by `oms keys` and read
//! (and re-read when it changes) by the running process.
//!
//! A key is a random 256-bit token shown once, when it is created; the file keeps only its SHA-256, with a
//! name, a role, an optional channel scope (channel keys), an optional supplier scope (supplier keys) and an
//! optional rate. A plain hash (no salt, no slow KDF) is
//! enough: the token has 256 bits of entropy, so a stolen file gives nothing to guess. Revoking a key keeps
//! its entry (with `revoked_at_ms`) so the audit trail's key names stay explained.
//!
//! Writers (the CLI) take an exclusive lock on `DIR/keys.lock`, read, change, and replace the file
//! durably (temporary file, fsync, rename, fsync of the directory), so two `oms keys` at once cannot lose
//! either's change, and a process reading it sees the old or the new file, never half of one.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use oms_protocol::domain::{Channel, SupplierId};

/// The key file's name in a data directory.
pub use crate::storage::archive::KEYS_FILE;
/// The lock file writers hold while they change [`KEYS_FILE`].
const LOCK_FILE: &str = "keys.lock";
/// Keys a file may hold, revoked ones included.
pub const KEYS_MAX: usize = 10_000;
/// Largest key file read, bytes (10,000 keys take about 3 MB).
pub const KEYS_FILE_BYTES_MAX: u64 = 8 << 20;
/// Longest key name, bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Highest per-key rate that can be set, requests per second.
pub const RATE_PER_S_MAX: u32 = 1_000_000;
/// What every token starts with, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "oms_";
/// Hex digits after the prefix: 32 random bytes.
const TOKEN_HEX_LEN: usize = 64;

/// What a key may do. Each server maps its routes to the roles that may call them; `admin` may call all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A sales channel: creates orders and reads, cancels and returns only the orders of its channel.
    Channel,
    /// Warehouse staff (node): waves, picks, pack, ship, receipts, counts, adjustments, returns receipt.
    Staff,
    /// A supply planner (hub): stock, nodes, forecasts, replenishment; orders read-only.
    Planner,
    /// Customer service (hub): any order's cancel, return and refund, with a reason.
    Service,
    /// Metrics scraping only (`/metrics`).
    Monitor,
    /// Everything, keys and imports included.
    Admin,
    /// A supplier (hub): reads and confirms only its own purchase orders and announces ASNs against them;
    /// nothing else (routes that do not name the role refuse it, see `ANY_ROLE`).
    Supplier,
}

/// Every role, in the order `oms keys` lists them.
pub const ROLES: [Role; 7] =
    [Role::Channel, Role::Staff, Role::Planner, Role::Service, Role::Monitor, Role::Admin, Role::Supplier];

impl Role {
    /// The role's name, as the CLI and the key file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Channel => "channel",
            Role::Staff => "staff",
            Role::Planner => "planner",
            Role::Service => "service",
            Role::Monitor => "monitor",
            Role::Admin => "admin",
            Role::Supplier => "supplier",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        ROLES.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            KeyError::Invalid(format!(
                "unknown role {s:?}; one of {}",
                ROLES.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// One key as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// A name for people and the audit trail, unique among the file's live keys.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// The channel a `channel` key acts for (required for that role, refused for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// The supplier a `supplier` key acts for (required for that role, refused for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier: Option<SupplierId>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
    /// Its own sustained rate, requests per second (burst twice that); the server's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<u32>,
}

impl KeyRecord {
    /// Whether the key still works.
    pub fn live(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

/// The key file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Format version (1).
    pub version: u32,
    /// Every key, revoked ones included, in creation order.
    pub keys: Vec<KeyRecord>,
    /// The people who sign in to the screens, disabled ones included ([`super::users`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<super::users::UserRecord>,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid key file.
    #[error("{path} is not a valid key file: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A request to change the keys was refused.
    #[error("{0}")]
    Invalid(String),
}

/// Path of the key file in `dir`.
pub fn keys_path(dir: &Path) -> PathBuf {
    dir.join(KEYS_FILE)
}

/// SHA-256 of `token`, the form the file keeps.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two byte strings in time that depends on their lengths only (for secrets compared as they
/// are: a customer's tracking token, a form's token against its cookie).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses 64 hex digits.
fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `token` has the shape of a token: the prefix and 64 lower-case hex digits. Checked before hashing,
/// so garbage in an `Authorization` header costs nothing.
pub fn token_well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|h| {
        h.len() == TOKEN_HEX_LEN && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A fresh token: the prefix and 32 bytes from the operating system's generator, in hex (what [`create`]
/// records; a provisioner that hands the same key to several sites makes its tokens with it too).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex(&bytes))
}

pub(crate) fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "a key name is 1 to {NAME_BYTES_MAX} characters of a-z, A-Z, 0-9, '-', '_', '.'; got {name:?}"
        )))
    }
}

impl KeyFile {
    /// Checks what serde cannot: names, hashes, scopes, rates and counts.
    fn validate(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!("version {} is not supported (1 is)", self.version));
        }
        if self.keys.len() > KEYS_MAX {
            return Err(format!("{} keys, more than the {KEYS_MAX} allowed", self.keys.len()));
        }
        let mut live = std::collections::HashSet::new();
        for k in &self.keys {
            check_name(&k.name).map_err(|e| e.to_string())?;
            if unhex32(&k.sha256).is_none() {
                return Err(format!("key {:?}: sha256 is not 64 hex digits", k.name));
            }
            if (k.role == Role::Channel) != k.channel.is_some() {
                return Err(format!("key {:?}: a channel key names its channel and no other key does", k.name));
            }
            if (k.role == Role::Supplier) != k.supplier.is_some() {
                return Err(format!("key {:?}: a supplier key names its supplier and no other key does", k.name));
            }
            if k.rate_per_s.is_some_and(|r| r == 0 || r > RATE_PER_S_MAX) {
                return Err(format!("key {:?}: rate_per_s must be 1 to {RATE_PER_S_MAX}", k.name));
            }
            if k.live() && !live.insert(k.name.as_str()) {
                return Err(format!("two live keys are named {:?}", k.name));
            }
        }
        super::users::validate(&self.users)
    }

    /// The live keys with their token hashes.
    pub fn live_keys(&self) -> impl Iterator<Item = ([u8; 32], &KeyRecord)> {
        self.keys.iter().filter(|k| k.live()).filter_map(|k| unhex32(&k.sha256).map(|h| (h, k)))
    }
}

/// Reads the key file of `dir`; a missing file is an empty one.
pub fn read(dir: &Path) -> Result<KeyFile, KeyError> {
    let path = keys_path(dir);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KeyFile { version: 1, keys: Vec::new(), users: Vec::new() });
        }
        Err(source) => return Err(KeyError::Io { what: "cannot open", path, source }),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, KEYS_FILE_BYTES_MAX + 1), &mut text)
        .map_err(|source| KeyError::Io { what: "cannot read", path: path.clone(), source })?;
    if text.len() as u64 > KEYS_FILE_BYTES_MAX {
        return Err(KeyError::Corrupt { path, detail: format!("larger than {KEYS_FILE_BYTES_MAX} bytes") });
    }
    let parsed: KeyFile =
        serde_json::from_str(&text).map_err(|e| KeyError::Corrupt { path: path.clone(), detail: e.to_string() })?;
    parsed.validate().map_err(|detail| KeyError::Corrupt { path, detail })?;
    Ok(parsed)
}

/// Holds `dir`'s writer lock while `f` changes the key file, then writes the result durably.
pub(crate) fn change<T>(dir: &Path, f: impl FnOnce(&mut KeyFile) -> Result<T, KeyError>) -> Result<T, KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        what: "cannot create",
        path: dir.to_owned(),
        source,
    })?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| KeyError::Io { what: "cannot open", path: lock_path.clone(), source })?;
    lock.lock().map_err(|source| KeyError::Io { what: "cannot lock", path: lock_path, source })?;
    let mut file = read(dir)?;
    let out = f(&mut file)?;
    file.validate().map_err(KeyError::Invalid)?;
    let text = serde_json::to_vec_pretty(&file).map_err(|e| KeyError::Invalid(e.to_string()))?;
    write_durable(&keys_path(dir), &text)?;
    Ok(out)
}

/// Replaces `path` with `contents` (mode 0600): temporary file, fsync, rename, fsync of the directory.
fn write_durable(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    fn io<'p>(what: &'static str, p: &'p Path) -> impl FnOnce(std::io::Error) -> KeyError + 'p {
        move |source| KeyError::Io { what, path: p.to_owned(), source }
    }
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io("cannot create", &tmp))?;
    f.write_all(contents).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("cannot replace", path))?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io("cannot sync", parent))?;
    }
    Ok(())
}

/// What `oms keys create` asks for.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The channel of a `channel` key.
    pub channel: Option<Channel>,
    /// The supplier of a `supplier` key.
    pub supplier: Option<SupplierId>,
    /// Its own rate, requests per second.
    pub rate_per_s: Option<u32>,
}

/// Creates a key in `dir` and returns its token: the only time the token exists outside the caller's hands.
pub fn create(dir: &Path, new: NewKey, now_ms: u64) -> Result<String, KeyError> {
    let token = new_token();
    add_token(dir, &token, new, now_ms)?;
    Ok(token)
}

/// Records a key for a token made elsewhere (a secret store provisioning the same key to several sites, a
/// test harness). The token must have the shape [`create`] gives ([`token_well_formed`]).
pub fn add_token(dir: &Path, token: &str, new: NewKey, now_ms: u64) -> Result<(), KeyError> {
    if !token_well_formed(token) {
        return Err(KeyError::Invalid(format!("a token is {TOKEN_PREFIX} and 64 lower-case hex digits")));
    }
    check_name(&new.name)?;
    match (new.role, &new.channel) {
        (Role::Channel, None) => {
            return Err(KeyError::Invalid("a channel key needs --channel (the channel it sells for)".into()));
        }
        (role, Some(_)) if role != Role::Channel => {
            return Err(KeyError::Invalid(format!("--channel is only for channel keys, not {role}")));
        }
        _ => {}
    }
    match (new.role, &new.supplier) {
        (Role::Supplier, None) => {
            return Err(KeyError::Invalid("a supplier key needs --supplier (the supplier it acts for)".into()));
        }
        (role, Some(_)) if role != Role::Supplier => {
            return Err(KeyError::Invalid(format!("--supplier is only for supplier keys, not {role}")));
        }
        _ => {}
    }
    if new.rate_per_s.is_some_and(|r| r == 0 || r > RATE_PER_S_MAX) {
        return Err(KeyError::Invalid(format!("--rate-per-s must be 1 to {RATE_PER_S_MAX}")));
    }
    change(dir, |file| {
        if file.keys.iter().any(|k| k.live() && k.name == new.name) {
            return Err(KeyError::Invalid(format!("a live key named {:?} exists; revoke it first", new.name)));
        }
        if file.keys.len() >= KEYS_MAX {
            return Err(KeyError::Invalid(format!("the file holds {KEYS_MAX} keys, the most it may")));
        }
        let sha256 = hex(&token_hash(token));
        if file.keys.iter().any(|k| k.live() && k.sha256 == sha256) {
            return Err(KeyError::Invalid("a live key has this token already".into()));
        }
        file.keys.push(KeyRecord {
            name: new.name,
            role: new.role,
            channel: new.channel,
            supplier: new.supplier,
            sha256,
            created_at_ms: now_ms,
            revoked_at_ms: None,
            rate_per_s: new.rate_per_s,
        });
        Ok(())
    })
}

/// Revokes the live key named `name` in `dir`; a running process stops taking it at its next check.
pub fn revoke(dir: &Path, name: &str, now_ms: u64) -> Result<KeyRecord, KeyError> {
    change(dir, |file| {
        let key = file
            .keys
            .iter_mut()
            .find(|k| k.live() && k.name == name)
            .ok_or_else(|| KeyError::Invalid(format!("no live key is named {name:?}")))?;
        key.revoked_at_ms = Some(now_ms);
        Ok(key.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"), "the last byte differs");
        assert!(!ct_eq(b"xbc", b"abc"), "the first byte differs");
        assert!(!ct_eq(b"abc", b"abcd"), "a prefix");
        assert!(!ct_eq(b"abcd", b"abc"));
    }

    fn key(name: &str, role: Role, channel: Option<&str>) -> NewKey {
        NewKey {
            name: name.into(),
            role,
            channel: channel.map(|c| Channel::parse(c).unwrap()),
            supplier: None,
            rate_per_s: None,
        }
    }

    fn supplier_key(name: &str, role: Role, supplier: Option<&str>) -> NewKey {
        NewKey { supplier: supplier.map(|s| SupplierId::parse(s).unwrap()), ..key(name, role, None) }
    }

    /// A supplier key names its supplier; no other key does; the file keeps the scope and reads it back.
    #[test]
    fn supplier_keys_need_their_supplier_and_only_they_have_one() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), key("ops", Role::Admin, None), 1).unwrap();
        let before = std::fs::read(keys_path(dir.path())).unwrap();
        for bad in [
            supplier_key("acme", Role::Supplier, None),
            supplier_key("plan", Role::Planner, Some("acme")),
            NewKey {
                channel: Some(Channel::parse("web").unwrap()),
                ..supplier_key("acme", Role::Supplier, Some("acme"))
            },
        ] {
            assert!(matches!(create(dir.path(), bad.clone(), 2), Err(KeyError::Invalid(_))), "{bad:?}");
        }
        assert_eq!(std::fs::read(keys_path(dir.path())).unwrap(), before, "refusals change nothing");
        create(dir.path(), supplier_key("acme", Role::Supplier, Some("acme")), 3).unwrap();
        let f = read(dir.path()).unwrap();
        assert_eq!(f.keys[1].supplier.as_ref().map(|s| s.as_str()), Some("acme"));
        assert_eq!("supplier".parse::<Role>().unwrap(), Role::Supplier);
        // A file whose supplier key lost its scope is corrupt, not a key that sees every supplier.
        let text = std::fs::read_to_string(keys_path(dir.path())).unwrap().replace("\"supplier\": \"acme\",", "");
        std::fs::write(keys_path(dir.path()), text).unwrap();
        assert!(matches!(read(dir.path()), Err(KeyError::Corrupt { .. })));
    }

    #[test]
    fn create_list_revoke_round_trip_and_the_file_keeps_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let t = create(dir.path(), key("web", Role::Channel, Some("web")), 1).unwrap();
        assert!(token_well_formed(&t), "{t}");
        let t2 = create(dir.path(), key("ops", Role::Admin, None), 2).unwrap();
        assert_ne!(t, t2);
        let text = std::fs::read_to_string(keys_path(dir.path())).unwrap();
        assert!(!text.contains(&t[TOKEN_PREFIX.len()..]), "the token itself is never stored");
        let f = read(dir.path()).unwrap();
        assert_eq!(f.keys.len(), 2);
        assert_eq!(f.keys[0].sha256, hex(&token_hash(&t)));
        assert_eq!(f.live_keys().count(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys_path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let r = revoke(dir.path(), "web", 3).unwrap();
        assert_eq!(r.revoked_at_ms, Some(3));
        let f = read(dir.path()).unwrap();
        assert_eq!(f.live_keys().map(|(_, k)| k.name.as_str()).collect::<Vec<_>>(), ["ops"]);
        // The name is free again once revoked; the revoked entry stays for the audit trail.
        create(dir.path(), key("web", Role::Channel, Some("web")), 4).unwrap();
        assert_eq!(read(dir.path()).unwrap().keys.len(), 3);
    }

    #[test]
    fn bad_requests_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), key("ops", Role::Admin, None), 1).unwrap();
        let before = std::fs::read(keys_path(dir.path())).unwrap();
        for bad in [
            key("ops", Role::Staff, None),
            key("", Role::Staff, None),
            key("a b", Role::Staff, None),
            key(&"x".repeat(65), Role::Staff, None),
            key("web", Role::Channel, None),
            key("s", Role::Staff, Some("web")),
        ] {
            assert!(matches!(create(dir.path(), bad.clone(), 2), Err(KeyError::Invalid(_))), "{bad:?}");
        }
        let mut fast = key("fast", Role::Staff, None);
        fast.rate_per_s = Some(0);
        assert!(create(dir.path(), fast, 2).is_err());
        assert!(matches!(revoke(dir.path(), "nobody", 2), Err(KeyError::Invalid(_))));
        assert_eq!(std::fs::read(keys_path(dir.path())).unwrap(), before);
        assert!("root".parse::<Role>().is_err());
        assert_eq!("planner".parse::<Role>().unwrap(), Role::Planner);
    }

    #[test]
    fn a_corrupt_or_oversized_file_is_an_error_not_an_empty_key_set() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap().keys.len(), 0, "no file: no keys");
        std::fs::write(keys_path(dir.path()), b"{not json").unwrap();
        assert!(matches!(read(dir.path()), Err(KeyError::Corrupt { .. })));
        std::fs::write(keys_path(dir.path()), br#"{"version":2,"keys":[]}"#).unwrap();
        assert!(matches!(read(dir.path()), Err(KeyError::Corrupt { .. })));
        let twice = r#"{"version":1,"keys":[
            {"name":"a","role":"admin","sha256":"00000000000000000000000000000000000000000000000000000000000000aa","created_at_ms":1},
            {"name":"a","role":"staff","sha256":"00000000000000000000000000000000000000000000000000000000000000bb","created_at_ms":1}]}"#;
        std::fs::write(keys_path(dir.path()), twice).unwrap();
        assert!(matches!(read(dir.path()), Err(KeyError::Corrupt { .. })));
        std::fs::write(keys_path(dir.path()), vec![b' '; (KEYS_FILE_BYTES_MAX + 1) as usize]).unwrap();
        assert!(matches!(read(dir.path()), Err(KeyError::Corrupt { .. })));
        // A writer refuses to build on a corrupt file rather than replacing it.
        assert!(create(dir.path(), key("ops", Role::Admin, None), 1).is_err());
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let d = dir.path().to_owned();
                std::thread::spawn(move || create(&d, key(&format!("k{i}"), Role::Staff, None), i).unwrap())
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(read(dir.path()).unwrap().keys.len(), 8);
    }

    #[test]
    fn token_shape() {
        assert!(!token_well_formed("oms_"));
        assert!(!token_well_formed(&format!("oms_{}", "A".repeat(64))));
        assert!(!token_well_formed(&format!("xyz_{}", "a".repeat(64))));
        assert!(token_well_formed(&format!("oms_{}", "a".repeat(64))));
    }
}
