//! Where the peers file lives (BEHAVIOUR.md §4.6, §13.2): a small [`PeerStore`] interface
//! with a file store ([`FileStore`], `peers.json`, written atomically) and an in-memory
//! store ([`MemoryStore`], for tests and simulations: it outlives a node, so a restarted
//! node finds its data). The format is `peerpool_proto::pool::peers_file`.
//!
//! [`load_records`] never leaves the node stuck on a bad file: an unreadable or corrupt
//! content is set aside (a file is renamed to `peers.json.corrupt-<unix seconds>`) and
//! reported, and the node starts empty. [`write_atomically`] is the one atomic write of
//! the project (identity.json uses it too, through [`save_identity`]): a temporary file in
//! the same directory, fsync, rename over the target, fsync of the directory; a crash at
//! any moment leaves either the old or the new complete file, and at worst a temporary
//! file (`.<name>.<random>.tmp`) that [`remove_stale_temp_files`] removes at the next
//! start.

use peerpool_proto::identity::Identity;
use peerpool_proto::pool::peers_file::{parse_peers_file, serialize_peers_file};
use peerpool_proto::pool::{PeerRecord, PeersFileError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Why stored peers-file content could not be used.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum Unusable {
    /// The bytes are not UTF-8 text.
    #[error("not UTF-8")]
    NotUtf8,
    /// The text is not a peers file.
    #[error(transparent)]
    Format(PeersFileError),
}

/// Why the store failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading, writing, syncing or renaming failed; the previous content (if any) is
    /// intact.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<io::Error>,
    },
    /// The records could not be serialized.
    #[error("peers file: {0}")]
    Format(#[from] PeersFileError),
    /// The content was unusable and has been set aside; the node starts with no peers.
    #[error("peers file unusable ({reason}); set aside to {moved_to}")]
    Corrupt {
        /// Why it was unusable.
        reason: Unusable,
        /// Where it is now.
        moved_to: String,
    },
    /// The content was unusable and could not even be set aside.
    #[error("peers file unusable ({reason}) and not set aside: {source}")]
    CorruptNotMoved {
        /// Why it was unusable.
        reason: Unusable,
        /// Why setting aside failed.
        source: Arc<io::Error>,
    },
    /// A save was asked while too many were waiting; a later save will write the state.
    #[error("the peers-file saver is busy")]
    Busy,
    /// The node stopped before the save ran.
    #[error("the node stopped")]
    Stopped,
}

/// A future returned by a [`PeerStore`].
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Keeps the bytes of the peers file.
pub trait PeerStore: fmt::Debug + Send + Sync + 'static {
    /// The stored bytes; `None` if there are none yet.
    fn load(&self) -> StoreFuture<'_, Option<Vec<u8>>>;
    /// Replaces the stored bytes, atomically.
    fn save(&self, contents: Vec<u8>) -> StoreFuture<'_, ()>;
    /// Moves unusable content out of the way; returns where it went.
    fn set_aside(&self) -> StoreFuture<'_, String>;
}

/// `peers.json` on disk. Blocking file calls run on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store at `path` (typically `<data_dir>/peers.json`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source: Arc::new(source),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(StoreError::Stopped))
}

impl PeerStore for FileStore {
    /// Reads the file, after removing the temporary files that saves interrupted by a
    /// crash left beside it.
    fn load(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        let store = self.clone();
        Box::pin(blocking(move || {
            if let Err(e) = remove_stale_temp_files(&store.path) {
                tracing::debug!(error = %e, "stale temporary files not removed");
            }
            match fs::read(&store.path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(store.io_error(e)),
            }
        }))
    }

