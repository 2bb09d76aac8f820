//! Applying a restore: moving staged data into the storage directory as the priority says
//! (DESIGN §5). Every step is planned and the whole target checked before anything changes.
//!
//! The staging tree mirrors the storage directory (`collections/<name>/...`, and for a full
//! restore whatever else the archive holds), so a step names one relative path in both.
//! Every path is reached from the storage directory's and the staging directory's
//! descriptors without following links; a link in the target is refused, whether it was
//! there when the plan was made or planted after.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{OFlags, RenameFlags};

use super::archive::{ALIASES_FILE, COLLECTIONS_DIR, collections_in};
use super::manifest::MAX_MANIFEST_BYTES;
use super::restore::error::{RestoreError, write_err};
use super::restore::spec::{CollectionResult, Outcome, Priority, RestoreSpec, Selection};
use crate::safefs::{self, Dir};

/// A staged directory whose archive mode withholds from its owner the access moving it
/// needs: it is staged with owner access and gets `mode` once in place.
#[derive(Debug, Clone)]
pub struct Fixup {
    /// Its path relative to the staging root (and so to the storage directory).
    pub rel: PathBuf,
    pub mode: u32,
    /// Device and inode of the staged directory (a rename keeps them).
    pub identity: (u64, u64),
}

/// What the target holds at a path, as far as a restore cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Absent,
    EmptyDir,
    Dir,
    File,
    Other(&'static str),
}

fn inspect(root: &Dir, rel: &Path) -> Result<Found, RestoreError> {
    let st = match root.stat(rel) {
        Ok(None) => return Ok(Found::Absent),
        Ok(Some(st)) => st,
        Err(e) if safefs::is_link_refused(&e) => return Ok(Found::Other("behind a symbolic link")),
        Err(e) => return Err(write_err(&root.join(rel))(e)),
    };
    Ok(if safefs::is_symlink(&st) {
        Found::Other("a symbolic link")
    } else if safefs::is_dir(&st) {
        let dir = root.open_dir(rel).map_err(write_err(&root.join(rel)))?;
        let entries = dir.entries().map_err(write_err(dir.path()))?;
        if entries.is_empty() {
            Found::EmptyDir
        } else {
            Found::Dir
        }
    } else if safefs::is_file(&st) {
        Found::File
    } else {
        Found::Other("not a file or directory")
    })
}

fn refuse(root: &Dir, rel: &Path, why: &str) -> RestoreError {
    RestoreError::Target {
        path: root.join(rel),
        why: why.into(),
    }
}

/// Refuses a restore that would have to change the directory `rel` of the target without
/// the permission to: found now, before anything changed, rather than half-way.
fn must_write(root: &Dir, rel: &Path) -> Result<(), RestoreError> {
    let dir = root.open_dir(rel).map_err(write_err(&root.join(rel)))?;
    if dir.writable().map_err(write_err(dir.path()))? {
        return Ok(());
    }
    Err(refuse(
        root,
        rel,
        "not writable by the user this restore runs as (run it as the workload's user)",
    ))
}

/// One step of applying a restore, on a path relative to both roots.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Move a staged collection into place (the target is absent or an empty directory).
    Place(PathBuf),
    /// Swap a staged collection with the existing one, atomically.
    Exchange(PathBuf),
    /// Move staged files over existing ones (`overwrite`) or only where absent.
    Merge { rel: PathBuf, overwrite: bool },
    /// Leave an existing collection alone.
    Skip { reason: String },
}

/// What one step restores: a collection, or one shard of it (a Qdrant shard snapshot).
struct Unit {
    collection: String,
    /// Its path, relative to both roots.
    rel: PathBuf,
    /// For messages: `collection "products"`, `shard 0 of collection "products"`.
    described: String,
}

