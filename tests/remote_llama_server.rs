//! The remote engine against a real llama-server (built by `benches/llama-server.sh
//! --build-only`, started here on a loopback port with the default model): the demo loop and
//! the agent loop, reuse counts equal to the server's own counters, outputs beside the
//! in-process llama.cpp engine's, `verify`, and every failure the issue names — refused
//! connections, timeouts, non-JSON answers, another model — as one-line errors that write no
//! state and no receipt.
#![cfg(feature = "llamacpp")]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::servers::free_port;
use common::*;
use state_pack::agent::{Action, AgentLoop};
use state_pack::engine::{Engine, LlamaCppEngine, LlamaCppOptions, Sampling};
use state_pack::ledger::Receipt;
use state_pack::legal::LegalAgent;
use state_pack::remote::{RemoteApi, RemoteEngine, RemoteOptions};
use state_pack::{StatePack, Store};

/// llama-server as `benches/llama-server.sh --build-only` builds it, or `$STATE_PACK_LLAMA_SERVER`.
fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STATE_PACK_LLAMA_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let p = Path::new(&home)
        .join(".cache/state-pack/llama-server-0.3.36-tilecfg/build/bin/llama-server");
    assert!(
        p.exists(),
        "no llama-server at {}: build it with `benches/llama-server.sh --build-only` (.ci/run does)",
        p.display()
    );
    p
}

/// A llama-server child on a loopback port, killed on drop.
struct Server {
    child: Child,
    url: String,
    port: u16,
}

impl Server {
    fn start(alias: &str) -> Self {
        Self::start_on(free_port(), alias)
    }

