//! The storage a configuration names.

use std::sync::Arc;

use super::local::LocalStorage;
use super::s3::{self, S3Storage};
use super::{Storage, StorageError};
use crate::config::{StorageConfig, StorageKind};

/// The configured storage, and the S3 connection when it is S3 (also used for `s3://` sources).
pub async fn open(
    config: &StorageConfig,
) -> Result<(Arc<dyn Storage>, Option<S3Storage>), StorageError> {
    match config.snapshots_config.snapshots_storage {
        StorageKind::Local => Ok((
            Arc::new(LocalStorage::open(
                config.snapshots_path.clone(),
                config.temp_path.clone(),
            )?),
            None,
        )),
        StorageKind::S3 => {
            let s3_config = config
                .snapshots_config
                .s3_config
                .clone()
                .ok_or_else(s3::unconfigured)?;
            let prefix = s3::prefix_of(&config.snapshots_path.to_string_lossy());
            let s3 = S3Storage::connect(&s3_config, prefix).await?;
            Ok((Arc::new(s3.clone()), Some(s3)))
        }
    }
}
