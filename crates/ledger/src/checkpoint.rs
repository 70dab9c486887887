//! Signed checkpoints over an RFC 6962 Merkle tree of receipts, and inclusion proofs.
//!
//! ```text
//! leaf data       = ReceiptHash of receipt i (32 bytes)
//! leaf hash       = SHA-256( 0x00 || leaf data )                    (RFC 6962 §2.1)
//! node hash       = SHA-256( 0x01 || left || right )
//! checkpoint body = RFC 8785 canonical JSON of a Checkpoint
//! CheckpointHash  = SHA-256( "state-pack/checkpoint/v1" || 0x00 || body )
//! signature       = Ed25519( signing key, CheckpointHash )
//! ```
//!
//! The tree is [`ct_merkle`]'s, which implements RFC 6962; this module only fixes what a leaf
//! is and how a checkpoint is encoded and signed.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{InclusionProof, RootHash};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hash::digest_type;
use crate::keys::{PublicKey, Signer};
use crate::receipt::{
    canonical_bytes, parse_canonical, BodyError, KeyId, LogId, Receipt, ReceiptHash,
};

/// Domain tag that starts every checkpoint hash pre-image.
pub const CHECKPOINT_DOMAIN_TAG: &[u8] = b"state-pack/checkpoint/v1\0";

digest_type!(
    /// The RFC 6962 Merkle tree head over the first `size` receipts.
    MerkleRoot
);

digest_type!(
    /// `SHA-256("state-pack/checkpoint/v1\0" || body)`: what a checkpoint's signature covers.
    CheckpointHash
);

impl CheckpointHash {
    /// The hash of a canonical checkpoint body.
    pub fn of(body: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(CHECKPOINT_DOMAIN_TAG);
        h.update(body);
        Self(h.finalize().into())
    }
}

/// The head of the log at some size: what an auditor saves and later checks growth against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version (1).
    pub v: u32,
    /// The log.
    pub log_id: LogId,
    /// Receipts covered: seq 0 .. size-1.
    pub size: u64,
    /// Merkle tree head over those receipts.
    pub root: MerkleRoot,
    /// Hash of receipt `size - 1`.
    pub head: ReceiptHash,
    /// The key that signed it.
    pub key_id: KeyId,
    /// When, Unix milliseconds.
    pub timestamp_ms: u64,
}

/// A checkpoint with its canonical body and signature, as stored and as exchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// The canonical body, verbatim (a JSON text).
    pub body: String,
    /// Ed25519 signature over [`CheckpointHash`] of the body, hex.
    pub signature: String,
}

impl Checkpoint {
    /// Encodes and signs.
    pub fn sign(&self, signer: &Signer) -> Result<SignedCheckpoint, BodyError> {
        let body = canonical_bytes(self)?;
        let signature = signer.sign(CheckpointHash::of(&body).as_bytes());
        Ok(SignedCheckpoint {
            body: String::from_utf8(body).map_err(|e| BodyError::Canonicalize(e.to_string()))?,
            signature: hex::encode(signature),
        })
    }
}

impl SignedCheckpoint {
    /// The checkpoint, if the body is canonical.
    pub fn checkpoint(&self) -> Result<Checkpoint, BodyError> {
        parse_canonical(self.body.as_bytes())
    }

    /// Whether `key` signed exactly this body.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let Ok(sig) = hex::decode(&self.signature) else {
            return false;
        };
        key.verify(CheckpointHash::of(self.body.as_bytes()).as_bytes(), &sig)
    }
}

/// The Merkle tree over receipt hashes, built up one receipt at a time.
#[derive(Default, Clone)]
pub struct ReceiptTree {
    tree: MemoryBackedTree<Sha256, [u8; 32]>,
}

impl ReceiptTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next receipt.
    pub fn push(&mut self, receipt: ReceiptHash) {
        self.tree.push(*receipt.as_bytes());
    }

    /// Receipts in the tree.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The tree head now.
    pub fn root(&self) -> MerkleRoot {
        MerkleRoot::from_bytes(
            self.tree
                .root()
                .as_bytes()
                .as_slice()
                .try_into()
                .unwrap_or([0; 32]),
        )
    }

    /// The inclusion proof of receipt `seq` in the tree as it is now (sibling hashes from the
    /// leaf up, RFC 6962 §2.1.1), or `None` if `seq` is not in the tree.
    pub fn prove(&self, seq: u64) -> Option<Vec<[u8; 32]>> {
        if seq >= self.len() {
            return None;
        }
        let proof = self.tree.prove_inclusion(usize::try_from(seq).ok()?);
        Some(
            proof
                .as_bytes()
                .chunks_exact(32)
                .filter_map(|c| c.try_into().ok())
                .collect(),
        )
    }
}

/// Whether `proof` shows receipt `receipt` at position `seq` in the tree of `size` receipts
/// whose head is `root`.
pub fn verify_inclusion(
    root: &MerkleRoot,
    size: u64,
    seq: u64,
    receipt: &ReceiptHash,
    proof: &[[u8; 32]],
) -> bool {
    let root = RootHash::<Sha256>::new((*root.as_bytes()).into(), size);
    let proof = InclusionProof::<Sha256>::from_bytes(proof.concat());
    root.verify_inclusion(receipt.as_bytes(), seq, &proof)
        .is_ok()
}

