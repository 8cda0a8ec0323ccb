//! Shared types of oms: the domain model (IDs, orders, fulfillment states, stock movements) used by the node,
//! the hub and the CLI, plus the wire format and the sans-IO sync state machine.
//!
//! This crate never touches a socket, a clock or the disk: callers pass times in, and bytes in and out.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

pub mod domain;
pub mod escrow;
#[cfg(feature = "fixtures")]
#[doc(hidden)]
pub mod fixtures;
pub mod generations;
pub mod records;
pub mod schema;
pub mod shipping;
pub mod sync;
pub mod wire;
