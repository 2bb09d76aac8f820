//! Arranging a staged Qdrant snapshot as a storage directory holds it: the archive was
//! unpacked below [`STAGED`] as Qdrant's recovery unpacks it; here it becomes
//! `collections/<name>/` (a collection snapshot, or each collection of a full snapshot, with
//! its aliases in `aliases/data.json`) or `collections/<name>/<shard>/` (a shard snapshot),
//! each shard's replica state made the one a single node loads. Only renames inside the
//! staging directory, and the replica states rewritten: the target is not touched.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags, RenameFlags};

use super::archive::{ALIASES_FILE, COLLECTIONS_DIR};
use super::limits::MAX_MANIFEST_BYTES;
use super::manifest::{self, Manifest};
use super::name;
use super::qdrant::{self, FullConfig, Kind};
use super::restore::error::{RestoreError, write_err};
use super::restore::spec::Selection;
use super::stage::StagedDirs;
use crate::safefs::{self, Dir};

/// Where a Qdrant snapshot is staged, in the staging directory.
pub const STAGED: &str = "qdrant";

/// How much deeper than staged (below [`STAGED`]) the entries of a snapshot of `kind` end
/// up (`None`: not known yet; the most): a collection's below `collections/<name>/`, a
/// shard's below `collections/<name>/<n>/`, a full snapshot's collections below
/// `collections/` as they were below [`STAGED`].
pub fn deeper(kind: Option<Kind>) -> usize {
    match kind {
        Some(Kind::Full) => 0,
        Some(Kind::Collection) => 1,
        Some(Kind::Shard) | None => 2,
    }
}

/// How a staged Qdrant snapshot was arranged.
#[derive(Debug)]
pub struct Arranged {
    pub kind: Kind,
    /// The shard a shard snapshot was staged as.
    pub shard: Option<u32>,
    /// What was moved where (staging paths).
    moves: Vec<(PathBuf, PathBuf)>,
}

impl Arranged {
    /// The staged directories by where they are now: those moved with what held them,
    /// those left behind (removed) gone.
    pub fn moved(&self, dirs: StagedDirs) -> StagedDirs {
        dirs.into_iter()
            .filter_map(|(rel, times)| {
                self.moves.iter().find_map(|(from, to)| {
                    rel.strip_prefix(from)
                        .ok()
                        .map(|rest| (to.join(rest), times))
                })
            })
            .map(|(rel, times)| (strip_empty(rel), times))
            .collect()
    }
}

/// `a/b/` and `a/b` are one directory.
fn strip_empty(rel: PathBuf) -> PathBuf {
    rel.components().collect()
}

fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Collection => "collection",
        Kind::Shard => "shard",
        Kind::Full => "full",
    }
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> RestoreError {
    RestoreError::Qdrant {
        what: what.into(),
        why: why.into(),
    }
}

/// Reads a small JSON file of the staging directory.
fn read_json<T: serde::de::DeserializeOwned>(staging: &Dir, rel: &Path) -> Result<T, RestoreError> {
    let mut bytes = Vec::new();
    staging
        .open_file(rel, OFlags::RDONLY)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(write_err(&staging.join(rel)))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(rel.display().to_string(), "larger than 16 MiB"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| invalid(rel.display().to_string(), format!("not valid JSON ({e})")))
}

/// What the staged snapshot is: a full snapshot's `config.json` names collections, a
/// collection's is its configuration, a shard's has no `config.json` but `segments/`.
fn classify(staging: &Dir) -> Result<(Kind, Option<FullConfig>), RestoreError> {
    let root = Path::new(STAGED);
    let config = root.join(qdrant::CONFIG_FILE);
    let stat = |rel: &Path| staging.stat(rel).map_err(write_err(&staging.join(rel)));
    if stat(&config)?.is_some_and(|st| safefs::is_file(&st)) {
        let value: serde_json::Value = read_json(staging, &config)?;
        if value.get("collections_mapping").is_some() {
            let full: FullConfig = serde_json::from_value(value).map_err(|e| {
                invalid(
                    "the full snapshot's config.json",
                    format!("not valid ({e})"),
                )
            })?;
            return Ok((Kind::Full, Some(full)));
        }
        return Ok((Kind::Collection, None));
    }
    if stat(&root.join(qdrant::SEGMENTS_DIR))?.is_some_and(|st| safefs::is_dir(&st)) {
        return Ok((Kind::Shard, None));
    }
    Err(RestoreError::NotASnapshot)
}

