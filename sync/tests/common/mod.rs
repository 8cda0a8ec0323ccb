//! What the sync integration tests share.

use oms_protocol::sync::automerge::ChangeHash;
use oms_protocol::wire::{DocId, PeerId};
use oms_sync::{Access, DocDb};

/// Both sides see every document (the node's and the hub's policies are tested elsewhere).
pub struct Everything;

impl Access for Everything {
    fn entitled(&self, _: &DocDb, _: &PeerId, _: &DocId) -> bool {
        true
    }
    fn docs_for(&self, db: &DocDb, _: &PeerId) -> Vec<DocId> {
        db.ids().collect()
    }
    fn manifest_heads(&self, db: &mut DocDb, _: &PeerId) -> Vec<(DocId, Vec<ChangeHash>)> {
        let ids: Vec<DocId> = db.ids().collect();
        ids.into_iter().filter_map(|d| db.heads(&d).map(|h| (d, h))).collect()
    }
}
