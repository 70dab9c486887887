//! A GGUF model's tokenizer alone, through llama.cpp: for engines whose model runs elsewhere
//! (a remote inference server) but whose states are token ids of this vocabulary.

use std::path::Path;
use std::sync::Arc;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use super::{backend, load_err, to_llama};
use crate::engine::gguf::ModelFile;
use crate::engine::EngineError;
use crate::state::ModelFingerprint;
use crate::template::ChatTemplate;

/// The vocabulary of a GGUF file, loaded without its weights (llama.cpp's `vocab_only`):
/// tokenizing and detokenizing exactly as llama.cpp (and so llama-server) does.
#[derive(Clone)]
pub struct LlamaCppVocab {
    model: Arc<LlamaModel>,
    name: String,
    fingerprint: ModelFingerprint,
    template: ChatTemplate,
    trained_context: usize,
}

impl std::fmt::Debug for LlamaCppVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppVocab")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("template", &self.template)
            .finish()
    }
}

impl LlamaCppVocab {
    /// Reads the vocabulary of the GGUF file at `path` (hashing the whole file) and its chat
    /// template (`explicit`, else recognised from the file).
    ///
    /// Fails with [`EngineError::Load`] if the file is missing, not GGUF, or has no
    /// vocabulary llama.cpp can read.
    pub fn open(path: &Path, explicit: Option<ChatTemplate>) -> Result<Self, EngineError> {
        let file = ModelFile::open(path)?;
        let template = file.chat_template(path, explicit)?;
        let trained_context = file.meta.arch_usize("context_length").unwrap_or(0);
        let ModelFile {
            fingerprint, name, ..
        } = file;
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(0)
            .with_vocab_only(true);
        let model =
            LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| load_err(path, e))?;
        Ok(Self {
            model: Arc::new(model),
            name,
            fingerprint,
            template,
            trained_context,
        })
    }

    /// `general.name` of the file, else its file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the whole file.
    pub fn fingerprint(&self) -> ModelFingerprint {
        self.fingerprint
    }

    /// The chat template.
    pub fn template(&self) -> ChatTemplate {
        self.template
    }

    /// The context the model was trained with, from the file's metadata (0 if it has none).
    pub fn trained_context(&self) -> usize {
        self.trained_context
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.model.n_vocab().max(0) as usize
    }

    /// Whether the vocabulary is empty (never, for a file llama.cpp loaded).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token ids of `text`, without BOS/EOS; special-token markup becomes its special token.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        tokenize(&self.model, text)
    }

    /// The text of `tokens`, special tokens included.
    ///
    /// Fails with [`EngineError::Rejected`] on an id outside the vocabulary.
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        detokenize(&self.model, tokens)
    }
}

/// `model`'s token ids of `text` (the engine's and the vocabulary's tokenizer).
pub(super) fn tokenize(model: &LlamaModel, text: &str) -> Vec<u32> {
    model
        .vocab()
        .tokenize(text.as_bytes(), false, true)
        .into_iter()
        .map(|t| t.0 as u32)
        .collect()
}

/// The text of `tokens` in `model`'s vocabulary, special tokens included.
pub(super) fn detokenize(model: &LlamaModel, tokens: &[u32]) -> Result<String, EngineError> {
    check_tokens(model, tokens)?;
    let bytes = model.vocab().detokenize(&to_llama(tokens), false, true);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Refuses an id outside `model`'s vocabulary.
pub(super) fn check_tokens(model: &LlamaModel, tokens: &[u32]) -> Result<(), EngineError> {
    let n_vocab = model.n_vocab().max(0) as u32;
    match tokens.iter().find(|&&t| t >= n_vocab) {
        Some(t) => Err(EngineError::Rejected(format!(
            "token id {t} is outside the model's vocabulary of {n_vocab}"
        ))),
        None => Ok(()),
    }
}
