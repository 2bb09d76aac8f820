//! The snapshot engine: tar archives of a storage directory (or one collection of it), and
//! their restore with priorities. Blocking code with no knowledge of Kubernetes or of where
//! archives are stored; `pipe` joins it to async storage.

pub mod apply;
pub mod archive;
pub mod arrange;
pub mod flush;
pub mod limits;
pub mod manifest;
pub mod name;
pub mod pipe;
pub mod qdrant;
pub mod readahead;
pub mod restore;
pub mod stage;
pub mod tarwrite;
pub mod untar;
pub mod workspace;

/// Directory inside a storage directory reserved for restores in progress; never archived.
pub const WORKSPACE_DIR: &str = ".snapshot-operator";
