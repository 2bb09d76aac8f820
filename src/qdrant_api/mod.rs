//! Qdrant's REST API: the calls snapshots need ([`Qdrant`]), and a download checked against
//! what Qdrant said of it ([`Verified`]).

mod client;
mod verify;

pub use client::{Access, ApiError, Described, Qdrant, Scope, parse_url, random_hex};
pub use verify::Verified;
