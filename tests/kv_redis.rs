//! The shared KV blob tier in a real Redis (`--kv redis://...`): blobs round-trip, span
//! chunks, are checked like files, and a state one llama.cpp engine computed is restored by
//! another, fresh engine from Redis instead of prefilled.

mod common;

use common::bytes::noise;
use common::servers::RedisServer;
use sha2::{Digest, Sha256};
use state_pack::kv_blob::{KvBlobError, KvBlobStore};
use state_pack::{ModelFingerprint, StateHash};

fn hash(b: u8) -> StateHash {
    StateHash::from_bytes([b; 32])
}

#[test]
fn blobs_round_trip_through_redis_in_chunks_and_are_checked() {
    let redis = RedisServer::start();
    let store = KvBlobStore::open_location(&redis.url, 0).expect("connect to Redis");
    assert!(store.dir().is_none() && store.total_bytes().is_none());
    assert_eq!(store.location(), redis.url);
    let model = ModelFingerprint::from_bytes([7; 32]);
    // 10 MB: three chunks of at most 4 MiB.
    let raw = noise(10_000_000);
    assert!(store.get(&hash(1), &model).unwrap().is_none());
    assert!(!store.contains(&hash(1)));
    store.put(&hash(1), &model, None, 0..42, &raw).unwrap();
    assert!(store.contains(&hash(1)));
    assert_eq!(store.end_of(&hash(1)), Some(42));
    let keys = redis.keys(&format!("state-pack:kv:{}*", hash(1).to_hex()));
    assert_eq!(keys.len(), 4, "a head and three chunks: {keys:?}");
    let blob = store.get(&hash(1), &model).unwrap().unwrap();
    assert_eq!((blob.start, blob.end, blob.parent), (0, 42, None));
    assert!(blob.raw == raw, "the bytes come back as written");
    assert_eq!(blob.sha256, hex::encode(Sha256::digest(&raw)));

    // A child written behind the caller, read back as a chain by another connection.
    let delta = noise(1000);
    store
        .put_behind(
            &hash(2),
            &model,
            Some(&hash(1)),
            42..50,
            delta.clone(),
            hex::encode(Sha256::digest(&delta)),
        )
        .unwrap();
    store.flush();
    let other = KvBlobStore::open_redis(&redis.url).unwrap();
    let chain = other.chain(&hash(2), &model).unwrap().unwrap();
    assert_eq!(
        chain.iter().map(|b| (b.start, b.end)).collect::<Vec<_>>(),
        vec![(0, 42), (42, 50)]
    );

    // Another model's blob, a flipped byte, an evicted chunk: corrupt, never wrong bytes.
    let other_model = ModelFingerprint::from_bytes([8; 32]);
    assert!(matches!(
        store.get(&hash(1), &other_model),
        Err(KvBlobError::Corrupt { .. })
    ));
    let chunk1 = format!("state-pack:kv:{}:1", hash(1).to_hex());
    redis.cli(&["SETRANGE", &chunk1, "7", "X"]).unwrap();
    assert!(matches!(
        store.get(&hash(1), &model),
        Err(KvBlobError::Corrupt { ref reason, .. }) if reason.contains("checksum")
    ));
    redis.cli(&["DEL", &chunk1]).unwrap();
    assert!(matches!(
        store.get(&hash(1), &model),
        Err(KvBlobError::Corrupt { ref reason, .. }) if reason.contains("chunk 1 is gone")
    ));
    // The chain of a state whose root is broken is refused too.
    assert!(store.chain(&hash(2), &model).is_err());

    // Removing deletes the head and every chunk.
    store.remove(&hash(1)).unwrap();
    assert!(!store.contains(&hash(1)));
    assert!(redis
        .keys(&format!("state-pack:kv:{}*", hash(1).to_hex()))
        .is_empty());
}

