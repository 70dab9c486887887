//! The research graph on the real default model, through the `state-pack graph` command:
//! a run killed with SIGKILL mid-graph resumes from its last checkpoint to the same final
//! state as an uninterrupted run (greedy decoding), and an interrupt resumes with a human's
//! input. Both ledgers verify afterwards.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use state_pack::graph::Checkpointer;

fn state_pack(key: &Path) -> Command {
    // Fetch the model here, once, as the CLI would.
    common::model_path();
    let mut c = Command::new(env!("CARGO_BIN_EXE_state-pack"));
    c.env("RUST_LOG", "off").env("STATE_PACK_KEY", key);
    c
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "state-pack failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

fn graph(key: &Path, args: &[&str]) -> Value {
    json_of(
        &state_pack(key)
            .arg("graph")
            .args(args)
            .output()
            .expect("run state-pack graph"),
    )
}

fn verify(key: &Path, db: &Path) {
    let o = state_pack(key)
        .args(["verify", "--db"])
        .arg(db)
        .output()
        .expect("run state-pack verify");
    assert!(
        o.status.success(),
        "verify failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_graph_killed_mid_run_resumes_to_the_same_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let whole = dir.path().join("whole.db");
    let killed = dir.path().join("killed.db");
    let db = |p: &Path| p.to_str().unwrap().to_string();

    let uninterrupted = graph(
        &key,
        &["run", "--json", "--thread", "t", "--db", &db(&whole)],
    );
    assert_eq!(uninterrupted["status"]["status"], "finished");
    let rounds = uninterrupted["state"]["rounds"].as_u64().unwrap();
    assert!(rounds >= 1, "{uninterrupted}");

    // The same run in another process, killed once the researcher's step is checkpointed.
    let mut child = state_pack(&key)
        .args(["graph", "run", "--thread", "t", "--db", &db(&killed)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let checkpoints_before_kill = loop {
        let history = Checkpointer::open(&killed)
            .ok()
            .and_then(|c| c.history("t").ok());
        if let Some(h) = history.filter(|h| h.iter().any(|c| c.step >= 0)) {
            break h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint within 5 minutes"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        checkpoints_before_kill[0].next.len() == 1,
        "{checkpoints_before_kill:?}"
    );

    let resumed = graph(
        &key,
        &["resume", "--json", "--thread", "t", "--db", &db(&killed)],
    );
    assert_eq!(resumed["status"]["status"], "finished");
    assert_eq!(
        resumed["state"], uninterrupted["state"],
        "resumed after SIGKILL:\n{resumed}\nuninterrupted:\n{uninterrupted}"
    );
    // Nothing written before the kill was lost or rewritten.
    let history = Checkpointer::open(&killed).unwrap().history("t").unwrap();
    for c in &checkpoints_before_kill {
        assert!(history.contains(c), "{c:?} lost");
    }
    assert_eq!(
        history.len(),
        Checkpointer::open(&whole)
            .unwrap()
            .history("t")
            .unwrap()
            .len()
    );
    // The two agents share their system prompt: its base was prefilled by the first run only.
    let bases = uninterrupted["bases"].as_array().unwrap();
    assert!(bases.len() >= 2, "{bases:?}");
    assert!(bases[0][1]["prefilled"].as_u64().unwrap() > 0);
    for b in &bases[1..] {
        assert_eq!(b[1]["prefilled"], 0, "{bases:?}");
    }
    verify(&key, &whole);
    verify(&key, &killed);
}

#[test]
fn an_interrupt_pauses_the_graph_and_resumes_with_human_input() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let db = dir.path().join("interrupt.db");
    let db = db.to_str().unwrap();

    let paused = graph(
        &key,
        &[
            "run",
            "--json",
            "--rounds",
            "1",
            "--interrupt-before",
            "reviewer",
            "--db",
            db,
        ],
    );
    assert_eq!(
        paused["status"],
        serde_json::json!({"status": "interrupted_before", "nodes": ["reviewer"]})
    );
    assert_eq!(paused["state"]["findings"].as_array().unwrap().len(), 1);
    assert_eq!(paused["state"]["reviews"].as_array().unwrap().len(), 0);

    let human = r#"{"reviews":["human: check the cap against clause 14.5"]}"#;
    let done = graph(
        &key,
        &[
            "resume",
            "--json",
            "--interrupt-before",
            "reviewer",
            "--human",
            human,
            "--db",
            db,
        ],
    );
    assert_eq!(done["status"]["status"], "finished");
    let reviews = done["state"]["reviews"].as_array().unwrap();
    assert_eq!(reviews[0], "human: check the cap against clause 14.5");
    assert_eq!(reviews.len(), 2, "the reviewer ran after the human: {done}");
    verify(&key, Path::new(db));
}
