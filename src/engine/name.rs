//! Names: the rule for collection, node and snapshot names, archive file names
//! (`<collection>-<node>-<YYYY-MM-DD-HH-MM-SS>.snapshot`) and storage keys.

use jiff::Timestamp;

/// File name extension of archives.
pub const ARCHIVE_EXT: &str = ".snapshot";
/// Suffix of the checksum sidecar: `<archive>.checksum`.
pub const CHECKSUM_EXT: &str = ".checksum";
/// Prefix of full-storage archive names.
pub const FULL_PREFIX: &str = "full-snapshot";
/// Longest name a path component may have (bytes).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name is not a single safe path component.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{what} name is empty")]
    Empty { what: &'static str },
    #[error("{what} name {name:?} is `.` or `..`")]
    Dot { what: &'static str, name: String },
    #[error("{what} name {name:?} contains {ch:?}; a name is a single path component")]
    Forbidden {
        what: &'static str,
        name: String,
        ch: char,
    },
    #[error("{what} name {name:?} is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
    },
    #[error(
        "{name:?} is not an archive name: archives end in {ARCHIVE_EXT} (a checksum file goes \
         with its archive, never alone)"
    )]
    NotArchive { name: String },
}

/// Checks that `name` is a single path component: non-empty, no `/`, `\` or NUL, not `.` or
/// `..`, at most 255 bytes. `what` names the kind of name in the error ("collection", ...).
pub fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name == "." || name == ".." {
        return Err(NameError::Dot {
            what,
            name: name.into(),
        });
    }
    if let Some(ch) = name.chars().find(|c| matches!(c, '/' | '\\' | '\0')) {
        return Err(NameError::Forbidden {
            what,
            name: name.into(),
            ch,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            name: name.into(),
            len: name.len(),
        });
    }
    Ok(())
}

/// The part of an archive name before the optional collision suffix and the extension:
/// `<collection>-<node>-<ts>` or `full-snapshot-<node>-<ts>`, with the time in UTC.
pub fn archive_stem(collection: Option<&str>, node: &str, at: Timestamp) -> String {
    let ts = at.strftime("%Y-%m-%d-%H-%M-%S");
    format!("{}-{node}-{ts}", collection.unwrap_or(FULL_PREFIX))
}

/// The `attempt`-th candidate archive name for a stem: `stem.snapshot`, then `stem-1.snapshot`,
/// `stem-2.snapshot`, ... so that two snapshots taken in the same second never collide.
pub fn archive_name(stem: &str, attempt: u32) -> String {
    match attempt {
        0 => format!("{stem}{ARCHIVE_EXT}"),
        n => format!("{stem}-{n}{ARCHIVE_EXT}"),
    }
}

/// The storage key of an archive: collection archives live under `<collection>/` (as in
/// Qdrant's snapshot directory), full-storage archives at the top.
pub fn key(collection: Option<&str>, name: &str) -> String {
    match collection {
        Some(c) => format!("{c}/{name}"),
        None => name.to_owned(),
    }
}

/// The key of the checksum sidecar of the archive at `key`.
pub fn checksum_key(key: &str) -> String {
    format!("{key}{CHECKSUM_EXT}")
}

/// Splits a key into its collection (if any) and archive name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, key),
    }
}

/// The keys an archive named `name` may have when its collection is not given: a full-storage
/// archive lives at the top; a collection archive `<c>-<node>-<ts>.snapshot` lives under `<c>/`
/// for some prefix `<c>` of the name that ends before a `-`. Also accepts `collection/name`.
pub fn candidate_keys(name: &str) -> Vec<String> {
    if name.contains('/') || name.starts_with(&format!("{FULL_PREFIX}-")) {
        return vec![name.to_owned()];
    }
    let mut keys: Vec<String> = name
        .match_indices('-')
        .map(|(i, _)| key(Some(&name[..i]), name))
        .collect();
    keys.push(name.to_owned());
    keys
}

