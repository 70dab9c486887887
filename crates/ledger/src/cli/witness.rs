//! `state-pack witness`: cosign a log's checkpoints, offline, as a third party.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::read_input;
use crate::note::NoteVerifier;
use crate::stored::ConsistencyProof;
use crate::witness::Witness;
use crate::Signer;

/// `state-pack witness ...`
#[derive(Subcommand)]
pub enum WitnessCommand {
    /// Cosign a log's checkpoint note (c2sp.org/tlog-cosignature v1) if it extends the last
    /// one this witness cosigned for that log; prints the note with the cosignature added
    /// (hand it to the log: `state-pack receipts cosign`). A fork, a rollback or a tree that
    /// does not extend the last one is refused, and both notes are written out as evidence.
    Cosign {
        /// The log's checkpoint note (`receipts checkpoint --format note`), or - for stdin.
        checkpoint: PathBuf,
        /// The log's note verifier key (`receipts checkpoint --format vkey`).
        #[arg(long)]
        log: String,
        /// The consistency proof from the last cosigned size to this checkpoint's
        /// (`receipts prove --consistency OLD NEW`), when the log grew.
        #[arg(long)]
        proof: Option<PathBuf>,
        /// The witness's own options.
        #[command(flatten)]
        me: WitnessIdentity,
    },
    /// Print this witness's cosigner vkey, for auditors' `verify --witness`.
    Vkey {
        /// The witness's own options.
        #[command(flatten)]
        me: WitnessIdentity,
    },
}

/// Who the witness is and where it keeps its state.
#[derive(clap::Args)]
pub struct WitnessIdentity {
    /// The witness's name, a schema-less URL (e.g. witness.example.com/w1).
    #[arg(long)]
    name: String,
    /// The witness's Ed25519 key (PKCS#8 PEM; `state-pack keys new --key FILE` makes one).
    #[arg(long)]
    witness_key: PathBuf,
    /// Where it keeps the last checkpoint it cosigned for each log, and any evidence.
    #[arg(long, default_value = "witness-state")]
    state: PathBuf,
}

impl WitnessIdentity {
    fn witness(&self) -> Result<Witness> {
        Ok(Witness::new(
            &self.name,
            Signer::load(&self.witness_key)?,
            &self.state,
        )?)
    }
}

/// `state-pack witness ...`
pub fn witness(command: WitnessCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        WitnessCommand::Vkey { me } => writeln!(out, "{}", me.witness()?.vkey())?,
        WitnessCommand::Cosign {
            checkpoint,
            log,
            proof,
            me,
        } => {
            let w = me.witness()?;
            let log = NoteVerifier::parse(&log).context("--log")?;
            let proof: Option<ConsistencyProof> = proof
                .map(|p| -> Result<ConsistencyProof> {
                    serde_json::from_str(&read_input(&p)?)
                        .context("not a proof printed by `receipts prove --consistency`")
                })
                .transpose()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let note = w.cosign(&log, &read_input(&checkpoint)?, proof.as_ref(), now)?;
            write!(out, "{}", note.encode())?;
        }
    }
    Ok(())
}
