//! KV blobs: a state's engine KV cache on disk, so that it survives a restart.
//!
//! An engine that can serialize a sequence's KV ([`Engine::kv_export`]; llama.cpp can,
//! mistral.rs cannot) hands the pack opaque bytes; the pack stores them here under the state
//! hash, and when a state is needed that the engine no longer holds, loads them back instead
//! of prefilling the state again.
//!
//! A blob holds the KV of a range of its state's token positions, `start..end`. A state made
//! by extending another (merge, infer) whose blob exists stores only the new positions and
//! names that state as its `parent`: an agent step writes the KV of its delta, not of its
//! whole context, and restoring a state loads the chain of blobs from the root (`start` 0)
//! down. `end` is the state's length for a state made by a prefill (create, merge, compact);
//! an infer's blob ends where its prompt does: the engine exports it before it decodes, so
//! that hashing it for the receipt overlaps the decode (`pack::kv`), and a restore prefills
//! the generated tail. The next infer's blob starts there and holds that tail.
//!
//! One file per state, `<state hash>.kv`:
//!
//! ```text
//! "SPKV" 0x00 0x01 "\r\n"        8 bytes: magic and format version 1
//! header length                  u32, little-endian
//! header                         JSON: state, model, parent, start, end, raw_bytes,
//!                                raw_sha256, codec
//! body                           the raw KV bytes (codec "raw"), or one zstd frame of them
//!                                (codec "zstd", which earlier versions wrote)
//! ```
//!
//! Blobs are written raw: f16 keys and values shrink by about 8% under zstd's fastest level,
//! and compressing them on the way out and decompressing on the way back cost more time
//! than the bytes they save (`docs/PERFORMANCE.md`, section 3).
//!
//! [`KvBlobStore::put_behind`] writes a blob behind the operation that made it, on a writer
//! thread, so that an agent's step does not wait for the disk: until the blob lands, the
//! store answers [`contains`](KvBlobStore::contains) and [`end_of`](KvBlobStore::end_of)
//! from the queue, and reading or removing it waits for it. At most [`QUEUE`] blobs wait;
//! a further `put_behind` blocks until one lands. Dropping the last handle of a store writes
//! what is queued.
//!
//! A blob is written to a temporary file in the same directory and renamed into place, so a
//! reader never sees half a blob. It is not fsynced: a blob is a cache of what the ledger
//! already proves, and one cut short by a crash fails its checksum and is prefilled again.
//! Reading checks the magic, the state and model it was written for, the size and the
//! SHA-256 of the decompressed bytes; anything else is [`KvBlobError::Corrupt`]. The
//! directory is bounded: beyond `budget_bytes`, the least recently used blobs are deleted.
//!
//! Replicas that serve one shared store keep their blobs in Redis instead
//! ([`KvBlobStore::open_redis`], `--kv redis://...`), the same bytes split over keys of at
//! most 4 MiB (see `redis_tier.rs`): a state computed on one replica is restored on another
//! instead of prefilled. That tier is bounded by the server's `maxmemory`, not by the store,
//! and it is written before an operation answers, not behind it: a replica asked for a
//! state another has just made finds its blob.
//!
//! [`Engine::kv_export`]: crate::engine::Engine::kv_export

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::state::{ModelFingerprint, StateHash};

mod redis_tier;
use redis_tier::RedisTier;

const MAGIC: &[u8; 8] = b"SPKV\x00\x01\r\n";
const MAX_HEADER: u32 = 64 * 1024;
/// No KV a sane model makes for one sequence comes near this; a header claiming more is
/// corrupt, not a reason to allocate.
const MAX_RAW: u64 = 16 << 30;
/// Blobs that may wait for the writer thread.
pub const QUEUE: usize = 8;