/// What an archive's key says of it: `<collection>/<collection>-<node>-<ts>[-n].snapshot`
/// or `full-snapshot-<node>-<ts>[-n].snapshot`, the time in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveName<'a> {
    pub collection: Option<&'a str>,
    pub node: &'a str,
    pub taken: Timestamp,
    /// The collision suffix: 0, or n for the (n+1)-th name taken in one second.
    pub attempt: u32,
}

/// Parses an archive key as this program names archives (pure); `None` for other names.
pub fn parse_archive(key: &str) -> Option<ArchiveName<'_>> {
    let (collection, file) = split_key(key);
    let stem = file.strip_suffix(ARCHIVE_EXT)?;
    let rest = stem
        .strip_prefix(collection.unwrap_or(FULL_PREFIX))?
        .strip_prefix('-')?;
    // `<node>-<ts>`, or `<node>-<ts>-<n>` for a name taken twice in one second.
    let with_attempt = rest
        .rsplit_once('-')
        .and_then(|(before, n)| Some((before, n.parse::<u32>().ok().filter(|n| *n > 0)?)));
    [Some((rest, 0)), with_attempt]
        .into_iter()
        .flatten()
        .find_map(|(text, attempt)| {
            let split = text.len().checked_sub(TIME_LEN)?;
            let (node, time) = (text.get(..split)?, text.get(split..)?);
            let node = node.strip_suffix('-').filter(|n| !n.is_empty())?;
            let civil = jiff::civil::DateTime::strptime("%Y-%m-%d-%H-%M-%S", time).ok()?;
            let taken = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
            Some(ArchiveName {
                collection,
                node,
                taken,
                attempt,
            })
        })
}

/// Length of the time in an archive name (`YYYY-MM-DD-HH-MM-SS`).
const TIME_LEN: usize = 19;

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Longest checksum file read: ours is 64 bytes, `sha256sum`'s `<hex>  <file name>\n` at most
/// 322. A longer one is not a checksum, and no more of it is read.
pub const MAX_CHECKSUM_FILE: u64 = 512;

/// Parses the content of a checksum file (ours, or `sha256sum`'s line): the lowercase hex
/// digest, or `None` when it is longer than [`MAX_CHECKSUM_FILE`], not text, or does not
/// start with 64 hex digits.
pub fn parse_checksum_file(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let printable = text
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'));
    (bytes.len() as u64 <= MAX_CHECKSUM_FILE && printable)
        .then(|| parse_checksum(text))
        .flatten()
}

