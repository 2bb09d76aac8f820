//! Why a resource cannot be acted on as it is.

use crate::engine::name::NameError;

/// What admission found: the value to act on, or why the resource cannot be acted on.
pub type Admitted<T> = Result<T, Invalid>;

/// Why a resource cannot be acted on as it is: said in its status (`Ready=False`, reason
/// `InvalidSpec`) and not tried again until the resource changes. Each variant carries what
/// the message names.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{field}: set exactly one of {one} and {other}")]
    ExactlyOne {
        field: &'static str,
        one: &'static str,
        other: &'static str,
    },
    #[error("{field} {path:?} leaves the volume: it must not contain '..'")]
    LeavesVolume { field: &'static str, path: String },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{what} needs {needs}")]
    Needs {
        what: &'static str,
        needs: &'static str,
    },
    #[error("ttl {ttl:?} is not a duration ({why}): give one such as 72h, 30d or 1h30m")]
    Ttl { ttl: String, why: String },
    #[error("checksum {0:?} is not 64 lowercase hex digits")]
    Checksum(String),
    #[error("{0}")]
    Location(String),
    #[error("{0}")]
    Schedule(String),
    #[error("the name {0:?} is longer than 63 characters: it labels the Snapshots")]
    LongName(String),
    #[error("template: {0}")]
    Template(Box<Invalid>),
    #[error(
        "storage.s3.endpointUrl {endpoint} is not one the operator allows (allowedS3Endpoints: \
         {allowed}); ask the operator's administrator"
    )]
    Endpoint { endpoint: String, allowed: String },
    #[error(
        "moverSecurityContext.runAsUser 0 runs the movers as root, which the operator's \
         configuration does not allow (mover.allowRoot)"
    )]
    RootMovers,
    #[error(
        "location {location} is outside this namespace's part of the default storage \
         (s3://{bucket}/{prefix}/)"
    )]
    OutsideNamespace {
        location: String,
        bucket: String,
        prefix: String,
    },
    #[error(
        "location {location} is outside the storage's bucket: name the credentials for bucket \
         {bucket} in spec.storage.s3.credentialsSecret (the operator's and the nodes' own are \
         never used for another bucket)"
    )]
    OtherBucket { location: String, bucket: String },
    #[error("no storage: set spec.storage, or defaultStorage in the operator's configuration")]
    NoStorage,
    #[error("{kind} {name} not found in {namespace}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    #[error("StatefulSet {sts} has no volume claim template {template:?} (it has: {has})")]
    NoClaimTemplate {
        sts: String,
        template: String,
        has: String,
    },
    #[error("StatefulSet {0} has no replicas")]
    NoReplicas(String),
    #[error("Snapshot {0} failed; nothing to restore")]
    SourceFailed(String),
}

impl Invalid {
    /// The same, said of a schedule's Snapshot template.
    pub fn in_template(self) -> Self {
        Invalid::Template(Box::new(self))
    }
}
