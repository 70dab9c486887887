//! C2SP signed notes (c2sp.org/signed-note), the checkpoints logs publish in them
//! (c2sp.org/tlog-checkpoint) and witnesses' cosignatures on those (c2sp.org/tlog-cosignature).
//!
//! ```text
//! note          = text ending in "\n", "\n", one or more signature lines
//! signature     = "— " key-name " " base64( key ID (4 bytes, big-endian) || signature ) "\n"
//! Ed25519 key ID = SHA-256( key name || "\n" || 0x01 || public key )[:4]    (signs the text)
//! cosigner key ID = SHA-256( key name || "\n" || 0x04 || public key )[:4]
//! cosignature   = key ID || timestamp (u64 big-endian) || Ed25519 over
//!                 "cosignature/v1\ntime <timestamp>\n" || checkpoint text
//! checkpoint    = origin "\n" tree size "\n" base64(root) "\n" [extension lines]
//! vkey          = key name "+" hex(key ID) "+" base64( type byte || public key )
//! ```
//!
//! A log's checkpoints are signed with the log's current receipt key under the name of its
//! origin, `state-pack.invalid/log/<log id>`; this module is the one place those byte layouts
//! are written down, with the specification's own examples as known-answer tests.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use sha2::{Digest, Sha256};

use crate::keys::{PublicKey, Signer};
use crate::receipt::LogId;
use crate::tlog::Hash;

/// Signature type of a note's Ed25519 signatures.
pub const ED25519: u8 = 0x01;
/// Signature type of timestamped Ed25519 checkpoint cosignatures.
pub const COSIGNATURE_V1: u8 = 0x04;
/// The em dash and space that open a signature line.
const SIG_PREFIX: &str = "\u{2014} ";
/// At most this many signature lines are read (the specification asks for at least 16).
const MAX_SIGNATURES: usize = 64;

/// Why a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a signed note.
    #[error("malformed note: {0}")]
    Malformed(String),
    /// Not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    /// A vkey that does not parse.
    #[error("malformed verifier key {0:?}: expected name+hex(key ID)+base64(type || key)")]
    VerifierKey(String),
    /// A signature by the expected key is there but does not verify.
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
    /// No signature by the expected key.
    #[error("the note carries no signature of {0}")]
    Unsigned(String),
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key ID.
    pub key_id: u32,
    /// What follows the key ID.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line, with its newline.
    pub fn line(&self) -> String {
        let mut bytes = self.key_id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.signature);
        format!(
            "{SIG_PREFIX}{} {}\n",
            self.name,
            BASE64_STANDARD.encode(bytes)
        )
    }
}

