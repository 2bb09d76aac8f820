//! The archives a SnapshotRestore reads: its location, or its Snapshot's archives once that
//! Snapshot has finished.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::plan::SourceArchive;
use super::validate::{Origin, origin};
use crate::api::restore::SnapshotRestore;
use crate::api::snapshot::{ArchivePhase, Encryption, Phase, Snapshot, Storage};
use crate::controller::kernel::{Admitted, Invalid, archive_key, effective_storage};
use crate::controller::{Context, Error};

/// The archives a restore reads, whether they are of a whole storage, the storage they are
/// in.
pub struct Found {
    pub archives: Vec<SourceArchive>,
    pub full: bool,
    pub storage: Option<Storage>,
    /// The Secret whose identities read the archives, when one is named.
    pub encryption: Option<Encryption>,
}

/// Where a restore's archives stand.
pub enum Sources {
    Found(Box<Found>),
    /// Not yet (the source Snapshot is still running): what it waits for.
    Waiting(String),
}

/// The one archive of a restore from a location (pure).
fn at_location(restore: &SnapshotRestore, location: &str, storage: Option<Storage>) -> Found {
    let archive = SourceArchive {
        node: String::new(),
        location: location.to_owned(),
        checksum: restore.spec.checksum.clone(),
        shown: None,
    };
    Found {
        archives: vec![archive],
        full: restore.spec.collection.is_none(),
        storage,
        encryption: restore.spec.encryption.clone(),
    }
}

/// The archives to restore, or why there never will be any.
pub async fn archives(
    restore: &SnapshotRestore,
    ctx: &Context,
) -> Result<Admitted<Sources>, Error> {
    let ns = restore.namespace().unwrap_or_default();
    let spec = &restore.spec;
    let reference = match origin(&spec.source) {
        Ok(Origin::Snapshot(reference)) => reference,
        Ok(Origin::Location(location)) => {
            let storage = spec
                .storage
                .clone()
                .or_else(|| ctx.config.default_storage_for(&ns));
            return Ok(Ok(Sources::Found(Box::new(at_location(
                restore, location, storage,
            )))));
        }
        Err(why) => return Ok(Err(why)),
    };
    // From the store; a Snapshot not there yet (the store still filling) is looked up.
    let cached = ctx
        .cluster
        .snapshots
        .get(&ObjectRef::new(&reference.name).within(&ns));
    let found = match cached {
        Some(snap) => Some(snap),
        None => Api::<Snapshot>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&reference.name)
            .await?
            .map(Arc::new),
    };
    let Some(snap) = found else {
        return Ok(Err(Invalid::NotFound {
            kind: "Snapshot",
            name: reference.name.clone(),
            namespace: ns,
        }));
    };
    let status = snap.status.clone().unwrap_or_default();
    match status.phase {
        Some(Phase::Succeeded) => {}
        Some(Phase::Failed) => {
            return Ok(Err(Invalid::SourceFailed(reference.name.clone())));
        }
        _ => {
            return Ok(Ok(Sources::Waiting(format!(
                "waiting for Snapshot {} to finish",
                reference.name
            ))));
        }
    }
    let archives = status
        .archives
        .iter()
        .filter(|a| a.phase == ArchivePhase::Succeeded)
        .filter_map(|a| {
            Some(SourceArchive {
                node: a.node.clone(),
                location: archive_key(&snap.spec, a)?,
                checksum: a.checksum.clone(),
                shown: a.location.clone(),
            })
        })
        .collect();
    let full = snap.spec.collection.is_none() && spec.collection.is_none();
    let storage = effective_storage(&snap, ctx.config.default_storage_for(&ns).as_ref());
    // The restore's own Secret, else the one the Snapshot encrypted its archives to.
    let encryption = (spec.encryption.clone()).or_else(|| snap.spec.encryption.clone());
    Ok(Ok(Sources::Found(Box::new(Found {
        archives,
        full,
        storage,
        encryption,
    }))))
}