/// The units a restore has: the selected collection (or one of its shards), or every
/// collection staged.
fn units(spec: &RestoreSpec, staging: &Dir, shard: Option<u32>) -> Result<Vec<Unit>, RestoreError> {
    let collections = Path::new(COLLECTIONS_DIR);
    let names = match &spec.selection {
        Selection::Collection { into, .. } => vec![into.clone()],
        Selection::Full => collections_in(staging).map_err(write_err(staging.path()))?,
    };
    Ok(names
        .into_iter()
        .map(|name| match shard {
            Some(n) => Unit {
                rel: collections.join(&name).join(n.to_string()),
                described: format!("shard {n} of collection {name:?}"),
                collection: name,
            },
            None => Unit {
                rel: collections.join(&name),
                described: format!("collection {name:?}"),
                collection: name,
            },
        })
        .collect())
}

/// The parents of `rel` below the storage directory, outermost first.
fn parents(rel: &Path) -> Vec<&Path> {
    let mut parents: Vec<&Path> = rel
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    parents.reverse();
    parents
}

/// Plans every step and checks the whole target before anything is changed.
fn plan(
    spec: &RestoreSpec,
    root: &Dir,
    staging: &Dir,
    units: Vec<Unit>,
) -> Result<Vec<(Option<String>, Step)>, RestoreError> {
    let collections = Path::new(COLLECTIONS_DIR);
    match inspect(root, collections)? {
        Found::Absent => must_write(root, Path::new(""))?,
        Found::EmptyDir | Found::Dir => {}
        Found::File => return Err(refuse(root, collections, "a file, not a directory")),
        Found::Other(why) => return Err(refuse(root, collections, why)),
    }
    if spec.selection == Selection::Full {
        must_write(root, Path::new(""))?;
    }
    let mut steps = Vec::new();
    for unit in units {
        let step = unit_step(spec, root, staging, unit.rel, &unit.described)?;
        steps.push((Some(unit.collection), step));
    }
    if spec.selection == Selection::Full {
        steps.extend(storage_steps(spec, root, staging)?);
    }
    Ok(steps)
}

/// The step that restores one collection (or shard) into `rel`, what is in the target
/// checked first.
fn unit_step(
    spec: &RestoreSpec,
    root: &Dir,
    staging: &Dir,
    rel: PathBuf,
    described: &str,
) -> Result<Step, RestoreError> {
    // A shard's collection may be absent, or a file, or a link: found before anything
    // changes.
    let mut closest = Path::new("");
    for parent in parents(&rel) {
        match inspect(root, parent)? {
            Found::Absent => break,
            Found::EmptyDir | Found::Dir => closest = parent,
            Found::File => return Err(refuse(root, parent, "a file, not a directory")),
            Found::Other(why) => return Err(refuse(root, parent, why)),
        }
    }
    let parent = rel.parent().unwrap_or(Path::new(""));
    Ok(match (inspect(root, &rel)?, spec.priority) {
        (Found::Other(why), _) => return Err(refuse(root, &rel, why)),
        (Found::File, _) => {
            return Err(refuse(
                root,
                &rel,
                "a file, not a directory to restore into",
            ));
        }
        (Found::Absent | Found::EmptyDir, _) => {
            must_write(root, closest)?;
            Step::Place(rel)
        }
        (Found::Dir, None) => return Err(refuse(root, &rel, EXISTS)),
        (Found::Dir, Some(Priority::Replica)) => Step::Skip {
            reason: format!(
                "{described} already exists on this node; priority replica keeps \
                 existing data (use priority snapshot to replace it)"
            ),
        },
        (Found::Dir, Some(Priority::Snapshot)) => {
            // Both directories change parents: both must be writable, and their parent.
            must_write(root, parent)?;
            must_write(root, &rel)?;
            Step::Exchange(rel)
        }
        (Found::Dir, Some(Priority::NoSync)) => {
            check_merge(root, staging, &rel)?;
            Step::Merge {
                rel,
                overwrite: true,
            }
        }
    })
}