/// Arranges the staged snapshot for `selection` (see the module's header); `manifest`: ours,
/// when the archive is one of ours in Qdrant's layout, which must agree with what it holds.
/// `checked`: how much deeper than staged the entries were checked to end up.
pub fn arrange(
    staging: &Dir,
    manifest: Option<&Manifest>,
    selection: &Selection,
    shard: Option<u32>,
    checked: usize,
) -> Result<Arranged, RestoreError> {
    let (kind, full) = classify(staging)?;
    check_kind(kind, manifest, shard, checked)?;
    let arranged = plan_moves(staging, kind, full, manifest, selection, shard)?;
    for (from, to) in &arranged.moves {
        place(staging, from, to, kind)?;
    }
    staging
        .remove_tree(STAGED)
        .map_err(write_err(&staging.join(STAGED)))?;
    for (_, to) in &arranged.moves {
        match arranged.shard {
            Some(_) => single_node(staging, to)?,
            None => {
                let dir = staging.open_dir(to).map_err(write_err(&staging.join(to)))?;
                for (entry, kind) in dir.entries().map_err(write_err(dir.path()))? {
                    if kind == FileType::Directory && qdrant::is_shard_dir(entry.as_bytes()) {
                        single_node(staging, &to.join(&entry))?;
                    }
                }
            }
        }
    }
    Ok(arranged)
}

/// Refuses a snapshot whose kind its paths were not checked for, its manifest disagrees
/// with, or `--shard` does not go with.
fn check_kind(
    kind: Kind,
    manifest: Option<&Manifest>,
    shard: Option<u32>,
    checked: usize,
) -> Result<(), RestoreError> {
    if deeper(Some(kind)) > checked {
        return Err(invalid(
            "the archive",
            format!(
                "a Qdrant {} snapshot its first entry did not say it was (its paths were \
                 checked for another kind)",
                what(kind)
            ),
        ));
    }
    if let Some(manifest) = manifest {
        let agrees = matches!(
            (manifest.kind, kind),
            (manifest::Kind::Collection, Kind::Collection) | (manifest::Kind::Full, Kind::Full)
        );
        if !agrees {
            return Err(RestoreError::InconsistentManifest {
                kind: manifest.kind,
                detail: format!("it holds a Qdrant {} snapshot", what(kind)),
            });
        }
    }
    if shard.is_some() && kind != Kind::Shard {
        return Err(RestoreError::NotAShard { found: what(kind) });
    }
    Ok(())
}

/// Where each staged directory goes for `selection` (writing a full restore's aliases),
/// and the shard a shard snapshot is restored as.
fn plan_moves(
    staging: &Dir,
    kind: Kind,
    full: Option<FullConfig>,
    manifest: Option<&Manifest>,
    selection: &Selection,
    shard: Option<u32>,
) -> Result<Arranged, RestoreError> {
    let staged = PathBuf::from(STAGED);
    let collections = Path::new(COLLECTIONS_DIR);
    let mut moves = Vec::new();
    let mut shard_of_snapshot = None;
    match (kind, selection, full.as_ref()) {
        (Kind::Collection | Kind::Shard, Selection::Full, _) => {
            return Err(RestoreError::NotFull {
                collection: manifest
                    .and_then(|m| m.collection.clone())
                    .unwrap_or_else(|| format!("(a Qdrant {} snapshot)", what(kind))),
            });
        }
        (Kind::Collection, Selection::Collection { from, into }, _) => {
            if let (Some(wanted), Some(found)) =
                (from, manifest.and_then(|m| m.collection.as_ref()))
                && wanted != found
            {
                return Err(RestoreError::WrongCollection {
                    wanted: wanted.clone(),
                    found: found.clone(),
                });
            }
            moves.push((staged.clone(), collections.join(into)));
        }
        (Kind::Shard, Selection::Collection { into, .. }, _) => {
            let n = shard.unwrap_or(0);
            shard_of_snapshot = Some(n);
            moves.push((staged.clone(), collections.join(into).join(n.to_string())));
        }
        (Kind::Full, selection, Some(config)) => {
            let mapping = &config.collections_mapping;
            let file = |name: &str| {
                name::validate("collection", name)?;
                let file = &mapping[name];
                name::validate("snapshot", file)?;
                Ok::<_, RestoreError>(staged.join(file))
            };
            match selection {
                Selection::Full => {
                    for name in mapping.keys() {
                        moves.push((file(name)?, collections.join(name)));
                    }
                    write_aliases(staging, &config.collections_aliases)?;
                }
                Selection::Collection { from, into } => {
                    let wanted = from.clone().unwrap_or_else(|| into.clone());
                    if !mapping.contains_key(&wanted) {
                        return Err(RestoreError::NotInArchive {
                            wanted,
                            available: mapping.keys().cloned().collect(),
                        });
                    }
                    moves.push((file(&wanted)?, collections.join(into)));
                }
            }
        }
        (Kind::Full, _, None) => unreachable!("a full snapshot is classified with its config"),
    }
    Ok(Arranged {
        kind,
        shard: shard_of_snapshot,
        moves,
    })
}

