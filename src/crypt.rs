//! Archives encrypted with the age format (<https://age-encryption.org/v1>, the `age` crate):
//! to X25519 recipients (`age1…`, public keys: all a snapshot needs), read back with their
//! identities (`AGE-SECRET-KEY-1…`, as `age-keygen` writes them). An encrypted archive is
//! the whole plaintext archive as one age file, so `age -d -i key.txt` gives back the archive
//! Qdrant or tar read. Storage keeps the encrypted bytes and their SHA-256; the plaintext
//! never reaches storage.
//!
//! Rotation: new archives go to the recipients given (the new key's); any of the identities
//! given reads (the new key and the old ones, one per line).

use std::io::{self, Read, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable the recipients (one per line) are read from: a mover's comes
/// from a Secret's `recipients` key.
pub const RECIPIENTS_ENV: &str = "SNAPSHOT_OPERATOR_AGE_RECIPIENTS";
/// The environment variable the identities (an identity file's text) are read from: a
/// mover's comes from a Secret's `identities` key.
pub const IDENTITIES_ENV: &str = "SNAPSHOT_OPERATOR_AGE_IDENTITIES";
/// The Secret key holding the recipients.
pub const RECIPIENTS_KEY: &str = "recipients";
/// The Secret key holding the identities.
pub const IDENTITIES_KEY: &str = "identities";

/// How every age file starts.
const MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// Why keys or an encrypted archive could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(
        "{what}, line {line}: {why} (recipients are age public keys, age1…, one per line; \
         identities are age secret keys, AGE-SECRET-KEY-1…, as age-keygen writes them)"
    )]
    BadKey {
        what: &'static str,
        line: usize,
        why: &'static str,
    },
    #[error("{what} holds no key (lines other than blank ones and # comments)")]
    NoKeys { what: &'static str },
    #[error(
        "the archive is encrypted (age): give the identities that read it (--identity-file, \
         or encryption.secretName with an `identities` key)"
    )]
    Locked,
    #[error(
        "none of the identities given reads this encrypted archive: it was encrypted to other \
         keys (give the identity of a key it was encrypted to: after a rotation, the old \
         identities along with the new one)"
    )]
    NoMatchingKey,
    #[error(
        "the archive is not encrypted, though identities were given to read it: it is not the \
         archive meant (refused; restore it without identities if it is)"
    )]
    Plain,
    #[error(
        "{var} is not UTF-8 text: give the keys as age writes them (a Secret key's text, one \
         key per line)"
    )]
    NotText { var: &'static str },
    #[error("{what}: at most {MAX_RECIPIENTS} recipients")]
    TooManyRecipients { what: &'static str },
    #[error("the archive's age header is not valid ({why})")]
    Header { why: String },
    #[error("reading the archive failed")]
    Io { source: io::Error },
}

/// Public keys new archives are encrypted to.
#[derive(Clone)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients({})", self.0.len())
    }
}

impl Recipients {
    /// Parses `text`: one `age1…` key per line, blank lines and `#` comments ignored.
    pub fn parse(what: &'static str, text: &str) -> Result<Self, CryptError> {
        Self::parse_all(what, &[text])
    }

    /// Those of `texts` (each as [`Recipients::parse`] takes it), together.
    pub fn parse_all(what: &'static str, texts: &[impl AsRef<str>]) -> Result<Self, CryptError> {
        let all = keys_in(what, texts, age::x25519::Recipient::from_str)?;
        if all.len() > MAX_RECIPIENTS {
            return Err(CryptError::TooManyRecipients { what });
        }
        Ok(Self(all))
    }

    /// The recipients of the environment ([`RECIPIENTS_ENV`]); `None` when it is unset.
    pub fn from_env() -> Result<Option<Self>, CryptError> {
        env_text(RECIPIENTS_ENV)?
            .map(|text| Self::parse(RECIPIENTS_ENV, &text))
            .transpose()
    }

    /// Encrypts what is written to the returned writer into `output`; its `finish` ends
    /// the age file.
    pub fn encrypt<W: Write>(&self, output: W) -> io::Result<age::stream::StreamWriter<W>> {
        let recipients = self.0.iter().map(|r| r as &dyn age::Recipient);
        age::Encryptor::with_recipients(recipients)
            .map_err(io::Error::other)?
            .wrap_output(output)
    }
}