/// A full-storage restore's steps beside the collections: the aliases, and what else the
/// storage directory holds.
fn storage_steps(
    spec: &RestoreSpec,
    root: &Dir,
    staging: &Dir,
) -> Result<Vec<(Option<String>, Step)>, RestoreError> {
    let mut steps = Vec::new();
    if let Some(priority) = spec.priority
        && let Some(step) = merge_aliases(root, staging, priority)?
    {
        steps.push((None, step));
    }
    for (entry, _) in staging.entries().map_err(write_err(staging.path()))? {
        if entry == COLLECTIONS_DIR {
            continue;
        }
        let rel = PathBuf::from(entry);
        check_merge(root, staging, &rel)?;
        if spec.priority.is_none() && inspect(root, &rel)? != Found::Absent {
            return Err(refuse(root, &rel, EXISTS));
        }
        steps.push((
            None,
            Step::Merge {
                rel,
                overwrite: spec.priority != Some(Priority::Replica),
            },
        ));
    }
    Ok(steps)
}

/// Why a restore with no priority (Qdrant's startup contract) refuses to touch what exists.
const EXISTS: &str = "already there, and no priority says what wins (Qdrant's startup \
                      contract): pass --force-snapshot to replace it, or --priority replica to \
                      keep it and exit 0";

/// Checks that staged `rel` can be merged into the target: no link on the way, and no file
/// where a directory is staged or the other way round.
fn check_merge(root: &Dir, staging: &Dir, rel: &Path) -> Result<(), RestoreError> {
    let staged = staging
        .stat(rel)
        .map_err(write_err(&staging.join(rel)))?
        .ok_or_else(|| write_err(&staging.join(rel))(io::ErrorKind::NotFound.into()))?;
    match (inspect(root, rel)?, safefs::is_dir(&staged)) {
        (Found::Absent, _) => Ok(()),
        (Found::Other(why), _) => Err(refuse(root, rel, why)),
        (Found::File, false) => Ok(()),
        (Found::File, true) => Err(refuse(
            root,
            rel,
            "a file where the snapshot has a directory",
        )),
        (Found::Dir | Found::EmptyDir, false) => Err(refuse(
            root,
            rel,
            "a directory where the snapshot has a file",
        )),
        (Found::Dir | Found::EmptyDir, true) => {
            let dir = staging
                .open_dir(rel)
                .map_err(write_err(&staging.join(rel)))?;
            let entries = dir.entries().map_err(write_err(dir.path()))?;
            if !entries.is_empty() {
                must_write(root, rel)?;
            }
            for (entry, _) in entries {
                check_merge(root, staging, &rel.join(entry))?;
            }
            Ok(())
        }
    }
}

/// Reads a small JSON file (at most the manifest's bound).
fn read_json(dir: &Dir, rel: &Path) -> Result<BTreeMap<String, String>, RestoreError> {
    let mut bytes = Vec::new();
    dir.open_file(rel, OFlags::RDONLY)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES).read_to_end(&mut bytes))
        .map_err(write_err(&dir.join(rel)))?;
    serde_json::from_slice(&bytes).map_err(|_| {
        refuse(
            dir,
            rel,
            "not a valid aliases file (JSON object of strings)",
        )
    })
}