/// Errors reading or writing KV blobs.
#[derive(Debug, thiserror::Error)]
pub enum KvBlobError {
    /// The file system failed.
    #[error("KV blob {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The blob is not an intact blob for this state and model.
    #[error("KV blob {blob} is corrupt: {reason}")]
    Corrupt {
        /// Where it is: the file, or the Redis key.
        blob: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Redis tier failed (or could not be reached).
    #[error("KV blob tier {blob}: {reason}")]
    Redis {
        /// The server (without its password) or the key.
        blob: String,
        /// What failed.
        reason: String,
    },
    /// A blob was described wrongly by its caller.
    #[error("KV blob {blob}: {reason}")]
    Invalid {
        /// The blob.
        blob: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    state: StateHash,
    model: ModelFingerprint,
    /// The state whose blob holds positions `..start` (none when `start` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<StateHash>,
    /// First position held.
    start: usize,
    /// One past the last position held.
    end: usize,
    raw_bytes: u64,
    raw_sha256: String,
    codec: String,
}

/// A blob read back and checked.
#[derive(Debug)]
pub struct KvBlob {
    /// The state whose blob holds positions `..start` (none when `start` is 0).
    pub parent: Option<StateHash>,
    /// First token position whose KV it holds.
    pub start: usize,
    /// One past the last (the state's length, or one less for an infer's state).
    pub end: usize,
    /// The engine's bytes, as exported.
    pub raw: Vec<u8>,
    /// Their SHA-256, hex, checked against the header as the blob was read.
    pub sha256: String,
}

/// What [`KvBlobStore::put`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// KV bytes before compression.
    pub raw_bytes: usize,
    /// Bytes on disk.
    pub file_bytes: usize,
}

/// KV blobs keyed by state hash, in a directory or in Redis. Clones share the tier and the
/// queue of blobs [`put_behind`](Self::put_behind) has not written yet.
#[derive(Debug, Clone)]
pub struct KvBlobStore {
    tier: Tier,
    budget_bytes: u64,
    behind: Arc<OnceLock<Behind>>,
}

/// Where blobs live.
#[derive(Debug, Clone)]
enum Tier {
    /// One `<state hex>.kv` file each, in this directory.
    Dir(PathBuf),
    /// In a Redis server replicas share.
    Redis(RedisTier),
}

/// One blob for the writer thread.
struct Job {
    state: StateHash,
    model: ModelFingerprint,
    parent: Option<StateHash>,
    range: std::ops::Range<usize>,
    raw: Vec<u8>,
    sha256: String,
}

/// The writer thread of a store and the blobs queued for it (state: where its blob ends).
#[derive(Debug)]
struct Behind {
    queued: Mutex<HashMap<StateHash, usize>>,
    landed: Condvar,
    tx: Mutex<Option<mpsc::SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({}, {:?})", self.state.short(), self.range)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Behind {
    /// The queued blobs; waits while `until` holds of them.
    fn wait_while(&self, until: impl Fn(&HashMap<StateHash, usize>) -> bool) {
        let mut queued = lock(&self.queued);
        while until(&queued) {
            queued = self.landed.wait(queued).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        // Closing the queue lets the thread write what is in it, then end.
        lock(&self.tx).take();
        if let Some(thread) = lock(&self.thread).take() {
            // The writer itself may hold the last handle for a moment; it ends on its own.
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                warn!("KV blob writer panicked");
            }
        }
    }
}

/// Default bound on a blob directory: 2 GiB.
pub const DEFAULT_BUDGET_BYTES: u64 = 2 << 30;

fn redis_err(blob: String) -> impl FnOnce(redis::RedisError) -> KvBlobError {
    move |e| KvBlobError::Redis {
        blob,
        reason: e.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KvBlobError + '_ {
    move |source| KvBlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a blob's magic, header length and header; gives back the header and where the body
/// starts. The error says what is wrong.
fn read_header(r: &mut impl std::io::Read) -> Result<(Header, usize), String> {
    let bad_magic = || "not a state-pack KV blob (bad magic)".to_string();
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(|_| bad_magic())?;
    if head[..MAGIC.len()] != MAGIC[..] {
        return Err(bad_magic());
    }
    let header_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    let out_of_range = || format!("header length {header_len} is out of range");
    if header_len > MAX_HEADER {
        return Err(out_of_range());
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header).map_err(|_| out_of_range())?;
    let header = serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))?;
    Ok((header, 12 + header_len as usize))
}

/// Whether a blob's header fits the state and model asked for, before its body is read.
fn check_header(
    header: &Header,
    state: &StateHash,
    model: &ModelFingerprint,
) -> Result<(), String> {
    if header.state != *state {
        return Err(format!("it holds state {}", header.state.short()));
    }
    if header.model != *model {
        return Err("it was written by another model".into());
    }
    if header.start >= header.end || (header.start > 0) != header.parent.is_some() {
        return Err(format!(
            "range {}..{} with parent {:?}",
            header.start, header.end, header.parent
        ));
    }
    if header.raw_bytes > MAX_RAW {
        return Err(format!("{} raw bytes", header.raw_bytes));
    }
    if header.codec != "raw" && header.codec != "zstd" {
        return Err(format!("codec {} not supported", header.codec));
    }
    Ok(())
}

impl KvBlobStore {
    /// The blob directory that belongs to database `db`: `<db>.kv` next to it.
    pub fn dir_for_database(db: &Path) -> PathBuf {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".kv");
        db.with_file_name(name)
    }

