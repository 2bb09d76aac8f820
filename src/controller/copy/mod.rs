//! How a Snapshot's movers reach each node's data (`spec.copyMethod`), one file a method:
//! [`direct`] reads the live claim, [`stop`] the claim of a stopped StatefulSet, [`clone`] a
//! clone of it, [`snapshot`] a claim made from its VolumeSnapshot, [`qdrant`] no claim: the
//! snapshot each Qdrant pod makes through its API. A method prepares a node
//! before its mover takes a slot, names the claim the mover reads, and releases what it made
//! once the node's archive is done or the Snapshot goes. A new method is one file here and
//! a variant of [`CopyMethod`] that [`of`] maps to it.

pub mod clone;
pub mod direct;
mod method;
pub mod qdrant;
pub mod snapshot;
pub mod stop;

pub use method::{Endpoint, Method, Prepared, ReadFrom};

use crate::api::snapshot::CopyMethod;

/// The copy method a Snapshot names.
pub fn of(method: CopyMethod) -> &'static dyn Method {
    match method {
        CopyMethod::Direct => &direct::Direct,
        CopyMethod::Stop => &stop::Stop,
        CopyMethod::Clone => &clone::Cloned,
        CopyMethod::Snapshot => &snapshot::FromVolumeSnapshot,
        CopyMethod::QdrantApi => &qdrant::ThroughApi,
    }
}
