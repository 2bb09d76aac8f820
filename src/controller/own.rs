//! The default storage as the operator reaches it itself: with its own credentials (its
//! environment: the chart's `catalogImport.credentialsSecret`, or the pod's identity), never
//! a Secret read through the API. The catalog import reads it; with `deleteThroughOperator`
//! the operator deletes a deleted Snapshot's archives there itself, with no delete mover.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::S3Config;
use crate::controller::config::OperatorConfig;
use crate::storage::s3::{S3Storage, prefix_of};
use crate::storage::{Storage, StorageError};

/// Connects to the default storage of a namespace (`None`: all of it), when the operator
/// reaches it itself.
pub type OwnStorage = Arc<
    dyn Fn(Option<String>) -> BoxFuture<'static, Option<Result<Box<dyn Storage>, StorageError>>>
        + Send
        + Sync,
>;

/// The operator's own way to the default storage of `config`: none unless it is S3.
pub fn own_storage(config: &OperatorConfig) -> OwnStorage {
    let config = config.clone();
    Arc::new(move |namespace| {
        let config = config.clone();
        Box::pin(async move {
            let s3 = connect(&config, namespace.as_deref()).await?;
            Some(s3.map(|s| Box::new(s) as Box<dyn Storage>))
        })
    })
}

/// The default S3 storage of `namespace` (`None`: all of it, below the configured prefix).
pub async fn connect(
    config: &OperatorConfig,
    namespace: Option<&str>,
) -> Option<Result<S3Storage, StorageError>> {
    let storage = match namespace {
        Some(ns) => config.default_storage_for(ns)?,
        None => config.default_storage.clone()?,
    };
    let s3 = storage.s3.as_ref()?;
    let settings = S3Config {
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        endpoint_url: s3.endpoint_url.clone(),
        force_path_style: s3.force_path_style,
        ..S3Config::default()
    };
    let prefix = prefix_of(s3.prefix.as_deref().unwrap_or_default());
    Some(S3Storage::connect(&settings, prefix).await)
}
