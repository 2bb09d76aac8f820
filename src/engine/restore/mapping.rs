//! Where each archive path is staged for the selection.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{RestoreError, write_err};
use super::spec::Selection;
use crate::engine::archive::COLLECTIONS_DIR;
use crate::engine::manifest::{Kind, Manifest};
use crate::engine::name;
use crate::safefs::{self, Dir};

/// Maps archive paths to staging paths for the selection.
#[derive(Debug)]
pub struct Mapping {
    /// For a collection restore: (collection in the archive, collection in the target).
    collection: Option<(String, String)>,
}

impl Mapping {
    pub(super) fn new(manifest: &Manifest, selection: &Selection) -> Result<Self, RestoreError> {
        let collection = match (selection, manifest.kind) {
            (Selection::Full, Kind::Full) => None,
            (Selection::Full, Kind::Collection) => {
                return Err(RestoreError::NotFull {
                    collection: manifest.collection.clone().unwrap_or_default(),
                });
            }
            (Selection::Collection { from, into }, Kind::Collection) => {
                let found = manifest.collection.clone().unwrap_or_default();
                match from {
                    Some(wanted) if *wanted != found => {
                        return Err(RestoreError::WrongCollection {
                            wanted: wanted.clone(),
                            found,
                        });
                    }
                    _ => Some((found, into.clone())),
                }
            }
            (Selection::Collection { from, into }, Kind::Full) => {
                let wanted = from.clone().unwrap_or_else(|| into.clone());
                if !manifest.collections.contains(&wanted) {
                    return Err(RestoreError::NotInArchive {
                        wanted,
                        available: manifest.collections.clone(),
                    });
                }
                Some((wanted, into.clone()))
            }
        };
        Ok(Self { collection })
    }

    /// The staging path of an archive entry, or `None` when the selection does not take it.
    pub fn map(&self, parts: &[&[u8]]) -> Result<Option<PathBuf>, &'static str> {
        let under_collections = parts.first() == Some(&COLLECTIONS_DIR.as_bytes());
        if under_collections && parts.len() >= 2 {
            let name = String::from_utf8_lossy(parts[1]);
            if name::validate("collection", &name).is_err() {
                return Err("not under a valid collection name");
            }
        }
        let mut path = PathBuf::new();
        match &self.collection {
            None => {
                for p in parts {
                    path.push(OsStr::from_bytes(p));
                }
            }
            Some((from, into)) => {
                if !under_collections || parts.len() < 2 || parts[1] != from.as_bytes() {
                    return Ok(None);
                }
                path.push(COLLECTIONS_DIR);
                path.push(into);
                for p in &parts[2..] {
                    path.push(OsStr::from_bytes(p));
                }
            }
        }
        Ok(Some(path))
    }

    /// A collection restore must have staged the collection.
    pub(super) fn check_present(&self, staging: &Dir) -> Result<(), RestoreError> {
        if let Some((from, into)) = &self.collection {
            let rel = Path::new(COLLECTIONS_DIR).join(into);
            let staged = staging.stat(&rel).map_err(write_err(&staging.join(&rel)))?;
            if !staged.is_some_and(|st| safefs::is_dir(&st)) {
                return Err(RestoreError::Empty {
                    collection: from.clone(),
                });
            }
        }
        Ok(())
    }
}
