//! The real clients against the real server: `state-pack serve` (this build's binary) on a
//! loopback port over the default model, driven by the pinned Python packages in
//! `tests/python/requirements.txt` — the `openai` SDK (a 10-turn conversation re-sending its
//! history, streaming, a tool round trip, structured output, errors), LangChain's
//! `ChatOpenAI.bind_tools`, a LangGraph ReAct-style graph whose every model call must be a
//! receipt, the seed README's curl walkthrough, and the dashboard in headless Chromium
//! during a load run (screenshot in `target/tmp/openai_clients/`). The ledger is verified
//! after the server's graceful shutdown.
//!
//! The virtualenv is made on first use with pip (PyPI) and kept in the cache directory.
//! Chromium and curl come from the system; `.ci/run` installs them and sets
//! `STATE_PACK_REQUIRE_SYSTEM_TOOLS=1`, which makes a missing one a failure instead of a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::servers::free_port;
use sha2::{Digest, Sha256};
use state_pack::ledger::{verify_file, VerifyOptions};

const TOKEN: &str = "pytest-token-0123456789abcdef";
const MODEL_ID: &str = "smollm2-135m";

/// The virtualenv with exactly the pinned requirements, made once per requirements file.
fn venv() -> PathBuf {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt");
    let text = std::fs::read(&requirements).expect("read tests/python/requirements.txt");
    let digest = hex::encode(&Sha256::digest(&text)[..6]);
    let dir = state_pack::model::cache_dir(None).join(format!("venv-{digest}"));
    let python = dir.join("bin/python");
    if python.exists() && dir.join(".complete").exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let run = |cmd: &mut Command, what: &str| {
        let status = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(status.success(), "{what} failed ({status})");
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        "python3 -m venv",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
        "pip install -r tests/python/requirements.txt",
    );
    std::fs::write(dir.join(".complete"), b"").unwrap();
    python
}

/// The server process, stopped with SIGTERM (a graceful shutdown) when dropped.
struct Served {
    child: Option<Child>,
}

impl Served {
    fn start(db: &Path, key: &Path, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_state-pack"))
            .arg("--key")
            .arg(key)
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--db"])
            .arg(db)
            .args(["--model-id", MODEL_ID])
            .env("STATE_PACK_TOKENS", format!("pytest:{TOKEN}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start state-pack serve");
        Self { child: Some(child) }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: a plain signal to a child process this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait for the server")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `GET /health` answers (the model loads first).
fn wait_healthy(port: u16) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("state-pack serve did not become healthy in 5 minutes");
}

#[test]
fn openai_sdk_langchain_langgraph_seed_curl_and_the_dashboard_against_the_real_server() {
    common::model_path(); // fetched before the server needs it, so a pip failure says so
    let python = venv();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("clients.db");
    let key = dir.path().join("key.pem");
    let port = free_port();
    let mut server = Served::start(&db, &key, port);
    wait_healthy(port);

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai_clients");
    std::fs::create_dir_all(&out).unwrap();
    let require_tools = std::env::var("STATE_PACK_REQUIRE_SYSTEM_TOOLS").is_ok_and(|v| v == "1");
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python"))
        .env("STATE_PACK_URL", format!("http://127.0.0.1:{port}"))
        .env("STATE_PACK_TOKEN", TOKEN)
        .env("STATE_PACK_MODEL", MODEL_ID)
        .env("STATE_PACK_OUT", &out)
        .env(
            "STATE_PACK_REQUIRE_SYSTEM_TOOLS",
            if require_tools { "1" } else { "0" },
        )
        .status()
        .expect("run pytest");
    let stopped = server.stop();
    assert!(
        status.success(),
        "the Python client suite failed ({status})"
    );
    assert!(
        stopped.success(),
        "the server did not shut down cleanly ({stopped})"
    );
    let report = verify_file(&db, &VerifyOptions::default()).expect("verify the server's ledger");
    assert!(report.ok(), "{report:?}");
    assert!(report.receipts > 20, "{report:?}");
    eprintln!(
        "dashboard screenshot: {}",
        out.join("dashboard.png").display()
    );
}
