//! Postgres as the store and ledger (issue 22), on a real Postgres started by the test (or the
//! one `STATE_PACK_TEST_POSTGRES` names): several writers append to one contiguous chain,
//! `state-pack verify --db postgres://...` reads it and catches an edited receipt, and three
//! `state-pack serve` processes behind nginx share one Postgres and one Redis under 16
//! concurrent clients, and lose no receipt when one of them is killed.
//!
//! The scripted suites (`pack_scripted`, `server_scripted`, `openai_scripted`,
//! `agent_scripted`, `graph`) also run against Postgres when `STATE_PACK_TEST_POSTGRES` is
//! set (`tests/common/db.rs`; `.ci/run` runs them both ways).
#![cfg(feature = "testing")]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::servers::PostgresServer;
use state_pack::engine::scripted::ScriptedEngine;
use state_pack::ledger::{Signer, VerifyOptions};
use state_pack::{StatePack, Store};

fn key() -> Signer {
    Signer::from_seed([61; 32])
}

/// A Postgres to run on: the one `STATE_PACK_TEST_POSTGRES` names, else one started here
/// (kept alive by the returned guard).
fn postgres() -> (Option<PostgresServer>, String) {
    match common::db::postgres() {
        Some(url) => (None, common::db::fresh_database(&url)),
        None => {
            let server = PostgresServer::start();
            let url = server.fresh_db();
            (Some(server), url)
        }
    }
}

fn options(signer: &Signer) -> VerifyOptions {
    VerifyOptions {
        trusted_keys: vec![signer.public_key()],
        trusted_checkpoint: None,
        witnesses: Vec::new(),
    }
}

/// Receipts `(seq, hash)` as stored, in order.
fn stored_receipts(url: &str) -> Vec<(u64, String)> {
    let db = state_pack_postgres::connect(url).unwrap();
    db.query_map("SELECT seq, hash FROM receipts ORDER BY seq", [], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            hex::encode(r.get::<_, Vec<u8>>(1)?),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_in_four_stores_append_one_contiguous_chain() {
    let (_server, url) = postgres();
    let writers = 4;
    let ops = 25;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // Each writer has its own engine and its own connection, as a replica would.
            let store = Store::open_location(&url, key(), 8).expect("open the shared store");
            let pack = StatePack::new(Arc::new(ScriptedEngine::replying("ok")), store);
            let mut given = Vec::new();
            let base = pack
                .create(&format!("<|im_start|>system\nwriter {w}<|im_end|>\n"))
                .await
                .unwrap();
            given.push((base.receipt.seq, base.receipt.hash.to_hex()));
            let mut state = base.output;
            for i in 1..ops {
                let r = pack.merge(&state, &format!(" step {i}")).await.unwrap();
                given.push((r.receipt.seq, r.receipt.hash.to_hex()));
                state = r.output;
            }
            pack.close().unwrap();
            given
        }));
    }
    let mut given = Vec::new();
    for t in tasks {
        given.extend(t.await.unwrap());
    }
    let stored = stored_receipts(&url);
    // One chain: seq 0..n with no gap, the open_log receipt first.
    for (i, (seq, _)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64, "the chain is contiguous");
    }
    assert!(stored.len() > writers * ops, "{} receipts", stored.len());
    for (seq, hash) in &given {
        assert_eq!(&stored[*seq as usize].1, hash, "receipt {seq} as given");
    }
    let db = state_pack_postgres::connect(&url).unwrap();
    let report = state_pack::ledger::verify::verify(&db, &options(&key())).unwrap();
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.receipts as usize, stored.len());
}

#[tokio::test]
async fn verify_reads_a_postgres_log_and_catches_an_edited_receipt() {
    let (_server, url) = postgres();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    let (signer, _) = Signer::load_or_create(&key_path).unwrap();
    {
        let store = Store::open_location(&url, signer.clone(), 4).unwrap();
        let engine = Arc::new(ScriptedEngine::replying("fine"));
        let pack = StatePack::new(engine, store);
        let base = pack
            .create("<|im_start|>system\nS<|im_end|>\n")
            .await
            .unwrap();
        let sampling = state_pack::engine::Sampling::greedy(4);
        let ask = || {
            pack.infer_or_replay(
                &base.output,
                "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                &sampling,
            )
        };
        let out = ask().await.unwrap();
        assert_eq!(out.text, "fine");
        // Answered from the store: a replay receipt, the engine not called.
        let again = ask().await.unwrap();
        assert_eq!(again.report.replay_of, Some(out.report.seq));
        pack.close().unwrap();
    }
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_state-pack"))
            .args(args)
            .env("STATE_PACK_KEY", &key_path)
            .output()
            .expect("run state-pack")
    };
    let pubkey = signer.public_key().to_hex();
    let ok = cli(&["verify", "--db", &url, "--pubkey", &pubkey]);
    let text =
        String::from_utf8_lossy(&ok.stdout).to_string() + &String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
    let list = cli(&["receipts", "list", "--db", &url]);
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("infer"));
    let proof = cli(&["receipts", "prove", "2", "--db", &url]);
    assert!(
        proof.status.success(),
        "{}",
        String::from_utf8_lossy(&proof.stderr)
    );

    // Someone with write access to the database edits a receipt's body.
    let db = state_pack_postgres::connect(&url).unwrap();
    db.execute(
        "UPDATE receipts
         SET body = convert_to(replace(convert_from(body, 'UTF8'), '\"infer\"', '\"merge\"'), 'UTF8')
         WHERE seq = 2",
        [],
    )
    .unwrap();
    let bad = cli(&["verify", "--db", &url, "--pubkey", &pubkey]);
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{text}");
    assert!(text.contains("receipt 2"), "{text}");
    // Nothing in the message gives a password away, and verify wrote nothing.
    let count = stored_receipts(&url).len();
    let _ = cli(&["verify", "--db", &url, "--pubkey", &pubkey]);
    assert_eq!(stored_receipts(&url).len(), count);
}