/// A signed note: its text and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, final newline included.
    pub text: String,
    /// The signatures, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_string());
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("control characters"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(bad("the last signature line does not end in a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(bad("too many signatures"));
            }
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no signature"))?;
            if !valid_name(name) {
                return Err(bad("a key name is empty or holds spaces or '+'"));
            }
            let bytes = BASE64_STANDARD
                .decode(b64)
                .map_err(|_| bad("a signature is not base64"))?;
            if bytes.len() < 5 {
                return Err(bad("a signature is too short"));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
                signature: bytes[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(bad("no signature"));
        }
        Ok(Self {
            text: text.to_string(),
            signatures,
        })
    }

    /// The note as text: the text, a blank line, the signature lines.
    pub fn encode(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.line());
        }
        out
    }

    /// Checks the signature of `key` (a note signature over the text): `Ok` when it is there
    /// and verifies; a signature of that name and ID that does not verify is an error, as is
    /// no signature of it at all.
    pub fn verify(&self, key: &NoteVerifier) -> Result<(), NoteError> {
        let mine: Vec<&NoteSignature> = self
            .signatures
            .iter()
            .filter(|s| s.name == key.name && s.key_id == key.key_id)
            .collect();
        if mine.is_empty() {
            return Err(NoteError::Unsigned(key.name.clone()));
        }
        for s in mine {
            let ok = match key.kind {
                ED25519 => key.key.verify_message(self.text.as_bytes(), &s.signature),
                COSIGNATURE_V1 => cosignature_verifies(&key.key, &self.text, &s.signature),
                _ => false,
            };
            if !ok {
                return Err(NoteError::BadSignature(key.name.clone()));
            }
        }
        Ok(())
    }

    /// The timestamp of `key`'s cosignature, if it carries one that verifies.
    pub fn cosigned_at(&self, key: &NoteVerifier) -> Option<u64> {
        self.verify(key).ok()?;
        let s = self
            .signatures
            .iter()
            .find(|s| s.name == key.name && s.key_id == key.key_id)?;
        Some(u64::from_be_bytes(s.signature.get(..8)?.try_into().ok()?))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// `SHA-256(name || "\n" || kind || key)[:4]`, big-endian.
pub fn key_id(name: &str, kind: u8, key: &PublicKey) -> u32 {
    let h = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', kind])
        .chain_update(key.to_bytes())
        .finalize();
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// A key that checks note signatures: its name, type, ID and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    /// The key name.
    pub name: String,
    /// [`ED25519`] or [`COSIGNATURE_V1`].
    pub kind: u8,
    /// The key ID.
    pub key_id: u32,
    /// The key.
    pub key: PublicKey,
}

impl NoteVerifier {
    /// The verifier of `key` under `name` for signatures of `kind`.
    pub fn new(name: &str, kind: u8, key: PublicKey) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::VerifierKey(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            kind,
            key_id: key_id(name, kind, &key),
            key,
        })
    }

    /// Parses a vkey, `name+hex(id)+base64(type || key)`; its ID must be the one its name,
    /// type and key give.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let bad = || NoteError::VerifierKey(vkey.chars().take(120).collect());
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let id = u32::from_str_radix(id, 16).map_err(|_| bad())?;
        let bytes = BASE64_STANDARD.decode(key).map_err(|_| bad())?;
        let (&kind, key) = bytes.split_first().ok_or_else(bad)?;
        let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
        if kind != ED25519 && kind != COSIGNATURE_V1 {
            return Err(bad());
        }
        let v = Self::new(name, kind, PublicKey::from_bytes(&key).map_err(|_| bad())?)?;
        if v.key_id != id {
            return Err(bad());
        }
        Ok(v)
    }

    /// The vkey.
    pub fn vkey(&self) -> String {
        let mut bytes = vec![self.kind];
        bytes.extend_from_slice(&self.key.to_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64_STANDARD.encode(bytes)
        )
    }
}

/// Signs `text` as a note under `name` with `signer` (an Ed25519 note signature).
pub fn sign(text: &str, name: &str, signer: &Signer) -> Result<Note, NoteError> {
    let v = NoteVerifier::new(name, ED25519, signer.public_key())?;
    Ok(Note {
        text: text.to_string(),
        signatures: vec![NoteSignature {
            name: v.name,
            key_id: v.key_id,
            signature: signer.sign_message(text.as_bytes()).to_vec(),
        }],
    })
}

fn cosigned_message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// A witness's cosignature (tlog-cosignature v1) on checkpoint text `text` at `timestamp`
/// (Unix seconds).
pub fn cosign(
    text: &str,
    name: &str,
    witness: &Signer,
    timestamp: u64,
) -> Result<NoteSignature, NoteError> {
    let v = NoteVerifier::new(name, COSIGNATURE_V1, witness.public_key())?;
    let mut signature = timestamp.to_be_bytes().to_vec();
    signature.extend_from_slice(&witness.sign_message(&cosigned_message(text, timestamp)));
    Ok(NoteSignature {
        name: v.name,
        key_id: v.key_id,
        signature,
    })
}

fn cosignature_verifies(key: &PublicKey, text: &str, signature: &[u8]) -> bool {
    if signature.len() != 8 + 64 {
        return false;
    }
    let timestamp = u64::from_be_bytes(signature[..8].try_into().unwrap_or_default());
    timestamp < (1 << 63) && key.verify_message(&cosigned_message(text, timestamp), &signature[8..])
}

/// A checkpoint's text (tlog-checkpoint): the log's origin, its size and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointText {
    /// The log's identity.
    pub origin: String,
    /// Leaves (receipts) in the tree.
    pub size: u64,
    /// RFC 6962 root over them.
    pub root: Hash,
}

impl CheckpointText {
    /// The origin of a state-pack log: `state-pack.invalid/log/<log id>` (`.invalid` is a
    /// reserved name: it names the log without claiming a reachable address).
    pub fn origin_of(log: &LogId) -> String {
        format!("state-pack.invalid/log/{}", log.to_hex())
    }

