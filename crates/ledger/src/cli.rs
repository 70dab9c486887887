//! `keys`, `receipts` and `verify`: the ledger from the command line, the same subcommands in
//! the `state-pack` binary and in this crate's `state-pack-ledger`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::log::StoredReceipt;
use crate::measured::Tokens;
use crate::{
    verify_file, LedgerDb, PublicKey, Receipt, ReceiptProof, Signer, TrustedCheckpoint,
    VerifyOptions, VerifyReport,
};
use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};

/// `state-pack keys ...`
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a new signing key at --key (owner-only permissions); refuses to overwrite.
    New,
    /// Print the key id and public key of the key at --key.
    Show,
    /// Hand a database's ledger over from the key at --key to the key at --to (created if
    /// missing): a rotate_key receipt signed by the old key. Use --key <new> afterwards.
    Rotate {
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
        /// The new key file.
        #[arg(long)]
        to: PathBuf,
    },
}

/// `state-pack receipts ...`
#[derive(Subcommand)]
pub enum ReceiptsCommand {
    /// One line per receipt.
    List {
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
        /// First receipt to list.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most receipts to list.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// One receipt in full: its body, hash and signature.
    Show {
        /// The receipt number.
        seq: u64,
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
    },
    /// Every receipt, for tools: one JSON object per line with the verbatim body.
    Export {
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Write a signed checkpoint covering every receipt now (needs the signing key).
    Checkpoint {
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
    },
    /// Print an inclusion proof of one receipt against the newest checkpoint: everything an
    /// auditor needs to check that receipt offline, without the rest of the log.
    Prove {
        /// The receipt number.
        seq: u64,
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
    },
    /// Check a proof printed by `receipts prove`, offline.
    CheckProof {
        /// The proof file (JSON), or - for standard input.
        file: PathBuf,
        /// Keys the receipt and checkpoint must be signed by (hex, or a file holding it).
        #[arg(long)]
        pubkey: Vec<String>,
    },
}

/// Export formats.
#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// JSON Lines.
    Jsonl,
}

/// `state-pack verify` arguments.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The SQLite database to check.
    #[arg(long, default_value = "state-pack.db")]
    db: PathBuf,
    /// The public key the log must have been opened with (hex, or a file holding it).
    /// Without it the log's own first key is trusted, and the report says so.
    #[arg(long)]
    pubkey: Vec<String>,
    /// A checkpoint saved by an earlier `verify --save-checkpoint` (or from GET /checkpoint):
    /// the log must have only grown since.
    #[arg(long)]
    trusted_checkpoint: Option<PathBuf>,
    /// After a successful check, save the log's head here for the next verification.
    #[arg(long)]
    save_checkpoint: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_keys(args: &[String]) -> Result<Vec<PublicKey>> {
    Ok(args
        .iter()
        .map(|a| PublicKey::from_arg(a))
        .collect::<Result<_, _>>()?)
}

/// `state-pack keys ...`
pub fn keys(command: KeysCommand, key: &Path, out: &mut dyn Write) -> Result<()> {
    match command {
        KeysCommand::New => {
            let s = Signer::create(key)?;
            print_key(out, key, &s)?;
        }
        KeysCommand::Show => print_key(out, key, &Signer::load(key)?)?,
        KeysCommand::Rotate { db, to } => {
            let old = Signer::load(key)?;
            let (next, created) = Signer::load_or_create(&to)?;
            if created {
                writeln!(out, "created {}", to.display())?;
            }
            let mut store = LedgerDb::open(&db, old.clone())?;
            let r = store.rotate_key(next.clone())?;
            writeln!(
                out,
                "receipt {}: ledger {} handed over from key {} to key {}",
                r.seq,
                db.display(),
                old.key_id(),
                next.key_id()
            )?;
            writeln!(out, "sign from now on with --key {}", to.display())?;
        }
    }
    Ok(())
}

fn print_key(out: &mut dyn Write, path: &Path, s: &Signer) -> Result<()> {
    writeln!(out, "key file    {}", path.display())?;
    writeln!(out, "key id      {}", s.key_id())?;
    writeln!(out, "public key  {}", s.public_key().to_hex())?;
    Ok(())
}

fn existing(db: &Path) -> Result<()> {
    if !db.is_file() {
        bail!(
            "{} does not exist (pass the agent's database with --db)",
            db.display()
        );
    }
    Ok(())
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `state-pack receipts ...`
pub fn receipts(command: ReceiptsCommand, key: &Path, out: &mut dyn Write) -> Result<()> {
    match command {
        ReceiptsCommand::List { db, from, limit } => {
            existing(&db)?;
            let store = LedgerDb::open_for_reading(&db)?;
            writeln!(
                out,
                "{:>6}  {:<10}  {:<12}  {:>6}  {:>9}  {:>6}  {:>9}  time",
                "seq", "op", "output", "tokens", "prefilled", "reused", "generated"
            )?;
            for stored in store.receipts(from, limit)? {
                let r = parse(&stored)?;
                let t = r.tokens;
                let n = |f: fn(&Tokens) -> u64| t.as_ref().map_or("-".into(), |t| f(t).to_string());
                writeln!(
                    out,
                    "{:>6}  {:<10}  {:<12}  {:>6}  {:>9}  {:>6}  {:>9}  {}",
                    r.seq,
                    r.op.as_str(),
                    r.output_state.map_or("-".into(), |h| h.short()),
                    n(|t| t.state),
                    n(|t| t.prefilled),
                    n(|t| t.reused),
                    n(|t| t.generated),
                    when(r.timestamp_ms)
                )?;
            }
        }
        ReceiptsCommand::Show { seq, db } => {
            existing(&db)?;
            let store = LedgerDb::open_for_reading(&db)?;
            let stored = store.receipt(seq)?;
            let r = parse(&stored)?;
            writeln!(
                out,
                "receipt {seq}  hash {}  signed {}",
                stored.hash(),
                when(r.timestamp_ms)
            )?;
            writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            writeln!(out, "signature {}", hex::encode(&stored.signature))?;
        }
        ReceiptsCommand::Export {
            db,
            format: ExportFormat::Jsonl,
        } => {
            existing(&db)?;
            let store = LedgerDb::open_for_reading(&db)?;
            let mut out = std::io::BufWriter::new(out);
            let mut from = 0;
            loop {
                let batch = store.receipts(from, 1000)?;
                let Some(last) = batch.last() else { break };
                from = last.seq + 1;
                for s in &batch {
                    let body = std::str::from_utf8(&s.body)
                        .with_context(|| format!("receipt {} body is not UTF-8", s.seq))?;
                    let line = serde_json::json!({
                        "seq": s.seq,
                        "hash": s.hash().to_hex(),
                        "body": body,
                        "signature": hex::encode(&s.signature),
                    });
                    writeln!(out, "{line}")?;
                }
            }
            out.flush()?;
        }
        ReceiptsCommand::Checkpoint { db } => {
            existing(&db)?;
            let mut store = LedgerDb::open(&db, Signer::load(key)?)?;
            match store.checkpoint()? {
                Some(c) => writeln!(out, "checkpoint: {} receipts, root {}", c.size, c.root)?,
                None => writeln!(out, "the newest receipt is already covered by a checkpoint")?,
            }
        }
        ReceiptsCommand::Prove { seq, db } => {
            existing(&db)?;
            // With the signing key, make sure a checkpoint covers `seq`; without it, prove
            // against the newest stored checkpoint.
            let mut store = match Signer::load(key) {
                Ok(k) => LedgerDb::open(&db, k)?,
                Err(_) => LedgerDb::open_for_reading(&db)?,
            };
            let proof = store.prove(seq)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&proof)?)?;
        }
        ReceiptsCommand::CheckProof { file, pubkey } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let proof: ReceiptProof =
                serde_json::from_str(&text).context("not a proof printed by `receipts prove`")?;
            let trusted = parse_keys(&pubkey)?;
            let r = proof.check(&trusted)?;
            let cp = proof.checkpoint.checkpoint()?;
            writeln!(
                out,
                "ok: receipt {} ({}) is in log {} at checkpoint size {}, root {}",
                r.seq,
                r.op.as_str(),
                r.log_id.short(),
                cp.size,
                cp.root.short()
            )?;
            if trusted.is_empty() {
                writeln!(
                    out,
                    "note: no --pubkey given; the signer {} was taken from the proof itself",
                    proof.public_key
                )?;
            }
        }
    }
    Ok(())
}

fn parse(stored: &StoredReceipt) -> Result<Receipt> {
    stored
        .receipt()
        .with_context(|| format!("receipt {} is corrupt: run `state-pack verify`", stored.seq))
}

/// `state-pack verify`: exit status 0 only if everything checks out.
pub fn verify(args: VerifyArgs, out: &mut dyn Write) -> Result<bool> {
    let trusted_checkpoint = args
        .trusted_checkpoint
        .as_ref()
        .map(|p| -> Result<TrustedCheckpoint> {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read trusted checkpoint {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a checkpoint saved by `verify --save-checkpoint`",
                    p.display()
                )
            })
        })
        .transpose()?;
    let options = VerifyOptions {
        trusted_keys: parse_keys(&args.pubkey)?,
        trusted_checkpoint,
    };
    existing(&args.db)?;
    let report = verify_file(&args.db, &options)?;
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

/// Whether `e` is a write to a pipe whose reader has gone (`state-pack receipts list | head`):
/// a command that meets it has nothing more to say and should exit quietly.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
