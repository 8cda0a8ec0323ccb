//! Test support, compiled only with the `fixtures` feature (which the workspace's crates enable for their
//! tests through `[dev-dependencies]`, never for a build): the one order draft that unit and integration
//! tests across the workspace build their orders from, and the one accepted [`OrderRecord`] made of it, so
//! that a change to either is made once.
//!
//! Not part of the API. It panics on literals that do not parse, which would be a bug in this file.
#![allow(clippy::expect_used)]

use crate::domain::{
    Address, Channel, Contact, Currency, FulfillmentState, NodeId, OrderDraft, OrderId, OrderLine, Sku,
};
use crate::records::{FulfillmentLine, OrderRecord};

/// A `web` order `external_ref` of one line, `qty` × `sku` at 1.00 EUR, shipped to a valid address near
/// Berlin (name `A`, line `1`, city `B`, postcode `1`, `DE`, 52°N 13°E), with no contact.
pub fn draft(external_ref: &str, sku: &Sku, qty: u32) -> OrderDraft {
    OrderDraft {
        external_ref: external_ref.into(),
        channel: Channel::parse("web").expect("`web` is a valid channel"),
        lines: vec![OrderLine {
            sku: sku.clone(),
            qty,
            unit_price_minor: 100,
            currency: Currency::parse("EUR").expect("EUR is an active ISO 4217 code"),
        }],
        ship_to: Address {
            name: "A".into(),
            line1: "1".into(),
            line2: None,
            city: "B".into(),
            postcode: "1".into(),
            country: "DE".into(),
            lat: 52.0,
            lon: 13.0,
        },
        contact: Contact::default(),
    }
}

/// Order `id`, accepted at `site` at 1 ms and not picked yet: the [`draft`] of one line `qty` × `sku`
/// (`external_ref` = the id), with its fulfillment line.
pub fn accepted(id: OrderId, site: &NodeId, sku: &Sku, qty: u32) -> OrderRecord {
    OrderRecord {
        order: draft(id.as_str(), sku, qty),
        id,
        site: site.clone(),
        status: FulfillmentState::Accepted,
        lines: vec![FulfillmentLine { sku: sku.clone(), qty, picked: None, shipped: 0, returned: 0 }],
        wave: None,
        parcels: None,
        shipment: None,
        returns: vec![],
        timeline: vec![],
        created_at_ms: 1,
    }
}
