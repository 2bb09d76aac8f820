//! The interface of a copy method.

use async_trait::async_trait;

use crate::api::qdrant::{CaSecret, SecretKey};
use crate::api::snapshot::{ArchiveStatus, Snapshot};
use crate::controller::{Context, Error};
use crate::protocol::{EnvValue, QDRANT_API_KEY_ENV, QDRANT_CA_ENV, QdrantEndpoint};

/// Where a node's preparation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Its mover may start.
    Ready,
    /// Not yet: what it waits for.
    Waiting(String),
    /// It failed: why.
    Failed(String),
}

/// What a node's mover reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The node's own claim.
    Own,
    /// This claim, made for it (a clone).
    Claim(String),
    /// No claim: the snapshot Qdrant makes through its API.
    Api(Endpoint),
    /// None: why there is nothing to read.
    Nothing(String),
}

/// A Qdrant pod's REST API, as its mover reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// The Secret key of its api-key, if it has one.
    pub api_key: Option<SecretKey>,
    /// The Secret key of the CAs that sign its certificate, if given.
    pub ca: Option<CaSecret>,
    pub timeout_seconds: u64,
}

impl Endpoint {
    /// As a mover task takes it.
    pub fn task(&self) -> QdrantEndpoint {
        QdrantEndpoint {
            qdrant_url: self.url.clone(),
            qdrant_timeout: self.timeout_seconds,
        }
    }

    /// The mover's environment: the api-key and the CAs from their Secrets.
    pub fn env(&self) -> Vec<(String, EnvValue)> {
        let from =
            |var: &str, secret: &str, key: &str| (var.to_owned(), EnvValue::secret(secret, key));
        let key = (self.api_key.iter()).map(|s| from(QDRANT_API_KEY_ENV, &s.name, &s.key));
        let ca = (self.ca.iter()).map(|s| from(QDRANT_CA_ENV, &s.name, &s.key));
        key.chain(ca).collect()
    }
}

/// What a copy method does around each node's mover. Every step has a default that does
/// nothing: a method overrides what it needs.
#[async_trait]
pub trait Method: Send + Sync {
    /// Whether the workload is stopped for the time of the snapshot.
    fn stops_workload(&self) -> bool {
        false
    }

    /// The VolumeSnapshot the method makes of `node`'s claim, if it makes one.
    fn volume_snapshot(&self, _snap: &Snapshot, _node: &str) -> Option<String> {
        None
    }

    /// Makes what the node needs before its mover takes a slot.
    async fn prepare(
        &self,
        _ctx: &Context,
        _snap: &Snapshot,
        _archive: &ArchiveStatus,
    ) -> Result<Prepared, Error> {
        Ok(Prepared::Ready)
    }

    /// What the node's mover reads.
    async fn source_claim(
        &self,
        _ctx: &Context,
        _snap: &Snapshot,
        _archive: &ArchiveStatus,
    ) -> Result<ReadFrom, Error> {
        Ok(ReadFrom::Own)
    }

    /// Deletes what was made for the node's mover.
    async fn release(&self, _ctx: &Context, _snap: &Snapshot, _node: &str) -> Result<(), Error> {
        Ok(())
    }
}
