//! The set of keys this node trusts: fingerprint -> member node id.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use qu_core::{Fingerprint, NodeId};

/// Shared, replaceable trust set. The daemon replaces it whenever a new
/// `cluster.yaml` is applied; connections consult it for every message.
#[derive(Clone, Default, Debug)]
pub struct TrustStore {
    members: Arc<RwLock<HashMap<Fingerprint, NodeId>>>,
}

impl TrustStore {
    pub fn new(members: impl IntoIterator<Item = (Fingerprint, NodeId)>) -> Self {
        let store = Self::default();
        store.replace(members);
        store
    }

    /// Replaces the whole set (a new committed membership).
    pub fn replace(&self, members: impl IntoIterator<Item = (Fingerprint, NodeId)>) {
        let next: HashMap<_, _> = members.into_iter().collect();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// The member holding this key, if any.
    pub fn member(&self, fingerprint: &Fingerprint) -> Option<NodeId> {
        self.members.read().unwrap_or_else(|e| e.into_inner()).get(fingerprint).copied()
    }

    pub fn len(&self) -> usize {
        self.members.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
