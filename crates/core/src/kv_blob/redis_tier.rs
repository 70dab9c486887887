//! KV blobs in Redis: the tier replicas share (`--kv redis://...`), the role Redis plays for
//! LMCache next to vLLM.
//!
//! A blob is the same bytes as a `<state>.kv` file, split over keys so that no value is
//! large (Redis's limit is 512 MB; big values stall its single thread):
//!
//! ```text
//! state-pack:kv:<state hex>        the file's head: magic, header length, header (JSON)
//! state-pack:kv:<state hex>:<i>    the body in chunks of CHUNK bytes, i = 0, 1, ...
//! ```
//!
//! A blob's keys are written in one `MULTI`/`EXEC`, so a reader never sees part of one.
//! The tier is bounded by the server's own `maxmemory` and eviction policy (`allkeys-lru`
//! is the one to set), not by the store: a blob whose chunks were evicted reads as
//! corrupt, and the pack prefills the state instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Client, Connection, RedisError};

use crate::state::StateHash;

/// Largest value written: 4 MiB. A 4,000-token state of the default model (about 93 MB of
/// f16 KV) is 23 chunks; a delta of one agent step is one or two.
pub const CHUNK: usize = 4 << 20;
const PREFIX: &str = "state-pack:kv:";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One Redis server holding blobs. Clones share the connection (blobs are written to Redis
/// by the operation itself, never by the store's writer thread).
#[derive(Clone)]
pub(super) struct RedisTier {
    client: Client,
    /// The URL without its password, for messages.
    shown: String,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTier({})", self.shown)
    }
}

/// `url` with any password replaced by `***`.
pub(super) fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl RedisTier {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`) and checks that the
    /// server answers; the error is the client's message.
    pub(super) fn connect(url: &str) -> Result<Self, String> {
        let shown = without_password(url);
        let client = Client::open(url).map_err(|e| e.to_string())?;
        let tier = Self {
            client,
            shown,
            conn: Arc::default(),
        };
        tier.with(|c| redis::cmd("PING").query::<String>(c))
            .map_err(|e| e.to_string())?;
        Ok(tier)
    }

    /// The URL, without its password.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    fn open(&self) -> Result<Connection, RedisError> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(conn)
    }

    /// Runs `f` on the connection, opening it if needed; a connection that broke is opened
    /// again and `f` tried once more (every command here is idempotent).
    fn with<T>(
        &self,
        f: impl Fn(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            let conn = match slot.as_mut() {
                Some(c) => c,
                None => slot.insert(self.open()?),
            };
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    tracing::debug!(error = %e, "Redis connection broke; reconnecting");
                    *slot = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(RedisError::from(std::io::Error::other(
            "Redis reconnect failed",
        )))
    }

    fn head_key(state: &StateHash) -> String {
        format!("{PREFIX}{}", state.to_hex())
    }

    fn chunk_keys(state: &StateHash, body_len: u64) -> Vec<String> {
        let n = body_len.div_ceil(CHUNK as u64);
        (0..n)
            .map(|i| format!("{PREFIX}{}:{i}", state.to_hex()))
            .collect()
    }

    /// Where the blob of `state` lives, for messages.
    pub(super) fn describe(&self, state: &StateHash) -> String {
        format!("{}/{}", self.shown, Self::head_key(state))
    }

    /// Writes a blob: its head (magic, length, header) and its body, in one transaction.
    pub(super) fn write(
        &self,
        state: &StateHash,
        head: &[u8],
        body: &[u8],
    ) -> Result<(), RedisError> {
        let keys = Self::chunk_keys(state, body.len() as u64);
        self.with(|c| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (key, chunk) in keys.iter().zip(body.chunks(CHUNK)) {
                pipe.set(key, chunk).ignore();
            }
            pipe.set(Self::head_key(state), head).ignore();
            pipe.query::<()>(c)
        })
    }

    /// The head of the blob of `state`, if there is one.
    pub(super) fn head(&self, state: &StateHash) -> Result<Option<Vec<u8>>, RedisError> {
        let key = Self::head_key(state);
        self.with(|c| redis::cmd("GET").arg(&key).query(c))
    }

    /// The body of the blob of `state`, `body_len` bytes; `Err(i)` names the first chunk
    /// that is gone (evicted, or deleted since the head was read).
    pub(super) fn body(
        &self,
        state: &StateHash,
        body_len: u64,
    ) -> Result<Result<Vec<u8>, usize>, RedisError> {
        let keys = Self::chunk_keys(state, body_len);
        if keys.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let chunks: Vec<Option<Vec<u8>>> = self.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
        // One byte more than announced, so that a longer body is seen as such.
        let mut body = Vec::with_capacity(body_len as usize + 1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            match chunk {
                Some(bytes) => body.extend_from_slice(&bytes),
                None => return Ok(Err(i)),
            }
        }
        Ok(Ok(body))
    }

    /// Whether a blob of `state` is there (its head; not whether it is intact).
    pub(super) fn exists(&self, state: &StateHash) -> bool {
        let key = Self::head_key(state);
        self.with(|c| redis::cmd("EXISTS").arg(&key).query::<i64>(c))
            .is_ok_and(|n| n > 0)
    }

    /// Deletes the blob of `state`: its head and the chunks its head names.
    pub(super) fn delete(&self, state: &StateHash, body_len: u64) -> Result<(), RedisError> {
        let mut keys = Self::chunk_keys(state, body_len);
        keys.push(Self::head_key(state));
        self.with(|c| redis::cmd("DEL").arg(&keys).query::<i64>(c))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            without_password("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(without_password("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn a_body_spans_as_many_chunks_as_it_needs() {
        let s = StateHash::from_bytes([1; 32]);
        assert_eq!(RedisTier::chunk_keys(&s, 0).len(), 0);
        assert_eq!(RedisTier::chunk_keys(&s, 1).len(), 1);
        assert_eq!(RedisTier::chunk_keys(&s, CHUNK as u64).len(), 1);
        assert_eq!(RedisTier::chunk_keys(&s, CHUNK as u64 + 1).len(), 2);
    }
}
