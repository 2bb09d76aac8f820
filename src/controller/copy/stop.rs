//! `copyMethod: Stop`: the StatefulSet is scaled to zero for the time of the snapshot (see
//! [`crate::controller::stop`]), and each node's mover reads its claim at rest.

use super::method::Method;

/// `copyMethod: Stop`.
pub struct Stop;

impl Method for Stop {
    fn stops_workload(&self) -> bool {
        true
    }
}
