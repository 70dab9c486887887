//! Signing keys: Ed25519, stored as PKCS#8 PEM in a file only its owner can read.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::receipt::KeyId;

/// Errors loading, creating or parsing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file does not exist.
    #[error("no signing key at {0}: create one with `state-pack keys new`")]
    Missing(PathBuf),
    /// Refusing to overwrite a key.
    #[error("{0} already exists: refusing to overwrite a signing key (pass another --key path)")]
    Exists(PathBuf),
    /// The file is not a PKCS#8 Ed25519 key.
    #[error("{path} is not a PKCS#8 PEM Ed25519 private key: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Readable by others than its owner.
    #[error("{path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A public key given on the command line or in a file that does not parse.
    #[error("not an Ed25519 public key: {0} (expected 64 hex characters)")]
    BadPublicKey(String),
    /// No randomness.
    #[error("cannot draw random bytes for a key: {0}")]
    Random(String),
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The key a store signs receipts and checkpoints with.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    id: KeyId,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.id.short())
    }
}

/// Where the signing key lives unless `--key` or `STATE_PACK_KEY` says otherwise:
/// `$XDG_CONFIG_HOME/state-pack/signing-key.pem` (`~/.config/state-pack/...`).
pub fn default_key_path() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("state-pack")
        .join("signing-key.pem")
}

impl Signer {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key with this 32-byte seed (deterministic; for tests and benchmarks).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let id = KeyId::of(key.verifying_key().as_bytes());
        Self { key, id }
    }

    /// Creates a new key at `path` (owner read/write only), refusing to overwrite one.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let signer = Self::generate()?;
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let pem = signer
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        file.write_all(pem.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        tracing::info!(key_id = %signer.id, path = %path.display(), "created signing key");
        Ok(signer)
    }

    /// Loads the key at `path`, refusing a file that others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                KeyError::Missing(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::TooOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let pem = std::fs::read_to_string(path).map_err(io)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let id = KeyId::of(key.verifying_key().as_bytes());
        Ok(Self { key, id })
    }

    /// Loads the key at `path`, creating it first if there is none. Says which happened.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Ok(s) => Ok((s, false)),
            Err(KeyError::Missing(_)) => Ok((Self::create(path)?, true)),
            Err(e) => Err(e),
        }
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// Signs a 32-byte domain-separated hash.
    pub fn sign(&self, hash: &[u8; 32]) -> [u8; 64] {
        self.key.sign(hash).to_bytes()
    }

    /// Signs a message of any length whose format separates its own domain (a signed
    /// note's text: [`crate::note`]).
    pub fn sign_message(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// An Ed25519 public key that receipts are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadPublicKey(s.chars().take(80).collect());
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).map_err(|_| bad())?;
        VerifyingKey::from_bytes(&b).map(Self).map_err(|_| bad())
    }

    /// A key given as hex on the command line, or as a path to a file holding the hex.
    pub fn from_arg(arg: &str) -> Result<Self, KeyError> {
        let path = Path::new(arg);
        if arg.len() != 64 && path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            return Self::from_hex(text.trim());
        }
        Self::from_hex(arg)
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The 32-byte RFC 8032 encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        *self.0.as_bytes()
    }

    /// From the 32-byte RFC 8032 encoding.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::BadPublicKey(hex::encode(bytes)))
    }

    /// [`verify`](Self::verify) for a message of any length.
    pub fn verify_message(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        self.0
            .verify_strict(message, &Signature::from_bytes(&sig))
            .is_ok()
    }

    /// Its key id.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(self.0.as_bytes())
    }

    /// Strict Ed25519 verification (rejects malleable signatures and small-order keys) of a
    /// signature over a 32-byte hash.
    pub fn verify(&self, hash: &[u8; 32], signature: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        self.0
            .verify_strict(hash, &Signature::from_bytes(&sig))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_owner_only_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/signing-key.pem");
        let created = Signer::create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = Signer::load(&path).unwrap();
        assert_eq!(loaded.key_id(), created.key_id());
        assert!(matches!(Signer::create(&path), Err(KeyError::Exists(_))));
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        Signer::create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Signer::load(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn signatures_verify_strictly() {
        let s = Signer::from_seed([7; 32]);
        let h = [1u8; 32];
        let sig = s.sign(&h);
        let pk = PublicKey::from_hex(&s.public_key().to_hex()).unwrap();
        assert_eq!(pk.key_id(), s.key_id());
        assert!(pk.verify(&h, &sig));
        assert!(!pk.verify(&[2u8; 32], &sig));
        assert!(!pk.verify(&h, &sig[..63]));
        assert!(!Signer::from_seed([8; 32]).public_key().verify(&h, &sig));
    }
}