/// Everything an auditor needs to check one receipt offline: its body and signature, the
/// signer's public key, an inclusion proof and the signed checkpoint it leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReceiptProof {
    /// The receipt's position.
    pub seq: u64,
    /// Its canonical body, verbatim.
    pub body: String,
    /// Its signature, hex.
    pub signature: String,
    /// The public key that signed it, hex (check it against one you trust).
    pub public_key: String,
    /// Sibling hashes from the leaf to the root, hex.
    pub proof: Vec<String>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: SignedCheckpoint,
    /// The public key that signed the checkpoint, hex.
    pub checkpoint_public_key: String,
}

/// Why a [`ReceiptProof`] does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proof does not verify: {0}")]
pub struct ProofError(pub String);

impl ReceiptProof {
    /// Checks the proof offline: the receipt's body is canonical and signed by
    /// `public_key`, the checkpoint is signed by `checkpoint_public_key`, and the receipt is
    /// leaf `seq` of the checkpoint's tree. With `trusted` keys given, both signers must be
    /// among them. Returns the receipt.
    pub fn check(&self, trusted: &[PublicKey]) -> Result<Receipt, ProofError> {
        let err = |m: String| ProofError(m);
        let key = PublicKey::from_hex(&self.public_key).map_err(|e| err(e.to_string()))?;
        let cp_key =
            PublicKey::from_hex(&self.checkpoint_public_key).map_err(|e| err(e.to_string()))?;
        if !trusted.is_empty() {
            for (what, k) in [("receipt", key), ("checkpoint", cp_key)] {
                if !trusted.contains(&k) {
                    return Err(err(format!(
                        "the {what} is signed by {}, which is not a trusted --pubkey",
                        k.to_hex()
                    )));
                }
            }
        }
        let receipt = Receipt::from_body(self.body.as_bytes()).map_err(|e| err(e.to_string()))?;
        if receipt.seq != self.seq {
            return Err(err(format!(
                "the body is receipt {}, not {}",
                receipt.seq, self.seq
            )));
        }
        if receipt.key_id != key.key_id() {
            return Err(err("the receipt names another signing key".into()));
        }
        let hash = ReceiptHash::of(self.body.as_bytes());
        let sig = hex::decode(&self.signature).map_err(|e| err(e.to_string()))?;
        if !key.verify(hash.as_bytes(), &sig) {
            return Err(err("the receipt's signature does not verify".into()));
        }
        let cp = self
            .checkpoint
            .checkpoint()
            .map_err(|e| err(e.to_string()))?;
        if cp.key_id != cp_key.key_id() || !self.checkpoint.verify(&cp_key) {
            return Err(err("the checkpoint's signature does not verify".into()));
        }
        if cp.log_id != receipt.log_id {
            return Err(err("the checkpoint belongs to another log".into()));
        }
        let proof: Vec<[u8; 32]> = self
            .proof
            .iter()
            .map(|h| {
                let mut b = [0u8; 32];
                hex::decode_to_slice(h, &mut b).map(|_| b)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("malformed proof hash: {e}")))?;
        if !verify_inclusion(&cp.root, cp.size, self.seq, &hash, &proof) {
            return Err(err(format!(
                "receipt {} is not in the tree of checkpoint size {}",
                self.seq, cp.size
            )));
        }
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u8) -> ReceiptHash {
        ReceiptHash::from_bytes([i; 32])
    }

    // RFC 6962 by hand: leaf = H(0x00 || data), node = H(0x01 || l || r); for three leaves
    // the root is node(node(l0, l1), l2).
    #[test]
    fn root_follows_rfc_6962() {
        let h = |parts: &[&[u8]]| -> [u8; 32] {
            let mut d = Sha256::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().into()
        };
        let l: Vec<[u8; 32]> = (0..3).map(|i| h(&[&[0], &[i; 32]])).collect();
        let expected = h(&[&[1], &h(&[&[1], &l[0], &l[1]]), &l[2]]);
        let mut t = ReceiptTree::new();
        (0..3).for_each(|i| t.push(leaf(i)));
        assert_eq!(t.root().as_bytes(), &expected);
    }

    #[test]
    fn inclusion_proofs_verify_and_reject() {
        let mut t = ReceiptTree::new();
        (0..11).for_each(|i| t.push(leaf(i)));
        let root = t.root();
        for seq in 0..11u64 {
            let p = t.prove(seq).unwrap();
            assert!(verify_inclusion(&root, 11, seq, &leaf(seq as u8), &p));
            assert!(!verify_inclusion(&root, 11, seq, &leaf(99), &p));
            assert!(!verify_inclusion(
                &root,
                11,
                (seq + 1) % 11,
                &leaf(seq as u8),
                &p
            ));
        }
        assert!(t.prove(11).is_none());
    }

    #[test]
    fn checkpoint_signature_covers_the_body() {
        let s = Signer::from_seed([3; 32]);
        let cp = Checkpoint {
            v: 1,
            log_id: LogId::from_bytes([1; 32]),
            size: 3,
            root: MerkleRoot::from_bytes([2; 32]),
            head: leaf(2),
            key_id: s.key_id(),
            timestamp_ms: 5,
        };
        let signed = cp.sign(&s).unwrap();
        assert!(signed.verify(&s.public_key()));
        assert_eq!(signed.checkpoint().unwrap(), cp);
        let mut forged = signed.clone();
        forged.body = forged.body.replace("\"size\":3", "\"size\":2");
        assert!(!forged.verify(&s.public_key()));
    }

    // sha256(b"state-pack/checkpoint/v1\0" + b'{"a":1}').hexdigest()
    #[test]
    fn checkpoint_hash_known_answer() {
        assert_eq!(
            CheckpointHash::of(br#"{"a":1}"#).to_hex(),
            "7ff2cdbb29a4f6e750c6a2fb18e3332fb9096a4608a59cbc8cd3962e63d523b1"
        );
    }
}
