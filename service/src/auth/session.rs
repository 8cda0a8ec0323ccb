//! Signed-in sessions of the screens (`/ui/…`): a random 256-bit token in an `HttpOnly; SameSite=Strict`
//! cookie, of which the process keeps only the SHA-256, the user, a CSRF token for the forms, and when it
//! started and was last used.
//!
//! Sessions live in memory: a restart signs everyone out, which a warehouse notices as one more sign-in and
//! which keeps a copied data directory from carrying live sessions. A session ends at sign-out, after
//! `session_idle_ms` without a request, after `session_max_ms` in all, when its user is disabled or changes
//! role (checked at every request against the user list of the last reload), and, past `sessions_max`, the
//! one idle longest goes first. Wrong passwords are limited per user name: after `sign_in_failures_max` in a
//! `sign_in_lockout_ms` window that name is refused until the window passes, whoever asks (a PIN has only
//! 10,000 values at 4 digits).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::keys::{self, Role};
use super::{Auth, Principal, users};
use crate::lock;

/// The cookie that carries a session token.
pub const SESSION_COOKIE: &str = "oms_session";
/// User names whose failed sign-ins are remembered; past it the oldest windows are forgotten.
const FAILURE_NAMES_MAX: usize = 4_096;

/// A live session as the process holds it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    user: String,
    role: Role,
    csrf: String,
    started_ms: u64,
    seen_ms: u64,
}

/// The signed-in user of a screen request, which [`super::authorize`] puts on the request.
#[derive(Debug, Clone, Serialize)]
pub struct UiSession {
    /// Who is signed in.
    pub user: String,
    /// Their role.
    pub role: Role,
    /// The token every form of this session must carry.
    pub csrf: String,
}

/// A user as the process holds it (from the key file's last reload).
#[derive(Debug, Clone)]
pub(crate) struct UserLive {
    pub(crate) role: Role,
    pub(crate) hash: String,
}

/// Why a sign-in failed. Both wrong names and wrong secrets are [`SignInError::Wrong`], so names cannot be
/// probed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The name or the secret is wrong.
    #[error("the name or the password is wrong")]
    Wrong,
    /// Too many wrong attempts for this name lately.
    #[error("too many wrong attempts for this name; try again in {retry_after_s} s")]
    Locked {
        /// Seconds until the name may try again.
        retry_after_s: u64,
    },
}

/// A session just made: the token goes into the cookie and is not kept.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie's value.
    pub token: String,
    /// Who signed in.
    pub session: UiSession,
}

impl Auth {
    /// Checks `name` and `secret` and starts a session. Slow by design (argon2): call it off the async
    /// threads.
    pub fn sign_in(&self, name: &str, secret: &str, now_ms: u64) -> Result<NewSession, SignInError> {
        let window = self.cfg.sign_in_lockout_ms;
        {
            let failures = lock(&self.failures);
            if let Some((n, since)) = failures.get(name)
                && *n >= self.cfg.sign_in_failures_max
                && now_ms.saturating_sub(*since) < window
            {
                let left = window - now_ms.saturating_sub(*since);
                return Err(SignInError::Locked { retry_after_s: left.div_ceil(1_000).max(1) });
            }
        }
        let user = self.current_users().get(name).cloned();
        let ok = match &user {
            Some(u) => users::verify_secret(secret, &u.hash),
            None => {
                // As slow as a real check.
                let _ = users::verify_secret(secret, users::decoy_hash());
                false
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            let mut failures = lock(&self.failures);
            if failures.len() >= FAILURE_NAMES_MAX && !failures.contains_key(name) {
                failures.retain(|_, (_, since)| now_ms.saturating_sub(*since) < window);
                if failures.len() >= FAILURE_NAMES_MAX
                    && let Some(oldest) = failures.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| k.clone())
                {
                    failures.remove(&oldest);
                }
            }
            let e = failures.entry(name.to_owned()).or_insert((0, now_ms));
            if now_ms.saturating_sub(e.1) >= window {
                *e = (0, now_ms);
            }
            e.0 += 1;
            self.stats.sign_in_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(SignInError::Wrong);
        };
        lock(&self.failures).remove(name);
        let token = keys::new_token();
        let csrf = keys::hex(&rand::random::<[u8; 32]>());
        let session =
            Session { user: name.to_owned(), role: user.role, csrf: csrf.clone(), started_ms: now_ms, seen_ms: now_ms };
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= self.cfg.sessions_max
            && let Some(idle) = sessions.iter().min_by_key(|(_, s)| s.seen_ms).map(|(k, _)| *k)
        {
            sessions.remove(&idle);
        }
        sessions.insert(keys::token_hash(&token), session);
        Ok(NewSession { token, session: UiSession { user: name.to_owned(), role: user.role, csrf } })
    }

