//! `state-pack verify`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{existing, parse_keys};
use crate::note::NoteVerifier;
use crate::{verify_file, TrustedCheckpoint, VerifyOptions, VerifyReport};

/// `state-pack verify` arguments.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The database to check: an SQLite file, or a `postgres://` URL (read only).
    #[arg(long, default_value = "state-pack.db")]
    db: PathBuf,
    /// A public key of the log (hex, or a file holding it): the key it was opened with, or
    /// a key it was handed to by a rotation that key signed. Without it the log's own first
    /// key is trusted, and the report says so.
    #[arg(long)]
    pubkey: Vec<String>,
    /// A checkpoint saved by an earlier `verify --save-checkpoint`, or a C2SP checkpoint note
    /// (GET /checkpoint as text): the log must extend it (checked by consistency proof).
    #[arg(long)]
    trusted_checkpoint: Option<PathBuf>,
    /// A witness's cosigner vkey (`state-pack witness vkey`): the newest checkpoint must carry
    /// its valid cosignature. Repeat for several witnesses.
    #[arg(long)]
    witness: Vec<String>,
    /// After a successful check, save the log's head here for the next verification.
    #[arg(long)]
    save_checkpoint: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `state-pack verify`: exit status 0 only if everything checks out.
pub fn verify(args: VerifyArgs, out: &mut dyn Write) -> Result<bool> {
    let trusted_checkpoint = args
        .trusted_checkpoint
        .as_ref()
        .map(|p| -> Result<TrustedCheckpoint> {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read trusted checkpoint {}", p.display()))?;
            if !text.trim_start().starts_with('{') {
                crate::note::Note::parse(&text).with_context(|| {
                    format!(
                        "{} is neither a saved checkpoint nor a checkpoint note",
                        p.display()
                    )
                })?;
                return Ok(TrustedCheckpoint::Note(text));
            }
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a checkpoint saved by `verify --save-checkpoint`",
                    p.display()
                )
            })
        })
        .transpose()?;
    let witnesses = args
        .witness
        .iter()
        .map(|w| NoteVerifier::parse(w).with_context(|| format!("--witness {w}")))
        .collect::<Result<Vec<_>>>()?;
    let options = VerifyOptions {
        trusted_keys: parse_keys(&args.pubkey)?,
        trusted_checkpoint,
        witnesses,
    };
    existing(&args.db)?;
    let report = match args.db.to_str().filter(|l| crate::sql::is_url(l)) {
        Some(url) => crate::verify::verify(&crate::sql::connect_url(url)?, &options)?,
        None => verify_file(&args.db, &options)?,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(out, &args.db, &report)?;
    }
    if report.ok() {
        if let Some(path) = &args.save_checkpoint {
            let cp = report
                .checkpoint_to_save()
                .context("the log is empty: nothing to save")?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&cp)? + "\n")
                .and_then(|_| std::fs::rename(&tmp, path))
                .with_context(|| format!("cannot write {}", path.display()))?;
            if !args.json {
                writeln!(out, "saved the log head to {}", path.display())?;
            }
        }
    }
    Ok(report.ok())
}

fn print_report(out: &mut dyn Write, db: &Path, r: &VerifyReport) -> Result<()> {
    let rate = r.receipts as f64 / r.elapsed.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "ledger {}: log {}, {} receipts, {} checkpoints, {} key(s)",
        db.display(),
        r.log_id.map_or("?".into(), |l| l.short()),
        r.receipts,
        r.checkpoints,
        r.keys.len()
    )?;
    writeln!(
        out,
        "  {} of {} signatures verify (Ed25519, strict)",
        r.signatures_ok, r.receipts
    )?;
    writeln!(
        out,
        "  {} states re-hashed from their tokens; {} operations rows match their receipts",
        r.states_checked, r.operations_checked
    )?;
    if let Some(h) = &r.head {
        writeln!(out, "  head: size {}, root {}", h.size, h.root)?;
    }
    match r.trusted_checkpoint_ok {
        Some(true) => writeln!(out, "  consistent with the trusted checkpoint")?,
        Some(false) => writeln!(out, "  NOT consistent with the trusted checkpoint")?,
        None => {}
    }
    for w in &r.warnings {
        writeln!(out, "  note: {w}")?;
    }
    if r.ok() {
        writeln!(
            out,
            "OK: verified in {:.1} ms ({:.0} receipts/s)",
            r.elapsed.as_secs_f64() * 1e3,
            rate
        )?;
        return Ok(());
    }
    match r.first_bad_receipt() {
        Some(seq) => writeln!(out, "FAILED: first bad receipt is {seq}")?,
        None => writeln!(out, "FAILED")?,
    }
    for f in r.failures.iter().take(20) {
        writeln!(out, "  - {}", f.message)?;
    }
    if r.failures.len() > 20 {
        writeln!(out, "  ... and {} more", r.failures.len() - 20)?;
    }
    Ok(())
}
