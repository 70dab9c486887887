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

/// The default model's own Jinja template (from its GGUF), evaluated by minijinja, renders a
/// conversation exactly as `ChatTemplate` writes it turn by turn; the loaded engine reports
/// that template.
#[tokio::test]
async fn the_default_models_template_is_rendered_turn_by_turn() {
    use state_pack::engine::gguf::GgufMetadata;
    use state_pack::engine::Engine;
    use state_pack::template::{ChatTemplate, Role};

    let path = common::model_path();
    let meta = GgufMetadata::read(&path).unwrap();
    let jinja = meta
        .str("tokenizer.chat_template")
        .expect("SmolLM2 ships a template");
    let template = ChatTemplate::recognise(Some(jinja)).unwrap();
    assert_eq!(template, ChatTemplate::CHATML);

    let conversation = [
        (Role::System, "You are terse."),
        (Role::User, "What caps liability?"),
        (Role::Assistant, "clause_lookup(14.5)"),
        (
            Role::User,
            "Observation from clause_lookup: fees of 12 months",
        ),
    ];
    let mut env = minijinja::Environment::new();
    env.add_template("model", jinja).unwrap();
    let messages: Vec<_> = conversation
        .iter()
        .map(|(role, content)| minijinja::context! { role => role.name(), content => *content })
        .collect();
    let whole = env
        .get_template("model")
        .unwrap()
        .render(minijinja::context! { messages => messages, add_generation_prompt => true })
        .unwrap();
    let mut turns = String::new();
    let mut previous = None;
    for (role, content) in conversation {
        turns += &template.turn(previous, role, content).unwrap();
        previous = Some(role);
    }
    turns += template.reply_prompt();
    assert_eq!(turns, whole);

    assert_eq!(common::engine().await.info().template, ChatTemplate::CHATML);
}