    /// The live session of `token`, touched; `None` (and the session gone) if it expired or its user was
    /// disabled or changed role.
    pub fn session(&self, token: &str, now_ms: u64) -> Option<UiSession> {
        if !keys::token_well_formed(token) {
            return None;
        }
        let hash = keys::token_hash(token);
        let users = self.current_users();
        let mut sessions = lock(&self.sessions);
        let s = sessions.get_mut(&hash)?;
        let expired = now_ms.saturating_sub(s.seen_ms) > self.cfg.session_idle_ms
            || now_ms.saturating_sub(s.started_ms) > self.cfg.session_max_ms;
        let user_ok = users.get(&s.user).is_some_and(|u| u.role == s.role);
        if expired || !user_ok {
            sessions.remove(&hash);
            return None;
        }
        s.seen_ms = now_ms;
        Some(UiSession { user: s.user.clone(), role: s.role, csrf: s.csrf.clone() })
    }

    /// Ends the session of `token`, if there is one.
    pub fn sign_out(&self, token: &str) {
        if keys::token_well_formed(token) {
            lock(&self.sessions).remove(&keys::token_hash(token));
        }
    }

    /// Sessions held now (expired ones are dropped when next used or pushed out by new ones).
    pub fn sessions_live(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub(crate) fn current_users(&self) -> Arc<HashMap<String, UserLive>> {
        self.users.read().map(|u| u.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Users held in memory only, for tests: `(name, role, secret)`.
    pub fn with_users(self, list: &[(&str, Role, &str)]) -> Self {
        let map = list
            .iter()
            .filter_map(|(n, r, s)| Some(((*n).to_owned(), UserLive { role: *r, hash: users::hash_secret(s).ok()? })))
            .collect();
        *self.users.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(map);
        self
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for UiSession {
    type Rejection = crate::problem::Problem;

    /// The session [`super::authorize`] admitted; a screen reached without one (a bug) refuses.
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<UiSession>().cloned().ok_or_else(|| {
            crate::problem::Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "this screen is for people signed in; an API key cannot use it",
            )
        })
    }
}

impl UiSession {
    /// The principal the handlers see for this session.
    pub fn principal(&self) -> Principal {
        Principal { name: format!("user:{}", self.user), role: self.role, channel: None, supplier: None }
    }

    /// Whether `token` (from a form) is this session's CSRF token, compared in constant time.
    pub fn csrf_ok(&self, token: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The value of cookie `name` in `headers`, if present once or more (the first wins).
pub fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ANY_ROLE, Access, AuthConfig};

    fn auth(cfg: AuthConfig) -> Auth {
        Auth::in_memory(vec![], cfg, |_, _| Access::Roles(ANY_ROLE))
            .with_users(&[("ana", Role::Staff, "4711"), ("per", Role::Planner, "long password 1")])
    }

    #[test]
    fn sign_in_session_expiry_and_sign_out() {
        let cfg = AuthConfig { session_idle_ms: 1_000, session_max_ms: 5_000, ..AuthConfig::default() };
        let a = auth(cfg);
        let s = a.sign_in("ana", "4711", 0).unwrap();
        assert_eq!(s.session.role, Role::Staff);
        let seen = a.session(&s.token, 900).unwrap();
        assert!(seen.csrf_ok(&s.session.csrf));
        assert!(!seen.csrf_ok("x"));
        // Kept alive by use, but never past the absolute limit.
        for t in [1_800, 2_700, 3_600, 4_500] {
            assert!(a.session(&s.token, t).is_some(), "{t}");
        }
        assert!(a.session(&s.token, 5_100).is_none(), "past session_max_ms");
        assert_eq!(a.sessions_live(), 0);
        let s = a.sign_in("per", "long password 1", 0).unwrap();
        assert!(a.session(&s.token, 1_001).is_none(), "idle past session_idle_ms");
        let s = a.sign_in("per", "long password 1", 0).unwrap();
        a.sign_out(&s.token);
        assert!(a.session(&s.token, 1).is_none());
        assert!(a.session("not a token", 1).is_none());
    }

    #[test]
    fn wrong_names_and_secrets_look_alike_and_lock_the_name() {
        let cfg = AuthConfig { sign_in_failures_max: 3, sign_in_lockout_ms: 60_000, ..AuthConfig::default() };
        let a = auth(cfg);
        assert_eq!(a.sign_in("nobody", "4711", 0).unwrap_err(), SignInError::Wrong);
        for t in 0..3 {
            assert_eq!(a.sign_in("ana", "0000", t).unwrap_err(), SignInError::Wrong);
        }
        // Locked even with the right PIN, until the window passes.
        assert!(matches!(a.sign_in("ana", "4711", 10), Err(SignInError::Locked { retry_after_s: 60 })));
        assert!(a.sign_in("per", "long password 1", 10).is_ok(), "another name is not locked");
        assert!(a.sign_in("ana", "4711", 60_001).is_ok());
    }

    #[test]
    fn the_session_table_is_bounded() {
        let a = auth(AuthConfig { sessions_max: 3, ..AuthConfig::default() });
        let first = a.sign_in("ana", "4711", 0).unwrap();
        for t in 1..=3 {
            a.sign_in("ana", "4711", t).unwrap();
        }
        assert_eq!(a.sessions_live(), 3);
        assert!(a.session(&first.token, 4).is_none(), "the one idle longest went first");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(axum::http::header::COOKIE, "a=1; oms_session=tok".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
