//! Finding orders: the keys of the idempotency records and of the channels' index, the contact index that
//! customer service searches (e-mail, phone, the channel's reference), and the customers' tracking tokens.

use oms_protocol::domain::Channel;
use oms_service::auth::keys::hex;
use redb::{Database, ReadableDatabase};

use super::*;

/// The idempotency record's key: the order's channel, [`SCOPE_SEP`], the caller's key.
pub(super) fn scoped_key(channel: &Channel, key: &str) -> String {
    format!("{}{SCOPE_SEP}{key}", channel.as_str())
}

/// The index key of order `id` of `channel`.
pub(super) fn channel_key(channel: &Channel, id: &str) -> String {
    format!("{}{SCOPE_SEP}{id}", channel.as_str())
}

/// What a search for `query` looks up: an e-mail address (lower case), a phone number (its digits, at least
/// five) or a channel's order reference (as given), each as `<kind>:<value>`.
pub(super) fn search_terms(query: &str) -> Vec<String> {
    let q = query.trim();
    if q.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    if q.contains('@') {
        terms.push(email_term(q));
    }
    if q.chars().all(|c| c.is_ascii_digit() || " +-./()".contains(c)) {
        terms.extend(phone_term(q));
    }
    terms.push(ref_term(q));
    terms
}

/// The e-mail address as indexed and searched: trimmed, lower case.
fn email_term(email: &str) -> String {
    format!("email:{}", email.trim().to_lowercase())
}

/// The phone number as indexed and searched: its digits, if there are at least five.
fn phone_term(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 5).then(|| format!("phone:{digits}"))
}

/// The channel's order reference as indexed and searched: trimmed.
fn ref_term(external_ref: &str) -> String {
    format!("ref:{}", external_ref.trim())
}

/// The index keys of `draft`: its e-mail address, its phone number and its channel reference.
pub(crate) fn search_keys(draft: &oms_protocol::domain::OrderDraft, id: &str) -> Vec<String> {
    let email = draft.contact.email.as_deref().filter(|e| !e.trim().is_empty()).map(email_term);
    let phone = draft.contact.phone.as_deref().and_then(phone_term);
    email
        .into_iter()
        .chain(phone)
        .chain([ref_term(&draft.external_ref)])
        .map(|v| format!("{v}{SCOPE_SEP}{id}"))
        .collect()
}

/// Adds the orders of a file from before [`BY_CONTACT`] to it, once (one pass over every order).
pub(super) fn index_contacts_once(db: &Database) -> Result<(), IntakeError> {
    let r = db.begin_read()?;
    if r.open_table(META)?.get(BY_CONTACT_BUILT)?.is_some() {
        return Ok(());
    }
    let mut keys = Vec::new();
    for item in r.open_table(ORDERS)?.range::<&str>(..)? {
        let (k, v) = item?;
        keys.extend(search_keys(&decode_order(v.value())?.draft, k.value()));
    }
    drop(r);
    let w = db.begin_write()?;
    {
        let mut t = w.open_table(BY_CONTACT)?;
        for k in &keys {
            t.insert(k.as_str(), ())?;
        }
        w.open_table(META)?.insert(BY_CONTACT_BUILT, 1)?;
    }
    w.commit()?;
    Ok(())
}

/// A fresh tracking token: 32 bytes from the operating system's generator, in hex.
pub(super) fn new_tracking_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// Whether `token` has the shape of a tracking token (checked before any lookup).
pub fn tracking_token_well_formed(token: &str) -> bool {
    token.len() == TRACKING_TOKEN_HEX_LEN && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