    fn save(&self, contents: Vec<u8>) -> StoreFuture<'_, ()> {
        let store = self.clone();
        Box::pin(blocking(move || {
            write_atomically(&store.path, &contents).map_err(|e| store.io_error(e))
        }))
    }

    fn set_aside(&self) -> StoreFuture<'_, String> {
        let store = self.clone();
        Box::pin(blocking(move || {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut name = store.path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".corrupt-{secs}"));
            let moved_to = store.path.with_file_name(name);
            fs::rename(&store.path, &moved_to).map_err(|e| store.io_error(e))?;
            Ok(moved_to.display().to_string())
        }))
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory
/// (`.<name>.<random>.tmp`), fsync, rename over `path`, fsync of the directory.
///
/// Errors: any I/O error; `path` is then unchanged.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Writes `identity` to `path` in octez's `identity.json` format, atomically
/// ([`write_atomically`]), creating the directory first.
///
/// Errors: any I/O error; `path` is then unchanged.
pub fn save_identity(path: &Path, identity: &Identity) -> io::Result<()> {
    fs::create_dir_all(parent_dir(path))?;
    write_atomically(path, identity.to_json().as_bytes())
}

/// Removes the temporary files that [`write_atomically`] calls on `path` left behind when
/// the process was killed before their rename. Call it at start, before anything saves
/// `path`: a save in flight would lose its temporary file. Returns how many were removed.
///
/// Errors: the directory cannot be listed, or a file cannot be removed.
pub fn remove_stale_temp_files(path: &Path) -> io::Result<usize> {
    let prefix = temp_prefix(path);
    let mut removed = 0;
    let entries = match fs::read_dir(parent_dir(path)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

const TEMP_SUFFIX: &str = ".tmp";

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `.<file name>.`: the temporary files of `path` start with it.
fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    format!(".{name}.")
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// A store in memory. Clones share the content, so a test or a simulation can keep one
/// across a node's restarts, or look at what the node saved.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryContent>>,
}

#[derive(Debug, Default)]
struct MemoryContent {
    current: Option<Vec<u8>>,
    set_aside: Vec<Vec<u8>>,
    saves: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `contents`.
    pub fn with_contents(contents: impl Into<Vec<u8>>) -> Self {
        let store = Self::default();
        store.lock().current = Some(contents.into());
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryContent> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored bytes.
    pub fn contents(&self) -> Option<Vec<u8>> {
        self.lock().current.clone()
    }

    /// How many saves succeeded.
    pub fn saves(&self) -> u64 {
        self.lock().saves
    }

    /// Contents set aside as unusable, oldest first.
    pub fn set_aside_contents(&self) -> Vec<Vec<u8>> {
        self.lock().set_aside.clone()
    }
}

impl PeerStore for MemoryStore {
    fn load(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        let current = self.lock().current.clone();
        Box::pin(async move { Ok(current) })
    }

    fn save(&self, contents: Vec<u8>) -> StoreFuture<'_, ()> {
        let mut state = self.lock();
        state.current = Some(contents);
        state.saves += 1;
        Box::pin(async { Ok(()) })
    }

    fn set_aside(&self) -> StoreFuture<'_, String> {
        let mut state = self.lock();
        let n = state.set_aside.len();
        if let Some(old) = state.current.take() {
            state.set_aside.push(old);
        }
        Box::pin(async move { Ok(format!("memory:set-aside-{n}")) })
    }
}

/// Loads the peers file from `store`. Nothing stored or empty content gives an empty
/// list; content that is not UTF-8 or not a peers file is set aside.
///
/// Errors: [`StoreError::Io`] (nothing was read), [`StoreError::Corrupt`] (set aside),
/// [`StoreError::CorruptNotMoved`]. In every case the node starts with no peers.
pub async fn load_records<P: DeserializeOwned>(
    store: &dyn PeerStore,
) -> Result<Vec<PeerRecord<P>>, StoreError> {
    let Some(bytes) = store.load().await? else {
        return Ok(Vec::new());
    };
    let reason = match String::from_utf8(bytes) {
        Err(_) => Unusable::NotUtf8,
        Ok(text) if text.trim().is_empty() => return Ok(Vec::new()),
        Ok(text) => match parse_peers_file(&text) {
            Ok(records) => return Ok(records),
            Err(e) => Unusable::Format(e),
        },
    };
    match store.set_aside().await {
        Ok(moved_to) => Err(StoreError::Corrupt { reason, moved_to }),
        Err(StoreError::Io { source, .. }) => Err(StoreError::CorruptNotMoved { reason, source }),
        Err(e) => Err(e),
    }
}