    /// The text: three lines.
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64_STANDARD.encode(self.root)
        )
    }

    /// Parses a checkpoint's text (extension lines are refused: state-pack writes none).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Checkpoint(why.to_string());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root] = lines.as_slice() else {
            return Err(bad("not three lines (origin, size, root)"));
        };
        if origin.is_empty() {
            return Err(bad("empty origin"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad(
                "the size is not a decimal number without leading zeroes",
            ));
        }
        let size = size
            .parse()
            .map_err(|_| bad("the size does not fit 64 bits"))?;
        let root: Hash = BASE64_STANDARD
            .decode(root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the root is not a base64 SHA-256 hash"))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of c2sp.org/signed-note ("Verifier keys", "Example").
    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn the_specification_s_example_verifies() {
        let v = NoteVerifier::parse(SPEC_VKEY).unwrap();
        assert_eq!(v.name, "example.com/foo");
        assert_eq!(v.key_id, 0x530d903a);
        // The ID is the one the name and key give, and the vkey encodes back verbatim.
        assert_eq!(key_id(&v.name, ED25519, &v.key), 0x530d903a);
        assert_eq!(v.vkey(), SPEC_VKEY);
        let note = Note::parse(SPEC_NOTE).unwrap();
        assert_eq!(note.text, "This is an example message.\n");
        assert_eq!(note.encode(), SPEC_NOTE);
        note.verify(&v).unwrap();
        // One changed byte of text: refused.
        let forged = Note {
            text: "This is an example massage.\n".into(),
            ..note.clone()
        };
        assert_eq!(
            forged.verify(&v),
            Err(NoteError::BadSignature("example.com/foo".into()))
        );
        // Another key of the same name: the signature is not its.
        let other = NoteVerifier::new(
            "example.com/foo",
            ED25519,
            Signer::from_seed([1; 32]).public_key(),
        )
        .unwrap();
        assert!(matches!(note.verify(&other), Err(NoteError::Unsigned(_))));
        assert!(NoteVerifier::parse(
            "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
        )
        .is_err());
    }

    /// The checkpoint of c2sp.org/tlog-checkpoint's example parses and encodes back.
    #[test]
    fn the_specification_s_checkpoint_text_round_trips() {
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = CheckpointText::parse(text).unwrap();
        assert_eq!(
            (c.origin.as_str(), c.size),
            ("example.com/behind-the-sofa", 20852163)
        );
        assert_eq!(c.encode(), text);
        for bad in [
            "example.com/x\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "example.com/x\n12\nCsUY\n",
            "example.com/x\n12\n",
            "\n12\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        ] {
            assert!(CheckpointText::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signatures_and_cosignatures_round_trip() {
        let log = Signer::from_seed([3; 32]);
        let witness = Signer::from_seed([4; 32]);
        let text = CheckpointText {
            origin: "state-pack.invalid/log/ab".into(),
            size: 7,
            root: [9; 32],
        }
        .encode();
        let mut note = sign(&text, "state-pack.invalid/log/ab", &log).unwrap();
        note.signatures
            .push(cosign(&text, "witness.example/w1", &witness, 1_700_000_000).unwrap());
        let parsed = Note::parse(&note.encode()).unwrap();
        assert_eq!(parsed, note);
        let log_v =
            NoteVerifier::new("state-pack.invalid/log/ab", ED25519, log.public_key()).unwrap();
        let w_v =
            NoteVerifier::new("witness.example/w1", COSIGNATURE_V1, witness.public_key()).unwrap();
        parsed.verify(&log_v).unwrap();
        assert_eq!(parsed.cosigned_at(&w_v), Some(1_700_000_000));
        assert_eq!(NoteVerifier::parse(&w_v.vkey()).unwrap(), w_v);
        // The cosigner key ID differs from the same key's note-signature ID.
        assert_ne!(
            key_id("w", ED25519, &witness.public_key()),
            key_id("w", COSIGNATURE_V1, &witness.public_key())
        );
        // A cosignature over another size does not verify.
        let other = Note {
            text: text.replace("\n7\n", "\n8\n"),
            ..parsed
        };
        assert!(other.verify(&w_v).is_err());
        for bad in [
            "no blank line\n\u{2014} a AAAAAAA=\n",
            "text\n\n- a AAAAAAAA\n",
            "text\n\n",
            "text\n\n\u{2014} a b c\n",
        ] {
            assert!(Note::parse(bad).is_err(), "{bad:?}");
        }
    }
}
