//! Why a reconciliation failed.

use kube::runtime::finalizer;

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the delete mover is still running or waits for a slot")]
    CleanupPending,
    #[error("the object changed since it was read")]
    Stale,
    #[error("deleting the archives failed: {0}")]
    CleanupFailed(String),
    #[error(transparent)]
    Finalizer(#[from] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The error that caused this one, through the finalizer's wrapping.
    pub fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.inner()
                }
                _ => self,
            },
            other => other,
        }
    }

    /// A metrics label.
    pub fn reason(&self) -> &'static str {
        match self.inner() {
            Error::Kube(_) => "KubeApi",
            Error::CleanupPending => "CleanupPending",
            Error::Stale => "Stale",
            Error::CleanupFailed(_) => "CleanupFailed",
            Error::Finalizer(_) => "Finalizer",
        }
    }
}
