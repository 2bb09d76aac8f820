//! What every reconciler shares: the [`Context`] of a reconciliation, its [`Error`], the
//! [`Reconciled`] trait and the driver that runs it behind the finalizer, status writing,
//! why a resource cannot be acted on ([`Invalid`]) and the spec checks several share, and the
//! object helpers (`create_if_absent`, `delete_if_there`).

mod admission;
mod context;
mod error;
mod invalid;
mod objects;
mod reconciled;
mod spec;

pub use admission::trusted;
pub use context::{Clock, Context, Wake};
pub use error::Error;
pub use invalid::{Admitted, Invalid};
pub use objects::{create_if_absent, delete_if_there, delete_named, patch_status};
pub use reconciled::{Reconciled, error_policy, reconcile, reject, resource_label, write_status};
pub use spec::{
    Shape, archive_key, effective_storage, inside_volume, validate_qdrant, validate_storage,
    workload_shape,
};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "snapshot-operator";
/// The finalizer on resources whose cleanup the operator owes.
pub const FINALIZER: &str = "snapshot-operator.dev/cleanup";
