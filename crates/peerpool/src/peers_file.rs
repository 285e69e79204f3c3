//! `peers.json` on disk: atomic save and a load that never leaves the node stuck on a bad
//! file (BEHAVIOUR.md §4.6, §13.2). The format itself is `peerpool_proto::pool::peers_file`.
//!
//! - [`save`] writes `peers.json.tmp` in the same directory, fsyncs it, renames it over
//!   `peers.json`, then fsyncs the directory: a crash at any moment leaves either the old
//!   or the new complete file.
//! - [`load`] returns an empty list for a missing or empty file. A file that cannot be
//!   read or parsed is moved aside to `peers.json.corrupt-<unix time>` and reported as
//!   [`PeersFileIoError::Corrupt`], so the caller logs it and starts empty.
//!
//! These are blocking calls (std::fs); the pool task runs them with `spawn_blocking`.

use peerpool_proto::pool::peers_file::{parse_peers_file, serialize_peers_file};
use peerpool_proto::pool::{PeerRecord, PeersFileError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Why saving or loading the peers file failed.
#[derive(Debug, Error)]
pub enum PeersFileIoError {
    /// The records could not be serialized.
    #[error("peers file {path}: {source}")]
    Serialize {
        /// The target file.
        path: PathBuf,
        /// The format error.
        source: PeersFileError,
    },
    /// Writing, syncing or renaming failed; the previous file (if any) is intact.
    #[error("cannot save peers file {path}: {source}")]
    Write {
        /// The target file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file was unreadable or corrupt and has been moved aside.
    #[error("peers file {path} is unusable ({reason}); moved aside to {moved_to}")]
    Corrupt {
        /// The file that was read.
        path: PathBuf,
        /// Where it is now.
        moved_to: PathBuf,
        /// Why it was unusable.
        reason: String,
    },
    /// The file was unreadable or corrupt and could not even be moved aside.
    #[error("peers file {path} is unusable ({reason}) and could not be moved aside: {source}")]
    CorruptNotMoved {
        /// The file that was read.
        path: PathBuf,
        /// Why it was unusable.
        reason: String,
        /// Why the rename failed.
        source: io::Error,
    },
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Serializes `records` and writes them atomically to `path`.
///
/// Errors: [`PeersFileIoError::Serialize`], [`PeersFileIoError::Write`].
pub fn save<M: Serialize>(path: &Path, records: &[PeerRecord<M>]) -> Result<(), PeersFileIoError> {
    let text = serialize_peers_file(records).map_err(|source| PeersFileIoError::Serialize {
        path: path.to_owned(),
        source,
    })?;
    save_text(path, &text)
}

/// Writes `text` atomically to `path`: temp file in the same directory, fsync, rename,
/// fsync of the directory.
///
/// Errors: [`PeersFileIoError::Write`].
pub fn save_text(path: &Path, text: &str) -> Result<(), PeersFileIoError> {
    let write_err = |source| PeersFileIoError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(write_err)?;
    f.write_all(text.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(write_err)?;
    sync_dir(path).map_err(write_err)
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// Loads `path`. A missing or empty file gives an empty list.
///
/// Errors: [`PeersFileIoError::Corrupt`] (the file was moved to
/// `<path>.corrupt-<unix seconds>`) or [`PeersFileIoError::CorruptNotMoved`]; in both cases
/// the caller should log and start with no peers.
pub fn load<M: DeserializeOwned>(path: &Path) -> Result<Vec<PeerRecord<M>>, PeersFileIoError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    load_at(path, now)
}

/// [`load`] with the Unix time used to name a moved-aside file.
pub fn load_at<M: DeserializeOwned>(
    path: &Path,
    unix_secs: u64,
) -> Result<Vec<PeerRecord<M>>, PeersFileIoError> {
    let reason = match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => format!("unreadable: {e}"),
        Ok(bytes) => match String::from_utf8(bytes) {
            Err(e) => format!("not UTF-8: {e}"),
            Ok(text) => match parse_peers_file(&text) {
                Ok(records) => return Ok(records),
                Err(e) => e.to_string(),
            },
        },
    };
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{unix_secs}"));
    let moved_to = path.with_file_name(name);
    match fs::rename(path, &moved_to) {
        Ok(()) => Err(PeersFileIoError::Corrupt {
            path: path.to_owned(),
            moved_to,
            reason,
        }),
        Err(source) => Err(PeersFileIoError::CorruptNotMoved {
            path: path.to_owned(),
            reason,
            source,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use peerpool_proto::identity::PeerId;
    use peerpool_proto::pool::Time;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("peerpool-peers-file-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn record(n: u8) -> PeerRecord<u64> {
        PeerRecord {
            peer_id: PeerId([n; 16]),
            created: Time::from_secs(1_700_000_000),
            trusted: n % 2 == 0,
            peer_metadata: u64::from(n),
            events: Vec::new(),
            last_failed_connection: None,
            last_rejected_connection: None,
            last_established_connection: None,
            last_disconnection: None,
            points: Vec::new(),
        }
    }

    #[test]
    fn save_then_load() {
        let d = dir("roundtrip");
        let path = d.join("peers.json");
        assert!(load::<u64>(&path).unwrap().is_empty());
        let recs = vec![record(1), record(2)];
        save(&path, &recs).unwrap();
        assert_eq!(load::<u64>(&path).unwrap(), recs);
        assert!(!tmp_path(&path).exists());
        save(&path, &recs[..1]).unwrap();
        assert_eq!(load::<u64>(&path).unwrap(), recs[..1]);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn empty_file_is_an_empty_list() {
        let d = dir("empty");
        let path = d.join("peers.json");
        fs::write(&path, "").unwrap();
        assert!(load::<u64>(&path).unwrap().is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let d = dir("corrupt");
        let path = d.join("peers.json");
        fs::write(&path, "[{\"peer_id\": ").unwrap();
        match load_at::<u64>(&path, 1234) {
            Err(PeersFileIoError::Corrupt { moved_to, .. }) => {
                assert_eq!(moved_to, d.join("peers.json.corrupt-1234"));
                assert_eq!(fs::read_to_string(&moved_to).unwrap(), "[{\"peer_id\": ");
            }
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
        assert!(load::<u64>(&path).unwrap().is_empty());
        fs::write(&path, [0xff, 0xfe, b'[']).unwrap();
        assert!(matches!(
            load_at::<u64>(&path, 5),
            Err(PeersFileIoError::Corrupt { .. })
        ));
        fs::remove_dir_all(d).unwrap();
    }
}
