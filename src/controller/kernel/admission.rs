//! What the operator lets a resource make a mover do: its own S3 storage only at an
//! endpoint the operator allows, and a mover security context only as the operator's
//! configuration permits.

use super::Invalid;
use crate::api::snapshot::{MoverSecurityContext, S3Storage};
use crate::controller::config::OperatorConfig;
use crate::controller::mover;

/// Whether a resource naming the S3 storage `s3` and the mover security context
/// `security` may be acted on (pure); else why not.
pub fn trusted(
    config: &OperatorConfig,
    s3: Option<&S3Storage>,
    security: Option<&MoverSecurityContext>,
) -> Result<(), Invalid> {
    if let Some(s3) = s3 {
        config.allow_endpoint(s3.endpoint_url.as_deref())?;
    }
    mover::check_security(security, &config.mover)
}
