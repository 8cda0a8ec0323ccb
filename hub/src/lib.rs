//! The hub. Channel intake, routing and escrow arrive with the hub issues; for now only the crate exists.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