    /// Opens the blob directory `dir`, bounded to `budget_bytes`; it is created when the
    /// first blob is written. A path that exists and is not a directory is refused.
    pub fn open(dir: impl Into<PathBuf>, budget_bytes: u64) -> Result<Self, KvBlobError> {
        let dir = dir.into();
        if dir.exists() && !dir.is_dir() {
            return Err(io(&dir)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            )));
        }
        Ok(Self {
            tier: Tier::Dir(dir),
            budget_bytes,
            behind: Arc::default(),
        })
    }

    /// Connects to the Redis server at `url` (`redis://[user:password@]host:port[/db]`)
    /// and keeps blobs there. The tier is bounded by the server's `maxmemory` and eviction
    /// policy (`allkeys-lru`); an evicted blob costs a prefill.
    pub fn open_redis(url: &str) -> Result<Self, KvBlobError> {
        let tier = RedisTier::connect(url).map_err(|reason| KvBlobError::Redis {
            blob: redis_tier::without_password(url),
            reason,
        })?;
        Ok(Self {
            tier: Tier::Redis(tier),
            budget_bytes: u64::MAX,
            behind: Arc::default(),
        })
    }

    /// A directory path, or a `redis://` or `rediss://` URL, as [`open`](Self::open) or
    /// [`open_redis`](Self::open_redis) take them.
    pub fn open_location(location: &str, budget_bytes: u64) -> Result<Self, KvBlobError> {
        if location.starts_with("redis://") || location.starts_with("rediss://") {
            Self::open_redis(location)
        } else {
            Self::open(location, budget_bytes)
        }
    }

    /// Where the blobs are: the directory, or the Redis URL without its password.
    pub fn location(&self) -> String {
        match &self.tier {
            Tier::Dir(dir) => dir.display().to_string(),
            Tier::Redis(r) => r.shown().to_string(),
        }
    }

    /// For errors that concern the whole tier.
    fn here(&self) -> PathBuf {
        PathBuf::from(self.location())
    }

    /// Where the blob of `state` is, for messages.
    fn describe(&self, state: &StateHash) -> String {
        match &self.tier {
            Tier::Dir(_) => self.path(state).display().to_string(),
            Tier::Redis(r) => r.describe(state),
        }
    }

    /// The writer thread and its queue, started on first use (by a directory tier only:
    /// Redis is written before the operation answers). The thread holds a handle of its own
    /// (not sharing the queue), so that it ends when the store's last handle goes.
    fn behind(&self) -> Result<&Behind, KvBlobError> {
        if let Some(b) = self.behind.get() {
            return Ok(b);
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let disk = Self {
            tier: self.tier.clone(),
            budget_bytes: self.budget_bytes,
            behind: Arc::default(),
        };
        // Weak: the queue's last handle going closes the channel, which ends the thread.
        let shared = Arc::downgrade(&self.behind);
        let thread = std::thread::Builder::new()
            .name("kv-blob-writer".into())
            .spawn(move || {
                for job in rx {
                    let state = job.state;
                    if let Err(e) = disk.put_hashed(&job) {
                        warn!(state = %state.short(), error = %e, "cannot write KV blob");
                    }
                    if let Some(shared) = shared.upgrade() {
                        if let Some(b) = shared.get() {
                            lock(&b.queued).remove(&state);
                            b.landed.notify_all();
                        }
                    }
                }
            })
            .map_err(io(&self.here()))?;
        let behind = Behind {
            queued: Mutex::default(),
            landed: Condvar::new(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        };
        // Two first callers racing: the loser's thread ends as its queue closes.
        let _ = self.behind.set(behind);
        self.behind
            .get()
            .ok_or_else(|| io(&self.here())(std::io::Error::other("KV blob writer did not start")))
    }

    /// Waits until the blob of `state`, if queued, is on disk (or failed to get there).
    fn settle(&self, state: &StateHash) {
        if let Some(b) = self.behind.get() {
            b.wait_while(|q| q.contains_key(state));
        }
    }

    /// Waits until every blob [`put_behind`](Self::put_behind) queued is on disk (or failed
    /// to get there).
    pub fn flush(&self) {
        if let Some(b) = self.behind.get() {
            b.wait_while(|q| !q.is_empty());
        }
    }

    /// Like [`put`](Self::put), but the file is written by the store's writer thread and this
    /// returns once the blob is queued (in Redis, once it is written: see the module's
    /// docs); `sha256` is the hex SHA-256 of `raw` (the caller has
    /// it for the receipt already). Blocks while [`QUEUE`] blobs wait. A write that fails
    /// later is logged: the state is then prefilled when needed.
    pub fn put_behind(
        &self,
        state: &StateHash,
        model: &ModelFingerprint,
        parent: Option<&StateHash>,
        range: std::ops::Range<usize>,
        raw: Vec<u8>,
        sha256: String,
    ) -> Result<(), KvBlobError> {
        self.check_range(state, parent, &range)?;
        let job = Job {
            state: *state,
            model: *model,
            parent: parent.copied(),
            range,
            raw,
            sha256,
        };
        if let Tier::Redis(_) = self.tier {
            // A shared tier is written before the operation answers, so that another replica
            // asked for the new state at once finds its blob (writing behind, it would
            // prefill instead).
            return self.put_hashed(&job).map(|_| ());
        }
        let behind = self.behind()?;
        lock(&behind.queued).insert(*state, job.range.end);
        let sender = lock(&behind.tx).clone();
        let sent = sender.is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            lock(&behind.queued).remove(state);
            behind.landed.notify_all();
            return Err(io(&self.here())(std::io::Error::other(
                "the KV blob writer has stopped",
            )));
        }
        Ok(())
    }

    fn check_range(
        &self,
        state: &StateHash,
        parent: Option<&StateHash>,
        range: &std::ops::Range<usize>,
    ) -> Result<(), KvBlobError> {
        if range.start >= range.end || (range.start > 0) != parent.is_some() {
            return Err(KvBlobError::Invalid {
                blob: self.describe(state),
                reason: format!("bad range {range:?} for a blob with parent {parent:?}"),
            });
        }
        Ok(())
    }

    /// The directory, unless the blobs are in Redis.
    pub fn dir(&self) -> Option<&Path> {
        match &self.tier {
            Tier::Dir(dir) => Some(dir),
            Tier::Redis(_) => None,
        }
    }

    /// The file of `state`'s blob in a directory tier (in Redis: a name for messages).
    fn path(&self, state: &StateHash) -> PathBuf {
        let name = format!("{}.kv", state.to_hex());
        match &self.tier {
            Tier::Dir(dir) => dir.join(name),
            Tier::Redis(_) => PathBuf::from(name),
        }
    }

    /// Whether a blob for `state` exists or is queued (not whether it is intact).
    pub fn contains(&self, state: &StateHash) -> bool {
        self.queued_end(state).is_some()
            || match &self.tier {
                Tier::Dir(_) => self.path(state).is_file(),
                Tier::Redis(r) => r.exists(state),
            }
    }

    fn queued_end(&self, state: &StateHash) -> Option<usize> {
        self.behind.get()?.queued.lock().ok()?.get(state).copied()
    }

    /// Writes the KV of positions `start..end` of `state`, computed by `model`; `parent`
    /// names the state whose blob holds `..start` (required when `start` > 0). Replaces any
    /// blob the state had.
    pub fn put(
        &self,
        state: &StateHash,
        model: &ModelFingerprint,
        parent: Option<&StateHash>,
        range: std::ops::Range<usize>,
        raw: &[u8],
    ) -> Result<Written, KvBlobError> {
        self.check_range(state, parent, &range)?;
        self.settle(state);
        self.put_hashed(&Job {
            state: *state,
            model: *model,
            parent: parent.copied(),
            range,
            raw: raw.to_vec(),
            sha256: hex::encode(Sha256::digest(raw)),
        })
    }

    fn put_hashed(&self, job: &Job) -> Result<Written, KvBlobError> {
        let (state, raw, range) = (&job.state, &job.raw, &job.range);
        let header = serde_json::to_vec(&Header {
            state: *state,
            model: job.model,
            parent: job.parent,
            start: range.start,
            end: range.end,
            raw_bytes: raw.len() as u64,
            raw_sha256: job.sha256.clone(),
            codec: "raw".into(),
        })
        .map_err(|e| KvBlobError::Invalid {
            blob: self.describe(state),
            reason: e.to_string(),
        })?;
        let mut head = Vec::with_capacity(MAGIC.len() + 4 + header.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(&header);
        match &self.tier {
            Tier::Dir(dir) => {
                let path = self.path(state);
                fs::create_dir_all(dir).map_err(io(dir))?;
                let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
                let f = tmp.as_file_mut();
                f.write_all(&head).map_err(io(&path))?;
                f.write_all(raw).map_err(io(&path))?;
                tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
            }
            Tier::Redis(r) => r
                .write(state, &head, raw)
                .map_err(redis_err(self.describe(state)))?,
        }
        let written = Written {
            raw_bytes: raw.len(),
            file_bytes: head.len() + raw.len(),
        };
        debug!(state = %state.short(), ?range, raw = written.raw_bytes, file = written.file_bytes, "KV blob written");
        self.enforce_budget();
        Ok(written)
    }

    /// Reads and checks the blob of `state`; `None` if there is none.
    pub fn get(
        &self,
        state: &StateHash,
        model: &ModelFingerprint,
    ) -> Result<Option<KvBlob>, KvBlobError> {
        self.settle(state);
        let corrupt = |reason: String| KvBlobError::Corrupt {
            blob: self.describe(state),
            reason,
        };
        let Some((header, body)) = (match &self.tier {
            Tier::Dir(_) => self.read_file(state, model)?,
            Tier::Redis(r) => self.read_redis(r, state, model)?,
        }) else {
            return Ok(None);
        };
        let raw = if header.codec == "raw" {
            body
        } else {
            zstd::bulk::decompress(&body, header.raw_bytes as usize)
                .map_err(|e| corrupt(format!("body: {e}")))?
        };
        let sha256 = hex::encode(Sha256::digest(&raw));
        if raw.len() as u64 != header.raw_bytes || sha256 != header.raw_sha256 {
            return Err(corrupt("checksum mismatch".into()));
        }
        Ok(Some(KvBlob {
            parent: header.parent,
            start: header.start,
            end: header.end,
            raw,
            sha256,
        }))
    }

    /// The header and body of the file of `state`, the header checked before the body is
    /// read; marks the file used.
    fn read_file(
        &self,
        state: &StateHash,
        model: &ModelFingerprint,
    ) -> Result<Option<(Header, Vec<u8>)>, KvBlobError> {
        let path = self.path(state);
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |reason: String| KvBlobError::Corrupt {
            blob: path.display().to_string(),
            reason,
        };
        let (header, _) = read_header(&mut file).map_err(corrupt)?;
        check_header(&header, state, model).map_err(corrupt)?;
        // The body is read straight into place (one byte more, to see a longer file).
        let mut body = Vec::with_capacity(if header.codec == "raw" {
            header.raw_bytes as usize + 1
        } else {
            0
        });
        file.read_to_end(&mut body).map_err(io(&path))?;
        // Mark it used, for the budget's least-recently-used order.
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Some((header, body)))
    }

    /// The header and body of the blob of `state` in Redis, the header checked before the
    /// body is fetched.
    fn read_redis(
        &self,
        r: &RedisTier,
        state: &StateHash,
        model: &ModelFingerprint,
    ) -> Result<Option<(Header, Vec<u8>)>, KvBlobError> {
        let blob = self.describe(state);
        let Some(head) = r.head(state).map_err(redis_err(blob.clone()))? else {
            return Ok(None);
        };
        let corrupt = |reason: String| KvBlobError::Corrupt {
            blob: blob.clone(),
            reason,
        };
        let (header, _) = read_header(&mut head.as_slice()).map_err(corrupt)?;
        check_header(&header, state, model).map_err(corrupt)?;
        if header.codec != "raw" {
            return Err(corrupt(format!("codec {} in Redis", header.codec)));
        }
        match r
            .body(state, header.raw_bytes)
            .map_err(redis_err(blob.clone()))?
        {
            Ok(body) => Ok(Some((header, body))),
            Err(chunk) => Err(corrupt(format!("chunk {chunk} is gone (evicted?)"))),
        }
    }

    /// The header of the blob of `state`, if there is a readable one, and the length of the
    /// head it was read from (magic, length, header: where the body starts).
    fn header(&self, state: &StateHash) -> Option<(Header, usize)> {
        let (header, head_len) = match &self.tier {
            Tier::Dir(_) => read_header(&mut fs::File::open(self.path(state)).ok()?).ok()?,
            Tier::Redis(r) => read_header(&mut r.head(state).ok()??.as_slice()).ok()?,
        };
        (header.state == *state).then_some((header, head_len))
    }

    /// The bytes the blob of `state` takes where it is kept (header and body), once any
    /// queued write has landed; `None` if there is no readable blob.
    pub fn stored_bytes(&self, state: &StateHash) -> Option<u64> {
        self.settle(state);
        match &self.tier {
            Tier::Dir(_) => fs::metadata(self.path(state)).ok().map(|m| m.len()),
            Tier::Redis(_) => {
                let (header, head_len) = self.header(state)?;
                Some(head_len as u64 + header.raw_bytes)
            }
        }
    }

    /// `dir` or `redis`: the kind of tier.
    pub fn kind(&self) -> &'static str {
        match &self.tier {
            Tier::Dir(_) => "dir",
            Tier::Redis(_) => "redis",
        }
    }

    /// Where the blob of `state` ends (one past the last position it holds), from the queue
    /// or its header alone; `None` if there is no readable blob.
    pub fn end_of(&self, state: &StateHash) -> Option<usize> {
        if let Some(end) = self.queued_end(state) {
            return Some(end);
        }
        self.header(state).map(|(h, _)| h.end)
    }

    /// The chain of blobs that restores `state`: from the root blob (start 0) to the
    /// state's own, each starting where the one before ended. `None` if the state has no
    /// blob; an error if a blob in the chain is missing or corrupt.
    pub fn chain(
        &self,
        state: &StateHash,
        model: &ModelFingerprint,
    ) -> Result<Option<Vec<KvBlob>>, KvBlobError> {
        let Some(mut blob) = self.get(state, model)? else {
            return Ok(None);
        };
        let mut chain = Vec::new();
        loop {
            let parent = blob.parent;
            let start = blob.start;
            chain.push(blob);
            let Some(parent) = parent else {
                break;
            };
            let at = self.describe(&parent);
            blob = self
                .get(&parent, model)?
                .ok_or_else(|| KvBlobError::Corrupt {
                    blob: at.clone(),
                    reason: "missing: a later blob of its chain needs it".into(),
                })?;
            if blob.end != start {
                return Err(KvBlobError::Corrupt {
                    blob: at,
                    reason: format!("ends at {} but its child starts at {start}", blob.end),
                });
            }
        }
        chain.reverse();
        Ok(Some(chain))
    }

    /// Deletes the blob of `state`, if any.
    pub fn remove(&self, state: &StateHash) -> Result<(), KvBlobError> {
        self.settle(state);
        match &self.tier {
            Tier::Dir(_) => {
                let path = self.path(state);
                match fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io(&path)(e)),
                }
            }
            Tier::Redis(r) => {
                // Without a readable head the chunks cannot be named; eviction takes them.
                let body = self.header(state).map_or(0, |(h, _)| h.raw_bytes);
                r.delete(state, body)
                    .map_err(redis_err(self.describe(state)))
            }
        }
    }

    /// Total bytes of blobs in a directory tier; `None` for Redis, whose size is the
    /// server's to bound.
    pub fn total_bytes(&self) -> Option<u64> {
        match &self.tier {
            Tier::Dir(_) => Some(self.list().iter().map(|(_, len, _)| len).sum()),
            Tier::Redis(_) => None,
        }
    }

    fn list(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Some(Ok(entries)) = self.dir().map(fs::read_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "kv"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((
                    e.path(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ))
            })
            .collect()
    }

    /// Deletes least recently used blobs until a directory fits its budget.
    fn enforce_budget(&self) {
        if self.dir().is_none() {
            return;
        }
        let mut blobs = self.list();
        let mut total: u64 = blobs.iter().map(|(_, len, _)| len).sum();
        if total <= self.budget_bytes {
            return;
        }
        blobs.sort_by_key(|(_, _, modified)| *modified);
        for (path, len, _) in blobs {
            if total <= self.budget_bytes {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => total -= len,
                Err(e) => warn!(path = %path.display(), error = %e, "cannot delete KV blob"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(b: u8) -> StateHash {
        StateHash::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvBlobStore::open(dir.path(), DEFAULT_BUDGET_BYTES).unwrap();
        let model = ModelFingerprint::from_bytes([7; 32]);
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        assert!(store.get(&hash(1), &model).unwrap().is_none());
        let w = store.put(&hash(1), &model, None, 0..42, &raw).unwrap();
        assert_eq!(w.raw_bytes, raw.len());
        assert!(w.file_bytes > raw.len(), "raw body plus the header");
        let blob = store.get(&hash(1), &model).unwrap().unwrap();
        assert_eq!((blob.start, blob.end, blob.parent), (0, 42, None));
        assert_eq!(blob.raw, raw);
        assert_eq!(store.end_of(&hash(1)), Some(42));
        // A child blob extends it; the chain runs root first.
        store
            .put(&hash(3), &model, Some(&hash(1)), 42..50, &raw[..100])
            .unwrap();
        let chain = store.chain(&hash(3), &model).unwrap().unwrap();
        assert_eq!(
            chain.iter().map(|b| (b.start, b.end)).collect::<Vec<_>>(),
            vec![(0, 42), (42, 50)]
        );
        // A range that does not fit its parent, or a start with no parent, is refused.
        assert!(store.put(&hash(4), &model, None, 5..9, &raw).is_err());
        store
            .put(&hash(4), &model, Some(&hash(1)), 40..50, &raw[..10])
            .unwrap();
        assert!(matches!(
            store.chain(&hash(4), &model),
            Err(KvBlobError::Corrupt { .. })
        ));
        // Wrong model, wrong state name.
        let other = ModelFingerprint::from_bytes([8; 32]);
        assert!(matches!(
            store.get(&hash(1), &other),
            Err(KvBlobError::Corrupt { .. })
        ));
        fs::copy(store.path(&hash(1)), store.path(&hash(2))).unwrap();
        assert!(matches!(
            store.get(&hash(2), &model),
            Err(KvBlobError::Corrupt { .. })
        ));
        // A flipped byte in the body, a truncated file.
        let path = store.path(&hash(1));
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.get(&hash(1), &model),
            Err(KvBlobError::Corrupt { .. })
        ));
        fs::write(&path, &bytes[..n / 2]).unwrap();
        assert!(matches!(
            store.get(&hash(1), &model),
            Err(KvBlobError::Corrupt { .. })
        ));
        fs::write(&path, b"SPKV").unwrap();
        assert!(matches!(
            store.get(&hash(1), &model),
            Err(KvBlobError::Corrupt { .. })
        ));
        store.remove(&hash(1)).unwrap();
        assert!(!store.contains(&hash(1)));
        // A chain whose root is gone.
        assert!(matches!(
            store.chain(&hash(3), &model),
            Err(KvBlobError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_blob_queued_behind_is_seen_at_once_read_when_it_lands_and_written_by_drop() {
        let dir = tempfile::tempdir().unwrap();
        let model = ModelFingerprint::from_bytes([7; 32]);
        let raw: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sha = hex::encode(Sha256::digest(&raw));
        {
            let store = KvBlobStore::open(dir.path(), DEFAULT_BUDGET_BYTES).unwrap();
            store
                .put_behind(&hash(1), &model, None, 0..40, raw.clone(), sha.clone())
                .unwrap();
            // Visible before the writer is done; a read waits for it.
            assert!(store.contains(&hash(1)));
            assert_eq!(store.end_of(&hash(1)), Some(40));
            let blob = store.get(&hash(1), &model).unwrap().unwrap();
            assert_eq!(
                (blob.raw.len(), blob.sha256.as_str()),
                (raw.len(), sha.as_str())
            );
            // A bad range is refused at once, not by the writer.
            assert!(store
                .put_behind(&hash(2), &model, None, 3..9, raw.clone(), sha.clone())
                .is_err());
            assert!(!store.contains(&hash(2)));
            // More than the queue holds, then the last handle goes: all of it is written.
            for b in 10..10 + 2 * QUEUE as u8 {
                store
                    .put_behind(
                        &hash(b),
                        &model,
                        Some(&hash(1)),
                        40..41,
                        raw[..64].to_vec(),
                        hex::encode(Sha256::digest(&raw[..64])),
                    )
                    .unwrap();
            }
        }
        let store = KvBlobStore::open(dir.path(), DEFAULT_BUDGET_BYTES).unwrap();
        for b in 10..10 + 2 * QUEUE as u8 {
            let chain = store.chain(&hash(b), &model).unwrap().unwrap();
            assert_eq!(chain.len(), 2);
        }
    }

    #[test]
    fn blobs_earlier_versions_wrote_with_zstd_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvBlobStore::open(dir.path(), DEFAULT_BUDGET_BYTES).unwrap();
        let model = ModelFingerprint::from_bytes([7; 32]);
        let raw: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        let header = serde_json::to_vec(&Header {
            state: hash(1),
            model,
            parent: None,
            start: 0,
            end: 5,
            raw_bytes: raw.len() as u64,
            raw_sha256: hex::encode(Sha256::digest(&raw)),
            codec: "zstd".into(),
        })
        .unwrap();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&(header.len() as u32).to_le_bytes());
        file.extend_from_slice(&header);
        file.extend_from_slice(&zstd::bulk::compress(&raw, 1).unwrap());
        fs::write(store.path(&hash(1)), file).unwrap();
        assert_eq!(store.get(&hash(1), &model).unwrap().unwrap().raw, raw);
    }

    #[test]
    fn budget_drops_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let model = ModelFingerprint::from_bytes([7; 32]);
        // Incompressible bytes (xorshift64), so each blob is about 20 kB on disk.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let raw: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let store = KvBlobStore::open(dir.path(), 50_000).unwrap();
        for b in 1..=4 {
            store.put(&hash(b), &model, None, 0..1, &raw).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(store.total_bytes().is_some_and(|n| n <= 50_000));
        assert!(store.contains(&hash(4)) && store.contains(&hash(3)));
        assert!(!store.contains(&hash(1)) && !store.contains(&hash(2)));
    }
}