#[test]
fn an_unreachable_redis_is_a_one_line_error() {
    let port = common::servers::free_port();
    let url = format!("redis://:secret@127.0.0.1:{port}/");
    let err = KvBlobStore::open_location(&url, 0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, KvBlobError::Redis { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("secret"), "the password stays out: {msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[cfg(feature = "llamacpp")]
mod real_model {
    use std::sync::Arc;

    use super::common::{isolated, key, model_path, servers::RedisServer, turn, BASE};
    use state_pack::engine::{LlamaCppEngine, LlamaCppOptions, Sampling};
    use state_pack::kv_blob::KvBlobStore;
    use state_pack::{StatePack, Store};

    async fn engine() -> Arc<LlamaCppEngine> {
        Arc::new(
            LlamaCppEngine::load(&model_path(), LlamaCppOptions::default())
                .await
                .expect("load the default model on llama.cpp"),
        )
    }

    #[test]
    fn a_state_one_engine_computed_is_restored_from_redis_by_another() {
        let redis = RedisServer::start();
        isolated::run(
            "real_model::a_state_one_engine_computed_is_restored_from_redis_by_another_in_child",
            &[("STATE_PACK_TEST_REDIS", &redis.url)],
        );
        assert!(
            !redis.keys("state-pack:kv:*").is_empty(),
            "the blobs are in Redis"
        );
    }

    #[tokio::test]
    #[ignore = "run by a_state_one_engine_computed_is_restored_from_redis_by_another in a child process"]
    async fn a_state_one_engine_computed_is_restored_from_redis_by_another_in_child() {
        if !isolated::is_child(
            "real_model::a_state_one_engine_computed_is_restored_from_redis_by_another_in_child",
        ) {
            return;
        }
        let url = std::env::var("STATE_PACK_TEST_REDIS").expect("redis url");
        let tier = || Some(KvBlobStore::open_redis(&url).expect("connect to Redis"));
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("agent.db");
        let greedy = Sampling::greedy(6);

        // "Replica" A computes a base and one step; its blobs go to Redis only.
        let step = {
            let pack = StatePack::new(engine().await, Store::open(&db, key()).unwrap())
                .with_kv_blobs(tier());
            let base = pack.create(BASE).await.unwrap();
            let step = pack
                .infer(&base.output, &turn("Which clause caps liability?"), &greedy)
                .await
                .unwrap();
            pack.close().unwrap();
            step
        };
        assert!(
            !KvBlobStore::dir_for_database(&db).exists(),
            "no local blob directory"
        );
        // The store is shared by copying it until Postgres is (issue 22); the copy is
        // taken before either continuation runs.
        let db2 = dir.path().join("prefill.db");
        std::fs::copy(&db, &db2).unwrap();
        let next = turn("And the notice period?");

        // "Replica" B, a fresh engine that never saw the state, loads it from Redis.
        let pack =
            StatePack::new(engine().await, Store::open(&db, key()).unwrap()).with_kv_blobs(tier());
        let restored = pack
            .infer(&step.report.output, &next, &greedy)
            .await
            .unwrap();
        pack.close().unwrap();
        let t = restored.report.tokens;
        // The step's blob ends where its prompt did: its generated tokens are prefilled.
        let prompt = step.report.tokens.state - step.report.tokens.generated;
        assert_eq!(t.restored, prompt, "{t:?}");
        assert!(t.prefilled < 40, "only the new turn is prefilled: {t:?}");

        // The same step on a fresh engine with no blobs: prefilled in full, same answer.
        let pack =
            StatePack::new(engine().await, Store::open(&db2, key()).unwrap()).with_kv_blobs(None);
        let prefilled = pack
            .infer(&step.report.output, &next, &greedy)
            .await
            .unwrap();
        pack.close().unwrap();
        assert_eq!(prefilled.report.tokens.restored, 0);
        assert_eq!(restored.text, prefilled.text);
        assert_eq!(restored.report.output, prefilled.report.output);
        assert!(super::common::verified(&db) > 0);
    }
}