/// Secret keys that read encrypted archives (none: only plain archives are read).
#[derive(Clone, Default)]
pub struct Identities {
    keys: Arc<Vec<age::x25519::Identity>>,
    /// Plain archives are refused (see [`Identities::requiring_encryption`]).
    encrypted_only: bool,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({})", self.keys.len())
    }
}

impl Identities {
    /// Parses an identity file's text: one `AGE-SECRET-KEY-1…` per line, blank lines and
    /// `#` comments ignored.
    pub fn parse(what: &'static str, text: &str) -> Result<Self, CryptError> {
        Self::parse_all(what, &[text])
    }

    /// Those of `texts` (each as [`Identities::parse`] takes it), together.
    pub fn parse_all(what: &'static str, texts: &[impl AsRef<str>]) -> Result<Self, CryptError> {
        let keys = keys_in(what, texts, age::x25519::Identity::from_str)?;
        Ok(Self {
            keys: Arc::new(keys),
            encrypted_only: false,
        })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The identities of the environment ([`IDENTITIES_ENV`]); none when it is unset.
    pub fn from_env() -> Result<Self, CryptError> {
        let text = env_text(IDENTITIES_ENV)?;
        text.map_or_else(|| Ok(Self::default()), |t| Self::parse(IDENTITIES_ENV, &t))
    }

    /// The same, refusing plain archives: where identities are given to restore, an archive
    /// that is not encrypted is not the one meant (a plain one put in its place).
    pub fn requiring_encryption(mut self) -> Self {
        self.encrypted_only = !self.keys.is_empty();
        self
    }

    /// The archive read from `input`, in plain: decrypted when it is an age file (its
    /// header checked against the identities before any of it is given), as it is when not.
    pub fn plaintext<'a, R: Read + 'a>(&self, input: R) -> Result<Box<dyn Read + 'a>, CryptError> {
        let (head, input) = sniff(input).map_err(|source| CryptError::Io { source })?;
        let whole = io::Cursor::new(head.clone()).chain(input);
        if !is_encrypted(&head) {
            if self.encrypted_only {
                return Err(CryptError::Plain);
            }
            return Ok(Box::new(whole));
        }
        if self.keys.is_empty() {
            return Err(CryptError::Locked);
        }
        // The header is parsed line by line from a buffer, and bounded: age itself takes
        // any length, parsing it again for every line.
        let bounded = Arc::new(AtomicBool::new(true));
        let input = HeaderBound {
            inner: whole,
            read: 0,
            bounded: bounded.clone(),
        };
        let decryptor =
            age::Decryptor::new_buffered(io::BufReader::new(input)).map_err(header_error)?;
        bounded.store(false, Ordering::Relaxed);
        let identities = self.keys.iter().map(|i| i as &dyn age::Identity);
        match decryptor.decrypt(identities) {
            Ok(reader) => Ok(Box::new(Authenticated(reader))),
            Err(age::DecryptError::NoMatchingKeys) => Err(CryptError::NoMatchingKey),
            Err(e) => Err(header_error(e)),
        }
    }
}

/// The most recipients an archive is encrypted to (its header stays below [`MAX_HEADER`]).
pub const MAX_RECIPIENTS: usize = 100;
/// The longest age header read (100 recipients take about 10 KiB).
pub const MAX_HEADER: u64 = 16 << 10;
/// The bytes read while the header is parsed: it, the magic read first, and what its buffer
/// reads ahead.
const MAX_HEADER_READ: u64 = MAX_HEADER + MAGIC.len() as u64 + (8 << 10);
/// An age payload's chunk as stored: 64 KiB and its tag.
const STORED_CHUNK: u64 = (64 << 10) + 16;

/// How many stored bytes hold the first `plain` bytes of an archive, encrypted or not: what a
/// reader of an archive's start (the catalog) reads, every chunk needed whole (pure).
pub const fn stored_prefix(plain: u64) -> u64 {
    let chunks = plain.div_ceil(64 << 10);
    MAX_HEADER + 16 + if chunks == 0 { 1 } else { chunks } * STORED_CHUNK
}

/// Fails a read past [`MAX_HEADER`] bytes while the header is being parsed.
struct HeaderBound<R> {
    inner: R,
    read: u64,
    bounded: Arc<AtomicBool>,
}

