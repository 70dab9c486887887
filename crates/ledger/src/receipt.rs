//! The receipt: what one operation did, as canonical bytes with a hash and a signature.
//!
//! The byte layouts are written down here once (and in `docs/RECEIPTS.md`):
//!
//! ```text
//! body          = RFC 8785 (JCS) canonical JSON of a Receipt
//! ReceiptHash   = SHA-256( "state-pack/receipt/v1" || 0x00 || body )
//! signature     = Ed25519( signing key, ReceiptHash )          (64 bytes)
//! KeyId         = SHA-256( Ed25519 public key, 32 bytes )
//! ```
//!
//! The body is stored verbatim; a verifier hashes and checks the stored bytes, and also checks
//! that they are canonical, so there is exactly one byte string per receipt.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hash::{digest_type, DeltaHash, ModelFingerprint, StateHash};
use crate::measured::{Timings, Tokens};

/// Domain tag that starts every receipt hash pre-image.
pub const RECEIPT_DOMAIN_TAG: &[u8] = b"state-pack/receipt/v1\0";

/// The receipt format version written in every body (`"v"`).
pub const RECEIPT_VERSION: u32 = 1;

digest_type!(
    /// The hash of a receipt's canonical body: `SHA-256("state-pack/receipt/v1\0" || body)`.
    /// Each receipt names the previous one's hash, which makes the log a chain.
    ReceiptHash
);

digest_type!(
    /// The id of a signing key: SHA-256 of its 32-byte Ed25519 public key.
    KeyId
);

digest_type!(
    /// The id of one log: 32 random bytes drawn when the log is opened (receipt 0).
    LogId
);

impl ReceiptHash {
    /// The hash of canonical receipt bytes.
    pub fn of(body: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(RECEIPT_DOMAIN_TAG);
        h.update(body);
        Self(h.finalize().into())
    }

    /// The `prev` of receipt 0.
    pub const ZERO: Self = Self([0; 32]);
}

impl KeyId {
    /// The id of an Ed25519 public key.
    pub fn of(public_key: &[u8; 32]) -> Self {
        Self(Sha256::digest(public_key).into())
    }
}

/// What a receipt records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptOp {
    /// Receipt 0: the log's id and its first signing key.
    OpenLog,
    /// A signing key handed over to the next one (signed by the old key).
    RotateKey,
    /// A base state made from text.
    Create,
    /// A state extended by a delta.
    Merge,
    /// A state extended by a delta and generated tokens.
    Infer,
    /// A shorter state replacing a long one.
    Compact,
}

impl ReceiptOp {
    /// The name in the body and the `op` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptOp::OpenLog => "open_log",
            ReceiptOp::RotateKey => "rotate_key",
            ReceiptOp::Create => "create",
            ReceiptOp::Merge => "merge",
            ReceiptOp::Infer => "infer",
            ReceiptOp::Compact => "compact",
        }
    }

    /// Whether this op makes a state (and so names one in `output_state`).
    pub fn makes_state(self) -> bool {
        !matches!(self, ReceiptOp::OpenLog | ReceiptOp::RotateKey)
    }
}

/// The KV blob an operation wrote for its output state (llama.cpp engine): the engine's
/// bytes for positions `start..end`, whose SHA-256 the signature covers. A blob on disk is
/// loaded into the engine only if its bytes hash to this; anyone able to write the blob
/// directory but not to sign receipts cannot feed the engine other bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptKv {
    /// SHA-256 of the engine's bytes (before compression), hex.
    pub sha256: String,
    /// First token position held.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// The state whose blob holds positions `..start` (absent when `start` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<StateHash>,
}

/// The inference server an operation ran on, when the model did not run in this process
/// (`state-pack --engine remote`). The receipt's token counts and engine times are then the
/// server's own figures, as it reported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReceiptRemote {
    /// The server's base URL.
    pub url: String,
    /// The API spoken to it: `llama` (llama-server's `/completion`), `openai-completions`,
    /// `openai-chat`.
    pub api: String,
    /// The model id the server gave.
    pub model: String,
    /// The server returned the generated text, not its token ids: the ids in the output
    /// state are this process's tokenization of that text. Absent when the server returned
    /// the ids it sampled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retokenized: bool,
}