/// For a full restore into a target with aliases, writes the union of the archive's and the
/// target's aliases into the staged file (the priority decides which side wins a conflict)
/// and returns the step that puts it in place.
fn merge_aliases(
    root: &Dir,
    staging: &Dir,
    priority: Priority,
) -> Result<Option<Step>, RestoreError> {
    let rel = Path::new(ALIASES_FILE);
    let staged_is_file = staging
        .stat(rel)
        .map_err(write_err(&staging.join(rel)))?
        .is_some_and(|st| safefs::is_file(&st));
    if !staged_is_file || inspect(root, rel)? != Found::File {
        return Ok(None);
    }
    let (archive, existing) = (read_json(staging, rel)?, read_json(root, rel)?);
    let merged = match priority {
        Priority::Replica => archive
            .into_iter()
            .chain(existing)
            .collect::<BTreeMap<_, _>>(),
        Priority::Snapshot | Priority::NoSync => existing.into_iter().chain(archive).collect(),
    };
    let json = serde_json::to_vec(&merged).expect("aliases serialise");
    let (parent, name) = parent_and_name(rel);
    let dir = staging
        .open_dir(parent)
        .map_err(write_err(&staging.join(parent)))?;
    let mode = dir
        .stat(name)
        .ok()
        .flatten()
        .map_or(0o644, |st| st.st_mode & 0o777);
    dir.remove_file(name)
        .and_then(|()| dir.create_file(name, mode))
        .and_then(|mut f| f.write_all(&json))
        .map_err(write_err(&staging.join(rel)))?;
    Ok(Some(Step::Merge {
        rel: rel.to_owned(),
        overwrite: true,
    }))
}

/// Applies the plan; returns what happened to each collection. `shard`: the shard of the
/// selected collection a Qdrant shard snapshot was staged as.
pub fn apply(
    spec: &RestoreSpec,
    root: &Dir,
    staging: &Dir,
    fixups: &[Fixup],
    shard: Option<u32>,
) -> Result<Vec<CollectionResult>, RestoreError> {
    let units = units(spec, staging, shard)?;
    // The directories holding what is placed that the target lacks (`collections/`, a
    // shard's collection), made first and given their staged modes last; their modes read
    // before the moves below change them.
    let mut created = Vec::new();
    for unit in &units {
        for parent in parents(&unit.rel) {
            if inspect(root, parent)? == Found::Absent && !created.iter().any(|(p, _)| p == parent)
            {
                created.push((parent.to_owned(), staging.stat(parent).ok().flatten()));
            }
        }
    }
    let steps = plan(spec, root, staging, units)?;
    let placing = steps
        .iter()
        .any(|(c, step)| c.is_some() && !matches!(step, Step::Skip { .. }));
    if !placing {
        created.clear();
    }
    for (parent, _) in &created {
        root.create_dir(parent, 0o700)
            .map_err(write_err(&root.join(parent)))?;
    }
    let mut results = Vec::new();
    for (collection, step) in steps {
        let reason = take(root, staging, step)?;
        if let Some(collection) = collection {
            results.push(CollectionResult {
                collection,
                outcome: if reason.is_some() {
                    Outcome::Skipped
                } else {
                    Outcome::Restored
                },
                reason,
            });
        }
    }
    for (parent, staged) in created.iter().rev() {
        let Some(st) = staged else { continue };
        let dir = root
            .open_dir(parent)
            .map_err(write_err(&root.join(parent)))?;
        dir.set_mode(st.st_mode & 0o1777)
            .and_then(|()| dir.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0)))
            .map_err(write_err(dir.path()))?;
    }
    apply_fixups(root, fixups)?;
    root.sync_filesystem().map_err(write_err(root.path()))?;
    Ok(results)
}

/// Carries out one step: `Some(reason)` when it skips.
fn take(root: &Dir, staging: &Dir, step: Step) -> Result<Option<String>, RestoreError> {
    Ok(match step {
        Step::Place(rel) => {
            let (target_dir, staged_dir, name) = both_parents(root, staging, &rel)?;
            if inspect(root, &rel)? == Found::EmptyDir {
                target_dir
                    .remove_dir(name)
                    .map_err(write_err(&root.join(&rel)))?;
            }
            rename(&staged_dir, &target_dir, name, RenameFlags::NOREPLACE)?;
            None
        }
        Step::Exchange(rel) => {
            let (target_dir, staged_dir, name) = both_parents(root, staging, &rel)?;
            rename(&staged_dir, &target_dir, name, RenameFlags::EXCHANGE)?;
            None
        }
        Step::Merge { rel, overwrite } => {
            let (target_dir, staged_dir, name) = both_parents(root, staging, &rel)?;
            merge(&staged_dir, &target_dir, name, overwrite)?;
            None
        }
        Step::Skip { reason } => Some(reason),
    })
}

