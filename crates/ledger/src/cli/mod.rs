//! `keys`, `receipts` and `verify`: the ledger from the command line, the same subcommands in
//! the `state-pack` binary and in this crate's `state-pack-ledger`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::log::StoredReceipt;
use crate::measured::Tokens;
use crate::{LedgerDb, PublicKey, Receipt, ReceiptProof, Signer};
use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};

mod verify;
mod witness;
pub use verify::{verify, VerifyArgs};
pub use witness::{witness, WitnessCommand};

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
        /// The database: an SQLite file, or a `postgres://` URL.
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
        /// The database: an SQLite file, or a `postgres://` URL.
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
        /// The database: an SQLite file, or a `postgres://` URL.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
    },
    /// Every receipt, for tools: one JSON object per line with the verbatim body; or, with
    /// `--format tiles DIR`, the log as of its newest checkpoint as a static C2SP tlog-tiles
    /// directory (checkpoint note, hash tiles, entry bundles, receipt bodies) that any static
    /// file server can publish.
    Export {
        /// The database: an SQLite file, or a `postgres://` URL.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// The directory (for `--format tiles`).
        dir: Option<PathBuf>,
    },
    /// Write a signed checkpoint covering every receipt now (needs the signing key); with
    /// `--format note`, print the newest checkpoint as a C2SP signed note (with any witness
    /// cosignatures); with `--format vkey`, the log's note verifier key.
    Checkpoint {
        /// The database: an SQLite file, or a `postgres://` URL.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value_t = CheckpointFormat::Summary)]
        format: CheckpointFormat,
    },
    /// Print an inclusion proof of one receipt against the newest checkpoint (everything an
    /// auditor needs to check that receipt offline), or with `--consistency OLD NEW` the
    /// proof that the log at NEW receipts extends the log at OLD.
    Prove {
        /// The receipt number.
        #[arg(required_unless_present = "consistency")]
        seq: Option<u64>,
        /// Two sizes, OLD NEW.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        consistency: Option<Vec<u64>>,
        /// The database: an SQLite file, or a `postgres://` URL.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
    },
    /// Add the cosignature lines of a note a witness returned (`state-pack witness cosign`)
    /// to the log's stored note of that checkpoint, where `GET /checkpoint` serves them.
    Cosign {
        /// The cosigned note, or - for standard input.
        note: PathBuf,
        /// The database: an SQLite file, or a `postgres://` URL.
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
    /// A C2SP tlog-tiles directory.
    Tiles,
}

/// What `receipts checkpoint` prints.
#[derive(Clone, Copy, ValueEnum)]
pub enum CheckpointFormat {
    /// One line.
    Summary,
    /// The newest checkpoint as a C2SP signed note.
    Note,
    /// The log's note verifier key (name+id+key).
    Vkey,
}

