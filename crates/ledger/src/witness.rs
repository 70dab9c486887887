//! A witness: a third party that keeps the last checkpoint it cosigned for each log and
//! cosigns a new one only when a consistency proof shows the new tree extends it
//! (c2sp.org/tlog-cosignature v1 signatures, with tlog-witness's rules, run offline over files).
//!
//! A log that shows a witness two different trees of one size, a smaller tree than it showed
//! before, or a tree that does not extend the one it showed, is refused, and the evidence —
//! both signed notes — is written to the witness's state directory: two checkpoints signed by
//! one log key that no consistency proof can join are proof that the log forked.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::keys::Signer;
use crate::note::{self, CheckpointText, Note, NoteError, NoteVerifier};
use crate::stored::ConsistencyProof;

/// Why a witness refused to cosign.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The checkpoint is not a note of the log, or not a checkpoint.
    #[error("not a checkpoint of {log}: {reason}")]
    NotTheLog {
        /// The log's key name.
        log: String,
        /// Why.
        reason: String,
    },
    /// The tree grew since the last cosigned checkpoint, and no proof was given.
    #[error("the last checkpoint cosigned for {origin} has size {old}: a consistency proof from {old} to {new} is needed (`state-pack receipts prove --consistency {old} {new}`)")]
    NeedProof {
        /// The log.
        origin: String,
        /// The cosigned size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The log showed a view that contradicts the one it showed before.
    #[error("{what}: refused; the evidence (both signed checkpoints) is in {}", evidence.display())]
    Fork {
        /// What contradicts what.
        what: String,
        /// The file holding both notes.
        evidence: PathBuf,
    },
    /// The state directory could not be read or written.
    #[error("witness state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Bad names or notes.
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// A witness: its name, its key and where it keeps what it has cosigned.
pub struct Witness {
    name: String,
    signer: Signer,
    state: PathBuf,
}

impl Witness {
    /// A witness named `name` (a schema-less URL) signing with `signer`, keeping its state in
    /// the directory `state`.
    pub fn new(name: &str, signer: Signer, state: &Path) -> Result<Self, WitnessError> {
        // Checks the name once.
        NoteVerifier::new(name, note::COSIGNATURE_V1, signer.public_key())?;
        Ok(Self {
            name: name.to_string(),
            signer,
            state: state.to_path_buf(),
        })
    }

    /// Its cosigner vkey, for auditors' `verify --witness`.
    pub fn vkey(&self) -> String {
        NoteVerifier::new(&self.name, note::COSIGNATURE_V1, self.signer.public_key())
            .map(|v| v.vkey())
            .unwrap_or_default()
    }

    fn state_file(&self, origin: &str) -> PathBuf {
        let h = Sha256::digest(origin.as_bytes());
        self.state
            .join(format!("{}.checkpoint", hex::encode(&h[..12])))
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> WitnessError + '_ {
        move |source| WitnessError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Cosigns `checkpoint` (a signed note of the log `log`) at `now` (Unix seconds) if it
    /// is consistent with the last checkpoint this witness cosigned for the log (`proof`
    /// from that size to this one, when the tree grew); returns the note with the witness's
    /// cosignature added and remembers it.
    pub fn cosign(
        &self,
        log: &NoteVerifier,
        checkpoint: &str,
        proof: Option<&ConsistencyProof>,
        now: u64,
    ) -> Result<Note, WitnessError> {
        let not_log = |reason: String| WitnessError::NotTheLog {
            log: log.name.clone(),
            reason,
        };
        let mut note = Note::parse(checkpoint).map_err(|e| not_log(e.to_string()))?;
        note.verify(log).map_err(|e| not_log(e.to_string()))?;
        let new = CheckpointText::parse(&note.text).map_err(|e| not_log(e.to_string()))?;
        if new.origin != log.name {
            return Err(not_log(format!("its origin is {:?}", new.origin)));
        }
        std::fs::create_dir_all(&self.state).map_err(Self::io(&self.state))?;
        let file = self.state_file(&new.origin);
        if let Some(previous) = self.last(&file)? {
            let old = CheckpointText::parse(&previous.text).map_err(|e| not_log(e.to_string()))?;
            let fork = |what: String| self.evidence(&new.origin, &previous, &note, what);
            if new.size < old.size {
                return Err(fork(format!(
                    "{} showed a tree of {} after one of {} (a rollback)",
                    new.origin, new.size, old.size
                ))?);
            }
            if new.size == old.size && new.root != old.root {
                return Err(fork(format!(
                    "{} showed two different trees of size {} (a fork)",
                    new.origin, new.size
                ))?);
            }
            if new.size > old.size {
                let p = proof.ok_or_else(|| WitnessError::NeedProof {
                    origin: new.origin.clone(),
                    old: old.size,
                    new: new.size,
                })?;
                let joins = p.old_size == old.size
                    && p.new_size == new.size
                    && p.old_root == hex::encode(old.root)
                    && p.new_root == hex::encode(new.root)
                    && p.check().is_ok();
                if !joins {
                    return Err(fork(format!(
                        "{}'s tree of {} does not extend the tree of {} cosigned before (no valid consistency proof)",
                        new.origin, new.size, old.size
                    ))?);
                }
            }
        }
        note.signatures
            .retain(|s| !(s.name == self.name && s.key_id == self.key_id()));
        note.signatures
            .push(note::cosign(&note.text, &self.name, &self.signer, now)?);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, note.encode())
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(Self::io(&file))?;
        Ok(note)
    }

    fn key_id(&self) -> u32 {
        note::key_id(&self.name, note::COSIGNATURE_V1, &self.signer.public_key())
    }

    fn last(&self, file: &Path) -> Result<Option<Note>, WitnessError> {
        match std::fs::read_to_string(file) {
            Ok(text) => Ok(Some(Note::parse(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(file)(e)),
        }
    }

    /// Writes both notes to a file of their own and gives back the refusal naming it.
    fn evidence(
        &self,
        origin: &str,
        before: &Note,
        now: &Note,
        what: String,
    ) -> Result<WitnessError, WitnessError> {
        let h = Sha256::new()
            .chain_update(before.encode())
            .chain_update(now.encode())
            .finalize();
        let path = self
            .state
            .join(format!("evidence-{}.txt", hex::encode(&h[..8])));
        let text = format!(
            "{what}\nlog: {origin}\n\ncheckpoint cosigned before:\n{}\ncheckpoint shown now:\n{}",
            before.encode(),
            now.encode()
        );
        std::fs::write(&path, text).map_err(Self::io(&path))?;
        Ok(WitnessError::Fork {
            what,
            evidence: path,
        })
    }
}
