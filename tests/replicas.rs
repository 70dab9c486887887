//! Two `state-pack serve` processes, each with its own llama.cpp engine, on one store (a
//! SQLite file both open; Postgres is the store for replicas on several machines, issue 22)
//! and one Redis KV tier: each continues the other's states through the path-style
//! endpoints, loading their KV from Redis instead of prefilling them, and both append to one
//! contiguous, verifiable receipt chain. Behind nginx (`docs/deploy/nginx.conf`), agents
//! finish when one server is killed mid-run, and every receipt a client was given is in
//! the log.
#![cfg(feature = "llamacpp")]

mod common;

use common::servers::{post_retrying, Nginx, RedisServer, Serve, TOKEN};
use common::{turn, BASE};
use serde_json::{json, Value};

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let resp = client
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let answer: Value = resp.json().await.expect("a JSON answer");
    assert!(status.is_success(), "POST {url}: {status} {answer}");
    answer
}

#[tokio::test]
async fn two_servers_on_one_store_continue_each_others_states_from_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    // The first opens the store and its log; the second attaches to them.
    let a = Serve::start(dir.path(), &db, &redis.url);
    let b = Serve::start(dir.path(), &db, &redis.url);
    let client = reqwest::Client::new();
    let greedy = json!({"max_tokens": 6});

    let base = post(
        &client,
        format!("{}/states", a.url),
        json!({"base_text": BASE}),
    )
    .await;
    let s0 = base["new_state_hash"].as_str().unwrap().to_string();

    // B never ran the base: its KV comes from the blob A wrote to Redis.
    let step1 = post(
        &client,
        format!("{}/states/{s0}/infer", b.url),
        json!({"delta_text": turn("Which clause caps liability?"), "sampling": greedy}),
    )
    .await;
    let t = &step1["tokens"];
    assert_eq!(t["restored"], base["tokens"]["state"], "{step1}");
    assert!(t["prefilled"].as_u64().unwrap() < 40, "{step1}");
    let s1 = step1["new_state_hash"].as_str().unwrap().to_string();

    // A never ran step 1: it loads the chain (its own base blob, then B's delta) from Redis.
    let step2 = post(
        &client,
        format!("{}/states/{s1}/infer", a.url),
        json!({"delta_text": turn("And the notice period?"), "sampling": greedy}),
    )
    .await;
    let t = &step2["tokens"];
    // Step 1's blob ends where its prompt did: its generated tokens are prefilled.
    let step1_prompt =
        step1["tokens"]["state"].as_u64().unwrap() - step1["tokens"]["generated"].as_u64().unwrap();
    assert_eq!(t["restored"].as_u64(), Some(step1_prompt), "{step2}");
    assert!(t["prefilled"].as_u64().unwrap() < 40, "{step2}");

    // Both appended to one chain: the three receipts follow each other.
    let seqs: Vec<u64> = [&base, &step1, &step2]
        .iter()
        .map(|r| r["receipt"]["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    drop((a, b));
    let (key, _) = state_pack::ledger::Signer::load_or_create(&dir.path().join("key.pem"))
        .expect("the servers' key");
    assert!(common::verified_by(&db, key.public_key()) >= 4);
}

#[tokio::test]
async fn agents_behind_nginx_finish_when_a_server_is_killed() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let mut a = Serve::start(dir.path(), &db, &redis.url);
    let b = Serve::start(dir.path(), &db, &redis.url);
    let nginx = Nginx::start(&[a.addr.clone(), b.addr.clone()]);
    let client = reqwest::Client::new();
    let questions = [
        "Which clause caps liability?",
        "And the notice period?",
        "Summarise in five words.",
    ];
    // With a session header an agent's steps stay on one server, which holds each state it
    // made: nothing is restored, everything but the new turn is reused.
    let session = Some("agent-with-a-session");
    let base = format!("{BASE}<|im_start|>user\nCase file S.<|im_end|>\n");
    let r = post_retrying(
        &client,
        &format!("{}/states", nginx.url),
        &json!({"base_text": base}),
        session,
    )
    .await;
    let mut s = r["new_state_hash"].as_str().unwrap().to_string();
    for q in &questions {
        let r = post_retrying(
            &client,
            &format!("{}/states/{s}/infer", nginx.url),
            &json!({"delta_text": turn(q), "sampling": {"max_tokens": 6}}),
            session,
        )
        .await;
        let t = &r["tokens"];
        assert!(t.get("restored").is_none(), "{r}");
        assert!(t["prefilled"].as_u64().unwrap() < 30, "{r}");
        s = r["new_state_hash"].as_str().unwrap().to_string();
    }

    let agents = 3;
    let mut states = Vec::new();
    let mut given: Vec<(u64, String)> = Vec::new();
    for i in 0..agents {
        let base = format!("{BASE}<|im_start|>user\nCase file {i}.<|im_end|>\n");
        let r = post_retrying(
            &client,
            &format!("{}/states", nginx.url),
            &json!({"base_text": base}),
            None,
        )
        .await;
        given.push((
            r["receipt"]["seq"].as_u64().unwrap(),
            r["receipt"]["hash"].as_str().unwrap().to_string(),
        ));
        states.push(r["new_state_hash"].as_str().unwrap().to_string());
    }
    let (mut restored, mut prefilled, mut reused) = (0, 0, 0);
    for (step, q) in questions.iter().enumerate() {
        if step == 1 {
            // A replica dies between two steps: no clean shutdown.
            a.child.kill().expect("kill -9 a server");
            a.child.wait().expect("reap it");
        }
        for s in states.iter_mut() {
            let r = post_retrying(
                &client,
                &format!("{}/states/{s}/infer", nginx.url),
                &json!({"delta_text": turn(q), "sampling": {"max_tokens": 6}}),
                None,
            )
            .await;
            let t = &r["tokens"];
            restored += t["restored"].as_u64().unwrap_or(0);
            prefilled += t["prefilled"].as_u64().unwrap();
            reused += t["reused"].as_u64().unwrap();
            given.push((
                r["receipt"]["seq"].as_u64().unwrap(),
                r["receipt"]["hash"].as_str().unwrap().to_string(),
            ));
            *s = r["new_state_hash"].as_str().unwrap().to_string();
        }
    }
    eprintln!("{agents} agents x {} steps: {prefilled} tokens prefilled, {restored} restored from Redis, {reused} reused", questions.len());
    drop((nginx, b));
    let (key, _) = state_pack::ledger::Signer::load_or_create(&dir.path().join("key.pem"))
        .expect("the servers' key");
    assert!(common::verified_by(&db, key.public_key()) as usize >= given.len());
    // Every receipt a client was given is in the log, as given.
    let conn = rusqlite::Connection::open(&db).unwrap();
    for (seq, hash) in &given {
        let stored: Vec<u8> = conn
            .query_row(
                "SELECT hash FROM receipts WHERE seq = ?1",
                [*seq as i64],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("receipt {seq} is not in the log: {e}"));
        assert_eq!(&hex::encode(stored), hash, "receipt {seq}");
    }
}