    fn start_on(port: u16, alias: &str) -> Self {
        let child = Command::new(server_binary())
            .args(["-m"])
            .arg(model_path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--alias",
                alias,
                "-np",
                "1",
                "-c",
                "4096",
                "--metrics",
                "-t",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start llama-server");
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = probe::blocking_get(&format!("{url}/health")) {
                if r == 200 {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "llama-server did not come up on {url}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Self { child, url, port }
    }

    /// `llamacpp:prompt_tokens_total` of `/metrics`: prompt tokens the server ran through the
    /// model (its own count, not ours).
    fn prompt_tokens_total(&self) -> u64 {
        let text = probe::blocking_text(&format!("{}/metrics", self.url)).expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("llamacpp:prompt_tokens_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no prompt_tokens_total in /metrics:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain blocking HTTP for the test's own probes (not the client under test).
mod probe {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(url: &str) -> std::io::Result<(u16, String)> {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let mut s = TcpStream::connect(host)?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string());
        Ok((status, body))
    }

    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        get(url).map(|(s, _)| s)
    }

    pub fn blocking_text(url: &str) -> std::io::Result<String> {
        get(url).map(|(_, b)| b)
    }
}

async fn remote(url: &str, api: RemoteApi) -> RemoteEngine {
    RemoteEngine::connect(RemoteOptions::new(url, api, &model_path()))
        .await
        .expect("connect")
}

fn receipts(db: &Path) -> Vec<Receipt> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT body FROM receipts ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| Receipt::from_body(&b.unwrap()).unwrap())
        .collect();
    rows
}

const QUESTIONS: [&str; 3] = [
    "What is a tort?",
    "Name one defence to it.",
    "Say it in five words.",
];

/// The demo loop (a base, then a question and a greedy answer per step) on `engine`; the
/// outputs and the pack.
async fn demo(engine: Arc<dyn Engine>, db: &Path) -> (Vec<String>, StatePack) {
    let pack = StatePack::new(engine, Store::open(db, key()).unwrap());
    let mut state = pack.create(BASE).await.unwrap().output;
    let mut outputs = Vec::new();
    for q in QUESTIONS {
        let step = pack
            .infer(&state, &turn(q), &Sampling::greedy(12))
            .await
            .unwrap();
        outputs.push(step.text.clone());
        state = step.report.output;
    }
    (outputs, pack)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_loop_reuses_what_the_server_says_and_verifies() {
    let server = Server::start("smollm2-a");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("remote.db");
    let before = server.prompt_tokens_total();
    let (outputs, pack) = demo(Arc::new(remote(&server.url, RemoteApi::Llama).await), &db).await;
    let totals = pack.totals().unwrap();
    pack.close().unwrap();
    drop(pack);
    let after = server.prompt_tokens_total();
    // Every token our receipts say was prefilled is one the server counted as evaluated.
    assert_eq!(totals.prefilled, after - before, "{totals:?}");
    let rs = receipts(&db);
    let ops: Vec<_> = rs.iter().filter(|r| r.tokens.is_some()).collect();
    assert_eq!(ops.len(), 1 + QUESTIONS.len());
    for r in &ops {
        let remote = r
            .remote
            .as_ref()
            .expect("a remote receipt names its server");
        assert_eq!(remote.url, server.url);
        assert_eq!(remote.api, "llama");
        assert_eq!(remote.model, "smollm2-a");
        assert!(!remote.retokenized, "llama-server returns its sampled ids");
        assert_eq!(r.tokens.unwrap().unreported, 0);
        // What the engine held is the server's business: not claimed.
        assert_eq!(r.input_was_hot, None);
    }
    // After the base, each step's context was reused by the server's prompt cache.
    for r in &ops[1..] {
        let t = r.tokens.unwrap();
        assert!(t.reused > 0 && t.prefilled <= t.delta + 1, "{t:?}");
    }
    assert!(outputs.iter().all(|o| !o.is_empty()), "{outputs:?}");
    assert_eq!(verified(&db), rs.len() as u64);

    // The same loop on the in-process llama.cpp engine: same vocabulary, and the same greedy
    // outputs where the two builds' numerics agree (they are different llama.cpp versions).
    let local = LlamaCppEngine::load(&model_path(), LlamaCppOptions::default())
        .await
        .unwrap();
    let (local_outputs, pack) = demo(Arc::new(local), &dir.path().join("local.db")).await;
    pack.close().unwrap();
    assert_eq!(
        outputs[0], local_outputs[0],
        "first answer: remote vs in-process"
    );
    eprintln!("remote:     {outputs:?}\nin-process: {local_outputs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_loop_runs_its_grammar_on_the_server() {
    let server = Server::start("smollm2-agent");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let engine = remote(&server.url, RemoteApi::Llama).await;
    let pack = Arc::new(StatePack::new(
        Arc::new(engine),
        Store::open(&db, key()).unwrap(),
    ));
    let agent = AgentLoop::new(pack.clone(), LegalAgent)
        .max_steps(3)
        .answer_from_step(2);
    let report = agent
        .run("What is the liability cap in clause 14.5 of NSA-2021-044?")
        .await
        .unwrap();
    for s in &report.steps {
        assert!(
            s.action.is_ok(),
            "step {} did not parse: {:?}",
            s.number,
            s.output
        );
    }
    let Ok(Action::Calls(calls)) = &report.steps[0].action else {
        panic!("step 1 is not a tool call: {:?}", report.steps[0].output);
    };
    assert!(calls
        .iter()
        .all(|c| c.tool == "clause_lookup" || c.tool == "multiply"));
    drop(agent);
    Arc::try_unwrap(pack).ok().unwrap().close().unwrap();
    verified(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_completions_reuse_and_retokenized_ids_are_recorded() {
    let server = Server::start("smollm2-oai");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oai.db");
    let before = server.prompt_tokens_total();
    let (outputs, pack) = demo(
        Arc::new(remote(&server.url, RemoteApi::OpenAiCompletions).await),
        &db,
    )
    .await;
    let totals = pack.totals().unwrap();
    pack.close().unwrap();
    drop(pack);
    assert_eq!(totals.prefilled, server.prompt_tokens_total() - before);
    let rs = receipts(&db);
    let infers: Vec<_> = rs.iter().filter(|r| r.sampling.is_some()).collect();
    assert_eq!(infers.len(), QUESTIONS.len());
    for r in infers {
        let remote = r.remote.as_ref().unwrap();
        assert_eq!(remote.api, "openai-completions");
        // llama-server's /v1/completions returns text, not ids: the receipt says so.
        assert!(remote.retokenized);
        assert!(r.tokens.unwrap().reused > 0);
    }
    assert!(outputs.iter().all(|o| !o.is_empty()));
    verified(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_sends_the_states_turns_as_messages() {
    let server = Server::start("smollm2-chat");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let (outputs, pack) = demo(
        Arc::new(remote(&server.url, RemoteApi::OpenAiChat).await),
        &db,
    )
    .await;
    pack.close().unwrap();
    drop(pack);
    let rs = receipts(&db);
    let infers: Vec<_> = rs.iter().filter(|r| r.sampling.is_some()).collect();
    assert_eq!(infers.len(), QUESTIONS.len());
    for r in &infers {
        let remote = r.remote.as_ref().unwrap();
        assert_eq!(remote.api, "openai-chat");
        assert!(remote.retokenized);
    }
    // The server renders the same turns it was sent last step: its cache reuses them.
    for r in &infers[1..] {
        assert!(r.tokens.unwrap().reused > 0, "{:?}", r.tokens);
    }
    assert!(outputs.iter().all(|o| !o.is_empty()), "{outputs:?}");
    verified(&db);
}

/// A server that accepts connections and answers `replies` in turn (status and body; the
/// last one again and again), or nothing at all when `replies` is empty.
fn fake_server(replies: &'static [(u16, &'static str)]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            match replies.get(n).or(replies.last()) {
                Some((status, body)) => {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                None => held.push(conn),
            }
        }
    });
    url
}

const MODELS: &str =
    r#"{"object":"list","data":[{"id":"m","meta":{"n_vocab":49152,"n_ctx":2048}}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_one_line_errors() {
    let tokenizer = model_path();
    let options = |url: &str| RemoteOptions {
        timeout: Duration::from_secs(2),
        retries: 1,
        ..RemoteOptions::new(url, RemoteApi::Llama, &tokenizer)
    };
    // Nothing listening.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let e = RemoteEngine::connect(options(&closed))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&closed) && !e.contains('\n'), "{e}");
    // Answers that are not JSON.
    let e = RemoteEngine::connect(options(&fake_server(&[(200, "<html>hi</html>")])))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not JSON") && !e.contains('\n'), "{e}");
    // JSON of another shape.
    let e = RemoteEngine::connect(options(&fake_server(&[(200, "{\"object\":\"list\"}")])))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("data"), "{e}");
    // No answer at all: the timeout.
    let started = Instant::now();
    let e = RemoteEngine::connect(options(&fake_server(&[])))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.to_lowercase().contains("timed out") || e.contains("timeout"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // A refusal is not retried and names its status.
    let e = RemoteEngine::connect(options(&fake_server(&[(404, "no such route")])))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("no such route"), "{e}");
    // A transient failure is retried (once here): the second answer connects.
    let engine = RemoteEngine::connect(options(&fake_server(&[(503, "loading"), (200, MODELS)])))
        .await
        .unwrap();
    assert_eq!(engine.server_model(), "m");
    // One that keeps failing gives up after the retries, with the last status.
    let e = RemoteEngine::connect(options(&fake_server(&[(503, "loading")])))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("503") && !e.contains('\n'), "{e}");
    // A server whose vocabulary is not the tokenizer's.
    let e = RemoteEngine::connect(options(&fake_server(&[(
        200,
        r#"{"data":[{"id":"other","meta":{"n_vocab":32000}}]}"#,
    )])))
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("32000") && e.contains("49152"), "{e}");
    // A model the server does not serve.
    let server = Server::start("smollm2-e");
    let e = RemoteEngine::connect(RemoteOptions {
        model: Some("llama-3-70b".into()),
        ..options(&server.url)
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("llama-3-70b") && e.contains("smollm2-e"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_model_or_a_dead_server_writes_nothing() {
    let port = free_port();
    let server = Server::start_on(port, "smollm2-before");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switch.db");
    let url = server.url.clone();
    let options = RemoteOptions {
        retries: 1,
        timeout: Duration::from_secs(20),
        ..RemoteOptions::new(&url, RemoteApi::Llama, &model_path())
    };
    let engine = RemoteEngine::connect(options.clone()).await.unwrap();
    let pack = StatePack::new(Arc::new(engine), Store::open(&db, key()).unwrap());
    let state = pack.create(BASE).await.unwrap().output;
    let before = receipts(&db).len();

    // The server dies: the infer fails, nothing is written.
    drop(server);
    let e = pack
        .infer(&state, &turn("Hi"), &Sampling::greedy(4))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&url) && !e.contains('\n'), "{e}");
    assert_eq!(receipts(&db).len(), before);

    // It comes back with another model id: answers from it are refused, nothing is written.
    let server = Server::start_on(port, "smollm2-after");
    assert_eq!(server.port, port);
    let e = pack
        .infer(&state, &turn("Hi"), &Sampling::greedy(4))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("smollm2-after") && e.contains("smollm2-before"),
        "{e}"
    );
    assert_eq!(receipts(&db).len(), before);
    pack.close().unwrap();
    drop(pack);

    // A fresh engine on it has another fingerprint, so the old states are not its.
    let engine = RemoteEngine::connect(options).await.unwrap();
    let pack = StatePack::new(Arc::new(engine), Store::open(&db, key()).unwrap());
    let e = pack
        .infer(&state, &turn("Hi"), &Sampling::greedy(4))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("model"), "{e}");
    assert_eq!(receipts(&db).len(), before);
    pack.close().unwrap();
    verified(&db);
}

/// The command line as an operator uses it: `--engine remote` for the demo agent, then
/// `verify` on what it wrote, and a one-line error without `--remote-url`.
#[test]
fn the_cli_runs_the_demo_agent_through_the_server() {
    let server = Server::start("smollm2-cli");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_state-pack"))
            .args(args)
            .env("RUST_LOG", "off")
            .env("STATE_PACK_KEY", dir.path().join("key.pem"))
            .output()
            .expect("run state-pack")
    };
    let db_arg = db.to_str().unwrap();
    let out = run(&[
        "--engine",
        "remote",
        "--remote-url",
        &server.url,
        "run",
        "--steps",
        "2",
        "--db",
        db_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reused") && stdout.contains("verify them with"),
        "{stdout}"
    );
    let out = run(&["verify", "--db", db_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rs = receipts(&db);
    assert!(rs.iter().filter(|r| r.remote.is_some()).count() >= 3);

    let out = run(&["--engine", "remote", "run", "--steps", "1", "--db", db_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--remote-url") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}