/// The text of `path`, or of standard input for `-`.
pub(crate) fn read_input(path: &Path) -> Result<String> {
    if path.as_os_str() == "-" {
        return Ok(std::io::read_to_string(std::io::stdin())?);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub(crate) fn parse_keys(args: &[String]) -> Result<Vec<PublicKey>> {
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
            let mut store = open_signing(&db, old.clone())?;
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

/// The database at `db`, a file or a URL (`postgres://...`), for reading only.
pub(crate) fn open_reading(db: &Path) -> Result<LedgerDb> {
    match db.to_str().filter(|l| crate::sql::is_url(l)) {
        Some(url) => Ok(LedgerDb::open_db_for_reading(crate::sql::connect_url(
            url,
        )?)?),
        None => {
            existing(db)?;
            Ok(LedgerDb::open_for_reading(db)?)
        }
    }
}

/// The database at `db`, a file or a URL, signed by `signer`.
pub(crate) fn open_signing(db: &Path, signer: Signer) -> Result<LedgerDb> {
    match db.to_str().filter(|l| crate::sql::is_url(l)) {
        Some(url) => Ok(LedgerDb::open_db(
            crate::sql::connect_url(url)?,
            signer,
            crate::DEFAULT_CHECKPOINT_EVERY,
        )?),
        None => Ok(LedgerDb::open(db, signer)?),
    }
}

pub(crate) fn existing(db: &Path) -> Result<()> {
    if db.to_str().is_some_and(crate::sql::is_url) {
        return Ok(());
    }
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
            let store = open_reading(&db)?;
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
            let store = open_reading(&db)?;
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
            format: ExportFormat::Tiles,
            dir,
        } => {
            existing(&db)?;
            let dir = dir.context(
                "give the directory to write the tiles to: receipts export --format tiles DIR",
            )?;
            let store = open_reading(&db)?;
            let (size, files) = crate::stored::export_tiles(store.conn(), &dir)?;
            writeln!(
                out,
                "wrote the log as of its checkpoint of {size} receipts to {} ({files} files)",
                dir.display()
            )?;
        }
        ReceiptsCommand::Export {
            db,
            format: ExportFormat::Jsonl,
            dir: _,
        } => {
            existing(&db)?;
            let store = open_reading(&db)?;
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
        ReceiptsCommand::Checkpoint { db, format } => {
            existing(&db)?;
            let mut store = open_signing(&db, Signer::load(key)?)?;
            let written = store.checkpoint()?;
            match format {
                CheckpointFormat::Summary => match written {
                    Some(c) => writeln!(out, "checkpoint: {} receipts, root {}", c.size, c.root)?,
                    None => writeln!(out, "the newest receipt is already covered by a checkpoint")?,
                },
                CheckpointFormat::Note => {
                    let note = crate::stored::note_at(store.conn(), None)?
                        .context("the log has no checkpoint note")?;
                    write!(out, "{note}")?;
                }
                CheckpointFormat::Vkey => {
                    let log = crate::log::log_id(store.conn())?.context("the log is empty")?;
                    let (_, current) = crate::log::current_key(store.conn())?;
                    let v = crate::note::NoteVerifier::new(
                        &crate::note::CheckpointText::origin_of(&log),
                        crate::note::ED25519,
                        current,
                    )?;
                    writeln!(out, "{}", v.vkey())?;
                }
            }
        }
        ReceiptsCommand::Prove {
            seq,
            consistency,
            db,
        } => {
            existing(&db)?;
            // With the log's signing key, make sure a checkpoint covers `seq`; without it (or
            // with another key), prove against the newest stored checkpoint. A consistency
            // proof needs no checkpoint.
            let signing = match (&consistency, Signer::load(key)) {
                (None, Ok(k)) => open_signing(&db, k).ok(),
                _ => None,
            };
            let mut store = match signing {
                Some(s) => s,
                None => open_reading(&db)?,
            };
            match (consistency.as_deref(), seq) {
                (Some(&[old, new]), _) => {
                    let proof = crate::stored::prove_consistency(store.conn(), old, new)?;
                    writeln!(out, "{}", serde_json::to_string_pretty(&proof)?)?;
                }
                (_, Some(seq)) => {
                    let proof = store.prove(seq)?;
                    writeln!(out, "{}", serde_json::to_string_pretty(&proof)?)?;
                }
                _ => bail!("give a receipt number, or --consistency OLD NEW"),
            }
        }
        ReceiptsCommand::Cosign { note, db } => {
            existing(&db)?;
            let text = read_input(&note)?;
            let store = open_signing(&db, Signer::load(key)?)?;
            let added = crate::stored::add_cosignatures(store.conn(), &text)?;
            writeln!(
                out,
                "added {added} cosignature line(s) to the stored checkpoint note"
            )?;
        }
        ReceiptsCommand::CheckProof { file, pubkey } => {
            let text = read_input(&file)?;
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

/// Whether `e` is a write to a pipe whose reader has gone (`state-pack receipts list | head`):
/// a command that meets it has nothing more to say and should exit quietly.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