/// Serializes `records` and saves them in `store`.
///
/// Errors: [`StoreError::Format`], [`StoreError::Io`].
pub async fn save_records<P: Serialize>(
    store: &dyn PeerStore,
    records: &[PeerRecord<P>],
) -> Result<(), StoreError> {
    let text = serialize_peers_file(records)?;
    store.save(text.into_bytes()).await
}

/// A save for the saver task: the records, and who waits for the result (periodic saves
/// report through the node's events instead).
pub(crate) struct SaveJob<P> {
    pub records: Vec<PeerRecord<P>>,
    pub reply: Option<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
}

/// The saver task: serializes and saves each job in turn, off the owner task, so saving
/// never blocks the node. Ends when the owner drops its sender.
pub(crate) async fn run_saver<P: Serialize + Send + 'static>(
    store: Arc<dyn PeerStore>,
    mut jobs: tokio::sync::mpsc::Receiver<SaveJob<P>>,
    events: crate::event::EventSender,
) {
    while let Some(job) = jobs.recv().await {
        let result = save_records(store.as_ref(), &job.records).await;
        match &result {
            Ok(()) => tracing::debug!(peers = job.records.len(), "peers file saved"),
            Err(e) => tracing::error!(error = %e, "peers file not saved"),
        }
        match job.reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                let _ = events.send(crate::event::NodeEvent::PeersFileSaved(result));
            }
        }
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
            std::env::temp_dir().join(format!("peerpool-persist-{}-{name}", std::process::id()));
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

    #[tokio::test]
    async fn a_file_store_saves_atomically_and_loads_back() {
        let d = dir("roundtrip");
        let store = FileStore::new(d.join("peers.json"));
        assert!(load_records::<u64>(&store).await.unwrap().is_empty());
        let recs = vec![record(1), record(2)];
        save_records(&store, &recs).await.unwrap();
        assert_eq!(load_records::<u64>(&store).await.unwrap(), recs);
        save_records(&store, &recs[..1]).await.unwrap();
        assert_eq!(load_records::<u64>(&store).await.unwrap(), recs[..1]);
        // Only the file itself is left: no temporary file.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        // Temporary files left by a crash are removed at the next load, and only those.
        for name in [
            ".peers.json.x1Y2z3.tmp",
            ".peers.json.a.tmp",
            ".other.json.b.tmp",
        ] {
            fs::write(d.join(name), "partial").unwrap();
        }
        assert_eq!(load_records::<u64>(&store).await.unwrap(), recs[..1]);
        let mut left: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".other.json.b.tmp", "peers.json"]);
        fs::remove_file(d.join(".other.json.b.tmp")).unwrap();
        fs::write(store.path(), "").unwrap();
        assert!(load_records::<u64>(&store).await.unwrap().is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[tokio::test]
    async fn corrupt_content_is_set_aside_and_the_node_starts_empty() {
        let d = dir("corrupt");
        let store = FileStore::new(d.join("peers.json"));
        fs::write(store.path(), "[{\"peer_id\": ").unwrap();
        match load_records::<u64>(&store).await {
            Err(StoreError::Corrupt { moved_to, .. }) => {
                assert!(moved_to.contains("peers.json.corrupt-"), "{moved_to}");
                assert_eq!(fs::read_to_string(&moved_to).unwrap(), "[{\"peer_id\": ");
            }
            other => panic!("{other:?}"),
        }
        assert!(!store.path().exists());
        assert!(load_records::<u64>(&store).await.unwrap().is_empty());

        let memory = MemoryStore::with_contents(vec![0xff, 0xfe, b'[']);
        assert!(matches!(
            load_records::<u64>(&memory).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(memory.set_aside_contents(), vec![vec![0xff, 0xfe, b'[']]);
        assert!(load_records::<u64>(&memory).await.unwrap().is_empty());
        fs::remove_dir_all(d).unwrap();
    }
}
