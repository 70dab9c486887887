//! What a user sees on bad input: a non-zero exit and one line that says what to do.

use std::process::Command;

fn state_pack(args: &[&str]) -> (bool, String) {
    // Never touch the user's own signing key.
    let keys = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_state-pack"))
        .args(args)
        .env("RUST_LOG", "off")
        .env("STATE_PACK_KEY", keys.path().join("key.pem"))
        .output()
        .expect("run state-pack");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (ok, err) = state_pack(args);
    assert!(!ok, "{args:?} must fail");
    assert_eq!(err.lines().count(), 1, "one line, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_state_hash() {
    assert_one_line_error(
        &["state", "not-a-hash"],
        "expected 64 hexadecimal characters",
    );
    assert_one_line_error(&["state", &"g".repeat(64)], "malformed hash");
}

#[test]
fn unwritable_database_path() {
    assert_one_line_error(
        &["run", "--steps", "1", "--db", "/proc/no/such/dir/x.db"],
        "choose a writable path with --db",
    );
}

#[test]
fn missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    assert_one_line_error(
        &[
            "run",
            "--steps",
            "1",
            "--db",
            db.to_str().unwrap(),
            "--model",
            "/no/such/model.gguf",
        ],
        "does not exist",
    );
}

#[test]
fn corrupt_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken.gguf");
    std::fs::write(&model, b"GGUF\x03\x00\x00\x00 truncated").unwrap();
    let db = dir.path().join("x.db");
    assert_one_line_error(
        &[
            "run",
            "--steps",
            "1",
            "--db",
            db.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
        "broken.gguf",
    );
}

/// Engine options are flags (with the old environment names as their `env`): a bad value is
/// refused by the command line before any model is loaded, naming the flag.
#[test]
fn bad_engine_options_are_refused() {
    type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 5] = [
        (&["--batch", "0", "model", "info"], None, "--batch"),
        (&["--threads", "many", "model", "info"], None, "--threads"),
        (
            &["model", "info"],
            Some(("STATE_PACK_LLAMACPP_FLASH_ATTN", "maybe")),
            "--flash-attn",
        ),
        (
            &["model", "info"],
            Some(("STATE_PACK_MISTRALRS_DTYPE", "f8")),
            "--dtype",
        ),
        (
            &["model", "info"],
            Some(("STATE_PACK_MISTRALRS_Q8", "perhaps")),
            "--requantize-q8",
        ),
    ];
    for (args, env, flag) in cases {
        let keys = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_state-pack"));
        cmd.args(args)
            .env("RUST_LOG", "off")
            .env("STATE_PACK_KEY", keys.path().join("key.pem"))
            // A model that does not exist: if the flag were accepted, loading would fail
            // with a different message.
            .env("STATE_PACK_MODEL", "/no/such/model.gguf");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: invalid value"), "{err}");
        assert!(first.contains(flag), "{first:?} should name {flag}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_model_name_mistral_rs_cannot_run_is_refused_before_fetching() {
    assert_one_line_error(
        &["--model", "gemma3-270m", "model", "info"],
        "pass --engine llamacpp",
    );
}

#[test]
fn unknown_model_names_list_the_known_ones() {
    assert_one_line_error(
        &["model", "fetch", "llama-70b"],
        "smollm2-135m, gemma3-270m",
    );
    assert_one_line_error(
        &["--model", "no-such-model", "model", "info"],
        "smollm2-135m, gemma3-270m",
    );
}

#[test]
fn unknown_chat_templates_name_the_choices() {
    let (ok, err) = state_pack(&["--chat-template", "vicuna", "model", "info"]);
    assert!(!ok);
    assert!(
        err.contains("chatml, llama3, gemma, phi3, mistral"),
        "{err}"
    );
}