/// Moves the staged `from` to `to`, creating `to`'s parents; `from` must be a directory
/// (a full snapshot's collection snapshot unpacked, or the snapshot itself).
fn place(staging: &Dir, from: &Path, to: &Path, kind: Kind) -> Result<(), RestoreError> {
    let is_dir = staging
        .stat(from)
        .map_err(write_err(&staging.join(from)))?
        .is_some_and(|st| safefs::is_dir(&st));
    if !is_dir {
        return Err(invalid(
            format!("the {} snapshot's {}", what(kind), from.display()),
            "missing: its config.json names a collection snapshot the archive does not hold",
        ));
    }
    let (parent, name) = (to.parent().unwrap_or(Path::new("")), to.file_name());
    let name = name.expect("a staging path has a name");
    let target = staging
        .create_dir_all(parent, 0o777)
        .map_err(write_err(&staging.join(parent)))?;
    let (from_parent, from_name) = (
        from.parent().unwrap_or(Path::new("")),
        from.file_name().expect("a staging path has a name"),
    );
    let source = staging
        .open_dir(from_parent)
        .map_err(write_err(&staging.join(from_parent)))?;
    source
        .rename(from_name, &target, name, RenameFlags::NOREPLACE)
        .map_err(write_err(&staging.join(to)))
}

/// A full snapshot's aliases, as the storage directory keeps them (`aliases/data.json`).
fn write_aliases(staging: &Dir, aliases: &BTreeMap<String, String>) -> Result<(), RestoreError> {
    if aliases.is_empty() {
        return Ok(());
    }
    for (alias, collection) in aliases {
        name::validate("alias", alias)?;
        name::validate("collection", collection)?;
    }
    let rel = Path::new(ALIASES_FILE);
    let (parent, file) = (rel.parent().expect("aliases/"), OsStr::new("data.json"));
    let dir = staging
        .create_dir_all(parent, 0o777)
        .map_err(write_err(&staging.join(parent)))?;
    let json = serde_json::to_vec(aliases).expect("aliases serialise");
    dir.create_file(file, 0o644)
        .and_then(|mut f| f.write_all(&json))
        .map_err(write_err(&staging.join(rel)))
}

/// Makes the replica state of the staged shard `shard` (when it has one: qdrant-edge's
/// shards do not) the one a single node loads.
fn single_node(staging: &Dir, shard: &Path) -> Result<(), RestoreError> {
    let rel = shard.join(qdrant::REPLICA_STATE_FILE);
    let dir = staging
        .open_dir(shard)
        .map_err(write_err(&staging.join(shard)))?;
    let Some(st) = dir
        .stat(qdrant::REPLICA_STATE_FILE)
        .map_err(write_err(&staging.join(&rel)))?
    else {
        return Ok(());
    };
    let json: serde_json::Value = read_json(staging, &rel)?;
    let bytes = serde_json::to_vec(&json).expect("JSON values serialise");
    let fixed = qdrant::single_node_replica_state(&bytes)
        .map_err(|why| invalid(format!("shard {}", shard.display()), why))?;
    dir.remove_file(qdrant::REPLICA_STATE_FILE)
        .and_then(|()| dir.create_file(qdrant::REPLICA_STATE_FILE, st.st_mode & 0o777))
        .and_then(|mut f| f.write_all(&fixed))
        .map_err(write_err(&staging.join(&rel)))
}
