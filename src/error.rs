//! Public errors: small enums whose messages say what to change.

use std::fmt;

/// Why a tree could not be built or a call on it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeError {
    /// `TreeConfig::shards` was not a power of two in `1..=4096`.
    InvalidShards(usize),
    /// The tree already holds the most tenants it can intern.
    TooManyTenants {
        /// The capacity that was reached.
        limit: usize,
    },
    /// A tenant id that this tree never handed out.
    UnknownTenant(u32),
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::InvalidShards(n) => write!(
                f,
                "invalid shard count {n}: TreeConfig::shards must be a power of two between 1 and 4096"
            ),
            TreeError::TooManyTenants { limit } => write!(
                f,
                "this tree already interns {limit} tenants, its limit: remove unused tenants or split workers across models"
            ),
            TreeError::UnknownTenant(id) => write!(
                f,
                "tenant id {id} was not issued by this tree: get ids from Tree::tenant_id on the same tree"
            ),
        }
    }
}

impl std::error::Error for TreeError {}