/// Postgres restarts (immediate mode, as after a crash) between two operations: the store
/// connects again and goes on; the log stays one verifiable chain.
#[tokio::test]
async fn the_store_reconnects_after_postgres_restarts() {
    let server = PostgresServer::start();
    let url = server.fresh_db();
    let store = Store::open_location(&url, key(), 8).unwrap();
    let pack = StatePack::new(Arc::new(ScriptedEngine::replying("ok")), store);
    let base = pack
        .create("<|im_start|>system\nS<|im_end|>\n")
        .await
        .unwrap();
    server.restart();
    let next = pack.merge(&base.output, " more").await.unwrap();
    assert_eq!(next.receipt.seq, base.receipt.seq + 1);
    pack.close().unwrap();
    let db = state_pack_postgres::connect(&url).unwrap();
    let report = state_pack::ledger::verify::verify(&db, &options(&key())).unwrap();
    assert!(report.ok(), "{:#?}", report.failures);
}

/// `graph history` reads a thread's checkpoints from the URL (and never makes a file of it).
#[tokio::test]
async fn graph_history_reads_checkpoints_from_postgres() {
    let (_server, url) = postgres();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_state-pack"))
        .args(["graph", "history", "--thread", "nothing-here", "--db", &url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("has no checkpoints"), "{text}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file made"
    );
    // The graph's table is there, made on first use.
    let db = state_pack_postgres::connect(&url).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM graph_checkpoints", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn an_unreachable_postgres_is_one_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_state-pack"))
        .args([
            "verify",
            "--db",
            "postgres://sp:hunter2@127.0.0.1:1/none?connect_timeout=2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("postgres://sp:***@127.0.0.1:1/none"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// Three `state-pack serve` processes (llama.cpp, the default model) on one Postgres and one
/// Redis behind nginx, driven by `clients` concurrent agents of `steps` operations each.
#[cfg(feature = "llamacpp")]
mod replicas {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::common::servers::{post_retrying, Nginx, RedisServer, Serve};
    use super::common::turn;
    use super::{options, postgres, stored_receipts};
    use serde_json::{json, Value};
    use state_pack::ledger::Signer;

    /// What a run of agents through the proxy measured.
    #[derive(Debug, Default, serde::Serialize)]
    pub struct Run {
        pub replicas: usize,
        pub clients: usize,
        pub steps: usize,
        pub killed_after_steps: Option<usize>,
        pub operations: usize,
        pub seconds: f64,
        pub steps_per_s: f64,
        pub prefilled: u64,
        pub restored: u64,
        pub reused: u64,
        pub replays: u64,
        pub receipts_in_log: usize,
        pub receipts_given: usize,
        pub receipts_lost: usize,
        pub verify_ok: bool,
    }

    /// Agents of `steps` operations each through nginx over `replicas` servers; with
    /// `kill_after`, replica 0 is killed (SIGKILL) once that many steps have been answered
    /// in all. Each step is an infer of `max_tokens` greedy tokens, every fifth a merge.
    pub async fn run(
        replicas: usize,
        clients: usize,
        steps: usize,
        max_tokens: u32,
        kill_after: Option<usize>,
    ) -> Run {
        // One run at a time: each starts three servers with their own engines, and two at
        // once on a small machine measure each other.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = ONE_AT_A_TIME.lock().await;
        let (_pg, url) = postgres();
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let servers: Vec<Serve> = (0..replicas)
            .map(|_| Serve::start(dir.path(), &url, &redis.url))
            .collect();
        let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
        let servers = Arc::new(Mutex::new(servers));
        let nginx = Nginx::start(&addrs);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut agents = Vec::new();
        for c in 0..clients {
            let (client, base_url, done) = (client.clone(), nginx.url.clone(), done.clone());
            let (servers, kill) = (servers.clone(), kill_after);
            agents.push(tokio::spawn(async move {
                let mut given = Vec::new();
                let mut seen = (0u64, 0u64, 0u64, 0u64);
                let base = format!(
                    "<|im_start|>system\nYou are agent {c}. Answer in one short line.<|im_end|>\n"
                );
                let r = post_retrying(
                    &client,
                    &format!("{base_url}/states"),
                    &json!({ "base_text": base }),
                    None,
                )
                .await;
                given.push(receipt(&r));
                let mut state = r["new_state_hash"].as_str().unwrap().to_string();
                for step in 1..steps {
                    let (path, body) = if step % 5 == 0 {
                        ("merge", json!({ "delta_text": format!(" (note {step})") }))
                    } else {
                        (
                            "infer",
                            json!({
                                "delta_text": turn(&format!("Step {step}: what next?")),
                                "sampling": { "max_tokens": max_tokens },
                            }),
                        )
                    };
                    // Hashed on the state in the path: consecutive steps land on any replica.
                    let r = post_retrying(
                        &client,
                        &format!("{base_url}/states/{state}/{path}"),
                        &body,
                        None,
                    )
                    .await;
                    let t = &r["tokens"];
                    seen.0 += t["prefilled"].as_u64().unwrap_or(0);
                    seen.1 += t["restored"].as_u64().unwrap_or(0);
                    seen.2 += t["reused"].as_u64().unwrap_or(0);
                    seen.3 += u64::from(!r["replay_of"].is_null());
                    given.push(receipt(&r));
                    state = r["new_state_hash"].as_str().unwrap().to_string();
                    let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if kill == Some(n) {
                        let mut s = servers.lock().unwrap();
                        s[0].child.kill().expect("kill -9 replica 0");
                        s[0].child.wait().expect("reap it");
                        eprintln!("killed replica 0 after {n} steps");
                    }
                }
                (given, seen)
            }));
        }
        let mut run = Run {
            replicas,
            clients,
            steps,
            killed_after_steps: kill_after,
            ..Run::default()
        };
        let mut given = Vec::new();
        for a in agents {
            let (g, seen) = a.await.expect("every agent finishes");
            given.extend(g);
            run.prefilled += seen.0;
            run.restored += seen.1;
            run.reused += seen.2;
            run.replays += seen.3;
        }
        run.seconds = started.elapsed().as_secs_f64();
        run.operations = given.len();
        run.steps_per_s = run.operations as f64 / run.seconds;
        drop(nginx);
        drop(servers);
        let stored = stored_receipts(&url);
        for (i, (seq, _)) in stored.iter().enumerate() {
            assert_eq!(*seq, i as u64, "the chain is contiguous");
        }
        run.receipts_in_log = stored.len();
        run.receipts_given = given.len();
        run.receipts_lost = given
            .iter()
            .filter(|(seq, hash)| stored.get(*seq as usize).map(|s| &s.1) != Some(hash))
            .count();
        let (key, _) = Signer::load_or_create(&dir.path().join("key.pem")).unwrap();
        let db = state_pack_postgres::connect(&url).unwrap();
        let report = state_pack::ledger::verify::verify(&db, &options(&key)).unwrap();
        assert!(report.ok(), "{:#?}", report.failures);
        run.verify_ok = report.ok();
        eprintln!("{}", serde_json::to_string(&run).unwrap());
        if let Ok(out) = std::env::var("STATE_PACK_REPLICAS_OUT") {
            let path = std::path::Path::new(&out).join(format!(
                "replicas-{replicas}-clients-{clients}-steps-{steps}{}.json",
                if kill_after.is_some() { "-kill" } else { "" }
            ));
            std::fs::write(path, serde_json::to_string_pretty(&run).unwrap()).unwrap();
        }
        run
    }

    fn receipt(r: &Value) -> (u64, String) {
        (
            r["receipt"]["seq"].as_u64().expect("a receipt seq"),
            r["receipt"]["hash"]
                .as_str()
                .expect("a receipt hash")
                .to_string(),
        )
    }

    /// 16 clients x 25 operations through nginx over 3 servers: one contiguous chain, every
    /// receipt a client got is in it, verify passes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_servers_sixteen_clients_one_chain() {
        let run = run(3, 16, 25, 2, None).await;
        assert_eq!(run.operations, 16 * 25);
        assert_eq!(run.receipts_lost, 0);
        assert!(run.receipts_in_log > run.operations);
    }

    /// 16 agents x 20 steps over 3 replicas; replica 0 is killed with SIGKILL a quarter of
    /// the way in. Every agent finishes, no receipt is lost, verify passes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_replica_killed_mid_run_loses_nothing() {
        let run = run(3, 16, 20, 4, Some(16 * 19 / 4)).await;
        assert_eq!(run.operations, 16 * 20);
        assert_eq!(run.receipts_lost, 0);
        assert!(run.restored > 0, "states moved between replicas: {run:?}");
    }

    /// The same load on 1 replica and on 3 (aggregate steps/s). On 2 cores the replicas
    /// share the cores: a correctness and overhead figure, run by hand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "a measurement: cargo test --release --features llamacpp,testing --test postgres -- --ignored --nocapture"]
    async fn one_replica_against_three() {
        let one = run(1, 16, 20, 4, None).await;
        let three = run(3, 16, 20, 4, None).await;
        eprintln!(
            "1 replica {:.2} steps/s, 3 replicas {:.2} steps/s",
            one.steps_per_s, three.steps_per_s
        );
    }
}