/// One receipt. Fields that do not apply to an op are absent from its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Format version ([`RECEIPT_VERSION`]).
    pub v: u32,
    /// The log this receipt belongs to.
    pub log_id: LogId,
    /// Position in the log, from 0, contiguous.
    pub seq: u64,
    /// What happened.
    pub op: ReceiptOp,
    /// The state operated on (merge, infer, compact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_state: Option<StateHash>,
    /// The state made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_state: Option<StateHash>,
    /// Hash of the appended tokens (for create, the base; for compact, the new base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_hash: Option<DeltaHash>,
    /// SHA-256 of the model's weights file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelFingerprint>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    /// Timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// Whether the engine held the input state's KV when the operation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_was_hot: Option<bool>,
    /// Policy and strategy parameters of a compaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// Sampling parameters of an infer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<serde_json::Value>,
    /// For an infer answered from the store: the receipt of the infer whose result it
    /// repeats (same input state, delta and sampling; nothing was prefilled or generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<u64>,
    /// The Ed25519 public key (hex) of the log's first signer (open_log) or of the next
    /// signer (rotate_key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The KV blob written for the output state, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<ReceiptKv>,
    /// The inference server that ran the operation, if the model was not in this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<ReceiptRemote>,
    /// The previous receipt's hash ([`ReceiptHash::ZERO`] for receipt 0).
    pub prev: ReceiptHash,
    /// The key that signed this receipt.
    pub key_id: KeyId,
    /// When it was signed, Unix milliseconds.
    pub timestamp_ms: u64,
}

/// Errors encoding or decoding a receipt body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not a receipt.
    #[error("not a receipt body: {0}")]
    Parse(#[from] serde_json::Error),
    /// Valid, but not in RFC 8785 canonical form.
    #[error("body is not RFC 8785 canonical JSON")]
    NotCanonical,
    /// Canonicalization failed.
    #[error("cannot canonicalize: {0}")]
    Canonicalize(String),
}

/// RFC 8785 canonical bytes of any serializable value.
pub fn canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, BodyError> {
    serde_json_canonicalizer::to_vec(value).map_err(|e| BodyError::Canonicalize(e.to_string()))
}

/// Parses `body` as a `T` and checks that it is exactly `T`'s canonical encoding.
pub fn parse_canonical<T: Serialize + for<'de> Deserialize<'de>>(
    body: &[u8],
) -> Result<T, BodyError> {
    let value: T = serde_json::from_slice(body)?;
    if canonical_bytes(&value)? != body {
        return Err(BodyError::NotCanonical);
    }
    Ok(value)
}

impl Receipt {
    /// The canonical body.
    pub fn to_body(&self) -> Result<Vec<u8>, BodyError> {
        canonical_bytes(self)
    }

    /// Parses a stored body, refusing anything but its canonical form.
    pub fn from_body(body: &[u8]) -> Result<Self, BodyError> {
        parse_canonical(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Receipt {
        let model = ModelFingerprint::from_bytes([1; 32]);
        Receipt {
            v: RECEIPT_VERSION,
            log_id: LogId::from_bytes([2; 32]),
            seq: 7,
            op: ReceiptOp::Infer,
            input_state: Some(StateHash::from_bytes([3; 32])),
            output_state: Some(StateHash::from_bytes([4; 32])),
            delta_hash: Some(DeltaHash::of(&model, &[5, 6])),
            model: Some(model),
            tokens: Some(Tokens {
                delta: 2,
                state: 40,
                prefilled: 3,
                reused: 37,
                generated: 8,
                restored: 0,
                unreported: 0,
            }),
            timings: Some(Timings {
                prefill_us: 1500,
                decode_us: 2500,
                total_us: 4100,
                restore_us: None,
            }),
            input_was_hot: Some(true),
            policy: None,
            sampling: None,
            replay_of: None,
            public_key: None,
            kv: None,
            remote: None,
            prev: ReceiptHash::from_bytes([9; 32]),
            key_id: KeyId::from_bytes([8; 32]),
            timestamp_ms: 1_790_000_000_000,
        }
    }

    #[test]
    fn body_is_canonical_and_round_trips() {
        let r = sample();
        let body = r.to_body().unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        // Keys sorted by code unit, no whitespace, absent options omitted.
        assert!(text.starts_with(r#"{"delta_hash":"#), "{text}");
        assert!(!text.contains(' ') && !text.contains("policy"), "{text}");
        assert!(text.contains(r#""op":"infer""#), "{text}");
        assert_eq!(Receipt::from_body(&body).unwrap(), r);
    }

    #[test]
    fn non_canonical_bodies_are_refused() {
        let body = sample().to_body().unwrap();
        let spaced = String::from_utf8(body.clone()).unwrap().replace(",", ", ");
        assert!(matches!(
            Receipt::from_body(spaced.as_bytes()),
            Err(BodyError::NotCanonical)
        ));
        let mut extra = String::from_utf8(body).unwrap();
        extra.insert_str(1, r#""zzz":1,"#);
        assert!(Receipt::from_body(extra.as_bytes()).is_err());
    }

    // Known answers computed independently with Python's hashlib:
    // sha256(b"state-pack/receipt/v1\0" + b'{"a":1}').hexdigest()
    // sha256(bytes(range(32))).hexdigest()
    #[test]
    fn hash_known_answers() {
        assert_eq!(
            ReceiptHash::of(br#"{"a":1}"#).to_hex(),
            "def7e0bfaabf64ee656a286e4a83908deb99f7bf39f5fae5634cbd8e4c618699"
        );
        let pk: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            KeyId::of(&pk).to_hex(),
            "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd"
        );
    }
}
