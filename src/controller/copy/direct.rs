//! `copyMethod: Direct`: each node's mover reads the live claim, while the application
//! writes to it. Nothing to prepare or release.

use super::method::Method;

/// `copyMethod: Direct`.
pub struct Direct;

impl Method for Direct {}
