//! Writing and reading one KV blob: the local directory against the shared Redis tier
//! (`--kv redis://...`), at the sizes an agent step writes on the default model (its KV is
//! about 23 KB a token: a 45-token delta is about 1 MB, a 4,000-token state about 93 MB;
//! 16 MB stands for a long delta or a small state).
//!
//! `kv_blob_put_remove`: a blob written (its SHA-256 computed, as `put` does) and deleted
//! again, so the tier does not grow; `kv_blob_get`: read back and checked (SHA-256).
//!
//! `cargo bench --bench kv_blobs`. Starts `redis-server` on a loopback port (Debian's
//! package, which `.ci/run` installs). Both tiers on the
//! same machine: the Redis figures are the cost of its protocol and copies, not of a network.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::{Digest, Sha256};
use state_pack::kv_blob::KvBlobStore;
use state_pack::{ModelFingerprint, StateHash};

#[path = "../tests/common/bytes.rs"]
mod bytes;
#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;

use bytes::noise;
use servers::RedisServer;

const SIZES: [usize; 2] = [1 << 20, 16 << 20];

fn tiers(c: &mut Criterion) {
    let model = ModelFingerprint::from_bytes([7; 32]);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start();
    let stores = [
        (
            "dir",
            KvBlobStore::open(dir.path().join("kv"), u64::MAX).expect("blob dir"),
        ),
        (
            "redis",
            KvBlobStore::open_redis(&server.url).expect("redis"),
        ),
    ];
    for (op, write) in [("put_remove", true), ("get", false)] {
        let mut g = c.benchmark_group(format!("kv_blob_{op}"));
        g.sample_size(20);
        for &size in &SIZES {
            let raw = noise(size);
            g.throughput(Throughput::Bytes(size as u64));
            for (name, store) in &stores {
                let state = StateHash::from_bytes([size.trailing_zeros() as u8; 32]);
                store.put(&state, &model, None, 0..45, &raw).expect("put");
                let mut i = 0u64;
                g.bench_with_input(BenchmarkId::new(*name, size), &raw, |b, raw| {
                    b.iter(|| {
                        if write {
                            // A new state each time, as an agent step makes.
                            i += 1;
                            let mut key = [0u8; 32];
                            key[..8].copy_from_slice(&i.to_le_bytes());
                            let s = StateHash::from_bytes(Sha256::digest(key).into());
                            store.put(&s, &model, None, 0..45, raw).expect("put");
                            store.remove(&s).expect("remove");
                        } else {
                            store.get(&state, &model).expect("get").expect("a blob");
                        }
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, tiers);
criterion_main!(benches);