impl<R: Read> Read for HeaderBound<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > MAX_HEADER_READ && self.bounded.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an age header longer than {MAX_HEADER} bytes"),
            ));
        }
        Ok(n)
    }
}

/// Whether `head` (an archive's first bytes) starts an age file.
pub fn is_encrypted(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// A decrypting reader whose failures say what they mean: data that does not authenticate
/// was changed or damaged, or cut short.
struct Authenticated<R>(R);

impl<R: Read> Read for Authenticated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => io::Error::new(
                e.kind(),
                format!(
                    "the encrypted archive does not authenticate ({e}): it was changed, \
                     damaged or cut short after it was stored"
                ),
            ),
            _ => e,
        })
    }
}

fn header_error(e: age::DecryptError) -> CryptError {
    match e {
        age::DecryptError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            CryptError::Header { why: e.to_string() }
        }
        age::DecryptError::Io(source) => CryptError::Io { source },
        other => CryptError::Header {
            why: other.to_string(),
        },
    }
}

/// The text of the environment variable `var`, `None` when it is unset.
fn env_text(var: &'static str) -> Result<Option<String>, CryptError> {
    match std::env::var(var) {
        Ok(text) => Ok(Some(text)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(CryptError::NotText { var }),
    }
}

/// The first bytes of `input` (as many as the age magic has, fewer at its end) and the rest.
fn sniff<R: Read>(mut input: R) -> io::Result<(Vec<u8>, R)> {
    let mut head = vec![0; MAGIC.len()];
    let got = crate::engine::readahead::fill(&mut input, &mut head)?;
    head.truncate(got);
    Ok((head, input))
}

/// The keys of `texts`, each holding one or more (pure).
fn keys_in<K>(
    what: &'static str,
    texts: &[impl AsRef<str>],
    parse: impl Fn(&str) -> Result<K, &'static str>,
) -> Result<Vec<K>, CryptError> {
    let mut all = Vec::new();
    for text in texts {
        all.extend(keys(what, text.as_ref(), &parse)?);
    }
    Ok(all)
}

/// The keys of `text`, one per line (pure).
fn keys<K>(
    what: &'static str,
    text: &str,
    parse: &impl Fn(&str) -> Result<K, &'static str>,
) -> Result<Vec<K>, CryptError> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = parse(line).map_err(|why| CryptError::BadKey {
            what,
            line: i + 1,
            why,
        })?;
        found.push(key);
    }
    if found.is_empty() {
        return Err(CryptError::NoKeys { what });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn key() -> (String, String) {
        let identity = age::x25519::Identity::generate();
        let public = identity.to_public().to_string();
        let secret = identity.to_string().expose_secret().to_owned();
        (public, secret)
    }

    fn encrypted(recipients: &str, plain: &[u8]) -> Vec<u8> {
        let recipients = Recipients::parse("recipients", recipients).unwrap();
        let mut writer = recipients.encrypt(Vec::new()).unwrap();
        writer.write_all(plain).unwrap();
        writer.finish().unwrap()
    }

    fn read_all(identities: &Identities, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut reader = identities.plaintext(bytes).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn an_archive_encrypted_to_a_key_is_read_with_its_identity_alone() {
        let (public, secret) = key();
        let (_, other) = key();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = encrypted(&public, &plain);
        assert!(is_encrypted(&bytes));
        assert!(!bytes.windows(64).any(|w| w == &plain[1000..1064]));
        let mine = Identities::parse("identities", &format!("# mine\n\n{secret}\n")).unwrap();
        assert_eq!(read_all(&mine, &bytes).unwrap(), plain);
        let theirs = Identities::parse("identities", &other).unwrap();
        assert!(
            read_all(&theirs, &bytes)
                .unwrap_err()
                .contains("none of the identities")
        );
        let err = read_all(&Identities::default(), &bytes).unwrap_err();
        assert!(err.contains("the archive is encrypted"), "{err}");
    }

    #[test]
    fn after_a_rotation_old_and_new_archives_are_read_with_both_identities() {
        let (old_public, old_secret) = key();
        let (new_public, new_secret) = key();
        let old = encrypted(&old_public, b"old");
        let new = encrypted(&new_public, b"new");
        let both = Identities::parse_all("identities", &[new_secret, old_secret]).unwrap();
        assert_eq!(read_all(&both, &old).unwrap(), b"old");
        assert_eq!(read_all(&both, &new).unwrap(), b"new");
    }

    #[test]
    fn a_plain_archive_reads_as_it_is_with_or_without_identities() {
        let (_, secret) = key();
        let ids = Identities::parse("identities", &secret).unwrap();
        for plain in [&b""[..], b"short", &[7u8; 5000]] {
            assert_eq!(read_all(&ids, plain).unwrap(), plain);
            assert_eq!(read_all(&Identities::default(), plain).unwrap(), plain);
        }
    }

    #[test]
    fn changed_or_cut_encrypted_data_does_not_read() {
        let (public, secret) = key();
        let ids = Identities::parse("identities", &secret).unwrap();
        let bytes = encrypted(&public, &[1u8; 150_000]);
        let mut changed = bytes.clone();
        let at = changed.len() - 1000;
        changed[at] ^= 1;
        assert!(
            read_all(&ids, &changed)
                .unwrap_err()
                .contains("does not authenticate")
        );
        let cut = &bytes[..bytes.len() - 70_000];
        assert!(
            read_all(&ids, cut)
                .unwrap_err()
                .contains("does not authenticate")
        );
    }

    #[test]
    fn a_hostile_header_of_any_length_is_refused_at_its_bound() {
        let (_, secret) = key();
        let ids = Identities::parse("identities", &secret).unwrap();
        let mut hostile = MAGIC.to_vec();
        for _ in 0..200_000 {
            hostile.extend_from_slice(b"-> a\n\n");
        }
        let err = read_all(&ids, &hostile).unwrap_err();
        assert!(
            err.contains("not valid (an age header longer than"),
            "{err}"
        );
    }

    #[test]
    fn a_hundred_recipients_read_and_more_are_refused() {
        let keys: Vec<(String, String)> = (0..MAX_RECIPIENTS).map(|_| key()).collect();
        let publics: Vec<String> = keys.iter().map(|(p, _)| p.clone()).collect();
        let bytes = encrypted(&publics.join("\n"), b"many");
        let last = Identities::parse("identities", &keys[MAX_RECIPIENTS - 1].1).unwrap();
        assert_eq!(read_all(&last, &bytes).unwrap(), b"many");
        let mut more = publics.clone();
        more.push(key().0);
        let err = Recipients::parse_all("recipients", &more).unwrap_err();
        assert!(err.to_string().contains("at most 100"), "{err}");
    }

    #[test]
    fn identities_given_to_restore_refuse_a_plain_archive() {
        let (_, secret) = key();
        let ids = Identities::parse("identities", &secret).unwrap();
        let err = read_all(&ids.clone().requiring_encryption(), b"plain tar").unwrap_err();
        assert!(err.contains("is not encrypted"), "{err}");
        assert_eq!(read_all(&ids, b"plain tar").unwrap(), b"plain tar");
        let none = Identities::default().requiring_encryption();
        assert_eq!(read_all(&none, b"plain tar").unwrap(), b"plain tar");
    }

    #[test]
    fn the_stored_prefix_holds_whole_chunks() {
        let (public, secret) = key();
        let ids = Identities::parse("identities", &secret).unwrap();
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let bytes = encrypted(&public, &plain);
        for want in [1u64, 65_536, 65_537, 200_000] {
            let cut = &bytes[..(stored_prefix(want) as usize).min(bytes.len())];
            let mut reader = ids.plaintext(cut).unwrap();
            let mut got = vec![0; want as usize];
            reader.read_exact(&mut got).unwrap();
            assert_eq!(got, plain[..want as usize], "{want}");
        }
    }

    #[test]
    fn bad_keys_name_their_line() {
        let (public, _) = key();
        let err = Recipients::parse("recipients", &format!("{public}\nage1nope\n")).unwrap_err();
        assert!(err.to_string().starts_with("recipients, line 2:"), "{err}");
        let err = Identities::parse("identities", "# only a comment\n").unwrap_err();
        assert!(err.to_string().contains("holds no key"), "{err}");
        // A public key where a secret one goes is refused, not taken as nothing.
        assert!(Identities::parse("identities", &public).is_err());
    }
}
