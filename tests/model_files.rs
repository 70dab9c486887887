//! Model loading errors: a missing or corrupt file is a one-line error, never a panic.

mod common;

use state_pack::engine::{EngineError, MistralRsEngine, MistralRsOptions};

#[tokio::test]
async fn missing_model_file_is_a_clear_error() {
    let e = MistralRsEngine::load(
        "/nonexistent/model.gguf".as_ref(),
        MistralRsOptions::default(),
    )
    .await
    .err()
    .expect("must fail");
    assert!(matches!(e, EngineError::Load { .. }), "{e}");
}

#[tokio::test]
async fn truncated_model_file_is_a_clear_error() {
    let full = common::model_path();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&cut, &bytes[..4096]).unwrap();
    let e = MistralRsEngine::load(&cut, MistralRsOptions::default())
        .await
        .err()
        .expect("must fail");
    let msg = e.to_string();
    assert!(msg.contains("cut.gguf"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn default_model_matches_its_pin() {
    let path = common::model_path();
    state_pack::model::DEFAULT_MODEL.verify(&path).unwrap();
}
