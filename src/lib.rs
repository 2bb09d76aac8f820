//! snapshot-operator: Qdrant's snapshot feature set for stateful workloads on Kubernetes.
//!
//! * [`api`]: the custom resources (`Snapshot`, `SnapshotRestore`).
//! * [`engine`]: tar archives of a storage directory or one collection, and their restore.
//! * [`storage`]: where archives live (local directory, S3), one trait and one test suite.
//! * [`source`]: the locations a restore reads from.
//! * [`ops`]: the operations the CLI and mover Jobs run.
//! * [`safefs`]: file access beneath a directory that never follows a symbolic link, and
//!   temporary files that many writers share safely.
//! * [`config`]: Qdrant-style configuration from a file and the environment.
//! * [`controller`]: the Kubernetes operator (reconcilers, mover Jobs, metrics).
//! * [`cli`]: the command line.
//! * [`protocol`]: what mover Jobs are told (task, storage) and what they report.
//! * [`format`]: error chains and byte sizes for people.
//! * [`tls`]: the process's TLS crypto provider.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod controller;
pub mod crypt;
pub mod engine;
pub mod format;
pub mod ops;
pub mod protocol;
pub mod qdrant_api;
pub mod retention;
pub mod safefs;
pub mod schedule;
pub mod source;
pub mod storage;
pub mod tls;