/// Parses a SHA-256 checksum as written by us or by `sha256sum` (`<hex>  <file>`): returns the
/// lowercase hex digest, or `None` when the text does not start with 64 hex digits.
pub fn parse_checksum(text: &str) -> Option<String> {
    let digest = text.split_whitespace().next()?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_give_their_collection_node_and_time() {
        let at: Timestamp = "2026-03-07T02:00:00Z".parse().unwrap();
        let stem = archive_stem(Some("products"), "qdrant-0", at);
        for attempt in [0, 3] {
            let key = key(Some("products"), &archive_name(&stem, attempt));
            let parsed = parse_archive(&key).unwrap();
            assert_eq!(
                (parsed.collection, parsed.node, parsed.taken, parsed.attempt),
                (Some("products"), "qdrant-0", at, attempt),
                "{key}"
            );
        }
        let full = archive_name(&archive_stem(None, "n-1", at), 0);
        assert_eq!(parse_archive(&full).unwrap().node, "n-1");
        for other in [
            "products/other-n0-2026-03-07-02-00-00.snapshot",
            "products/products-2026-03-07-02-00-00.snapshot",
            "products/products-n0-2026-13-07-02-00-00.snapshot",
            "products/products-n0-yesterday.snapshot",
            "products/products-n0-2026-03-07-02-00-00.tar",
        ] {
            assert_eq!(parse_archive(other), None, "{other}");
        }
    }

    #[test]
    fn names_are_single_components() {
        assert!(validate("collection", "products").is_ok());
        assert!(validate("collection", "a b-ç:1").is_ok());
        assert_eq!(
            validate("collection", ""),
            Err(NameError::Empty { what: "collection" })
        );
        for bad in [".", ".."] {
            assert!(matches!(validate("x", bad), Err(NameError::Dot { .. })));
        }
        for bad in ["a/b", "a\\b", "a\0b", "/", "../x"] {
            assert!(
                matches!(validate("x", bad), Err(NameError::Forbidden { .. })),
                "{bad:?}"
            );
        }
        assert!(validate("x", &"a".repeat(255)).is_ok());
        assert!(matches!(
            validate("x", &"é".repeat(128)),
            Err(NameError::TooLong { len: 256, .. })
        ));
    }

    #[test]
    fn archive_names_follow_the_design() {
        let at: Timestamp = "2026-11-25T10:20:30.999Z".parse().unwrap();
        let stem = archive_stem(Some("products"), "qdrant-0", at);
        assert_eq!(stem, "products-qdrant-0-2026-11-25-10-20-30");
        assert_eq!(
            archive_name(&stem, 0),
            "products-qdrant-0-2026-11-25-10-20-30.snapshot"
        );
        assert_eq!(
            archive_name(&stem, 2),
            "products-qdrant-0-2026-11-25-10-20-30-2.snapshot"
        );
        assert_eq!(
            archive_stem(None, "n", at),
            "full-snapshot-n-2026-11-25-10-20-30"
        );
    }

    #[test]
    fn keys_put_collection_archives_in_their_directory() {
        assert_eq!(key(Some("c"), "c-n-t.snapshot"), "c/c-n-t.snapshot");
        assert_eq!(
            key(None, "full-snapshot-n.snapshot"),
            "full-snapshot-n.snapshot"
        );
        assert_eq!(checksum_key("c/x.snapshot"), "c/x.snapshot.checksum");
        assert_eq!(split_key("c/x.snapshot"), (Some("c"), "x.snapshot"));
        assert_eq!(split_key("x.snapshot"), (None, "x.snapshot"));
    }

    #[test]
    fn candidate_keys_cover_every_dash_prefix() {
        assert_eq!(
            candidate_keys("my-coll-n-1.snapshot"),
            vec![
                "my/my-coll-n-1.snapshot",
                "my-coll/my-coll-n-1.snapshot",
                "my-coll-n/my-coll-n-1.snapshot",
                "my-coll-n-1.snapshot"
            ]
        );
        assert_eq!(candidate_keys("c/x.snapshot"), vec!["c/x.snapshot"]);
        assert_eq!(
            candidate_keys("full-snapshot-n-1.snapshot"),
            vec!["full-snapshot-n-1.snapshot"]
        );
    }

    #[test]
    fn checksums_parse_from_ours_and_sha256sum() {
        let h = "AB".repeat(32);
        assert_eq!(parse_checksum(&h), Some("ab".repeat(32)));
        assert_eq!(
            parse_checksum(&format!("{h}  file.snapshot\n")),
            Some("ab".repeat(32))
        );
        assert_eq!(parse_checksum("xyz"), None);
        let line = format!("{h}  file.snapshot\n");
        assert_eq!(parse_checksum_file(line.as_bytes()), Some("ab".repeat(32)));
        let mut binary = h.clone().into_bytes();
        binary.extend_from_slice(b"\n\0\xff");
        assert_eq!(parse_checksum_file(&binary), None);
        let long = format!("{h} {}", "x".repeat(MAX_CHECKSUM_FILE as usize));
        assert_eq!(parse_checksum_file(long.as_bytes()), None);
        assert_eq!(parse_checksum(""), None);
        assert_eq!(hex(&[0x00, 0xff, 0x1a]), "00ff1a");
    }
}
