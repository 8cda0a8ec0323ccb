//! What a store restored from a backup does once before it takes orders again (`oms restore`).

use super::tables::SEQ_ORDER;
use super::writer::{Apply, Tx};
use super::{Command, Limits, StoreError};

/// Order numbers a restored node skips: the orders it took after the backup may live on at the hub (synced
/// before the node was lost), and a new order must never take one of their ids. A million is more than a
/// site takes between two backups.
pub const RESTORE_ORDER_IDS_SKIPPED: u64 = 1_000_000;

/// Moves the order sequence past every id the node may have given out after the backup it was restored
/// from. Answers the next order number.
#[derive(Debug, Clone, Copy)]
pub struct SkipOrderIds {
    /// How many order numbers to skip.
    pub ids: u64,
}

impl Command for SkipOrderIds {
    type Reply = u64;
}

impl Apply for SkipOrderIds {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<u64, StoreError> {
        let delta = i64::try_from(self.ids).map_err(|_| StoreError::Corrupt {
            table: "meta",
            detail: format!("cannot skip {} order numbers", self.ids),
        })?;
        Ok(tx.bump(SEQ_ORDER, delta)?.saturating_add(1))
    }
}