/// Gives the directories moved into place the modes they were staged without (deepest
/// first, as staged); those not moved (skipped, merged into existing ones) are left alone.
fn apply_fixups(root: &Dir, fixups: &[Fixup]) -> Result<(), RestoreError> {
    for fixup in fixups {
        let dir = match root.open_dir(&fixup.rel) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(write_err(&root.join(&fixup.rel))(e)),
        };
        let st = dir.metadata().map_err(write_err(dir.path()))?;
        if safefs::identity(&st) == fixup.identity {
            dir.set_mode(fixup.mode).map_err(write_err(dir.path()))?;
        }
    }
    Ok(())
}

fn parent_and_name(rel: &Path) -> (&Path, &OsStr) {
    (
        rel.parent().unwrap_or(Path::new("")),
        rel.file_name().expect("steps name an entry"),
    )
}

/// The parent directories of `rel` in the target and in staging, and its name.
fn both_parents<'r>(
    root: &Dir,
    staging: &Dir,
    rel: &'r Path,
) -> Result<(Dir, Dir, &'r OsStr), RestoreError> {
    let (parent, name) = parent_and_name(rel);
    let target = root.open_dir(parent).map_err(|e| {
        if safefs::is_link_refused(&e) {
            refuse(root, parent, "a symbolic link")
        } else {
            write_err(&root.join(parent))(e)
        }
    })?;
    let staged = staging
        .open_dir(parent)
        .map_err(write_err(&staging.join(parent)))?;
    Ok((target, staged, name))
}

fn rename(from: &Dir, to: &Dir, name: &OsStr, flags: RenameFlags) -> Result<(), RestoreError> {
    from.rename(name, to, name, flags).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) && flags.contains(RenameFlags::EXCHANGE) {
            RestoreError::Target {
                path: to.join(name),
                why: "on a filesystem without atomic exchange (renameat2 RENAME_EXCHANGE); \
                      use priority no_sync or restore into an empty target"
                    .into(),
            }
        } else {
            write_err(&to.join(name))(e)
        }
    })
}

/// Moves `name` from `staged` into `target`: an absent target takes the staged tree whole;
/// directories are merged entry by entry; an existing file is replaced when `overwrite`,
/// else kept. A link in the target is refused, never followed.
fn merge(staged: &Dir, target: &Dir, name: &OsStr, overwrite: bool) -> Result<(), RestoreError> {
    let here = target.join(name);
    let st = target.stat(name).map_err(write_err(&here))?;
    match st {
        None => rename(staged, target, name, RenameFlags::NOREPLACE),
        Some(st) if safefs::is_file(&st) => {
            if overwrite {
                rename(staged, target, name, RenameFlags::empty())?;
            }
            Ok(())
        }
        Some(st) if safefs::is_dir(&st) => {
            let from = staged
                .open_dir(name)
                .map_err(write_err(&staged.join(name)))?;
            let to = target.open_dir(name).map_err(|e| {
                if safefs::is_link_refused(&e) {
                    RestoreError::Target {
                        path: here.clone(),
                        why: "a symbolic link".into(),
                    }
                } else {
                    write_err(&here)(e)
                }
            })?;
            for (entry, _) in from.entries().map_err(write_err(from.path()))? {
                merge(&from, &to, &entry, overwrite)?;
            }
            Ok(())
        }
        Some(st) if safefs::is_symlink(&st) => Err(RestoreError::Target {
            path: here,
            why: "a symbolic link".into(),
        }),
        Some(_) => Err(RestoreError::Target {
            path: here,
            why: "not a file or directory".into(),
        }),
    }
}
