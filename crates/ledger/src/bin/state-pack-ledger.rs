//! `state-pack-ledger`: the auditor's half of `state-pack`, built without an engine, an async
//! runtime or an HTTP server. `verify`, `receipts` and `keys` behave exactly as they do in
//! `state-pack`, because both binaries run the same code (`state_pack_ledger::cli`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use state_pack_ledger::cli::{self, KeysCommand, ReceiptsCommand, VerifyArgs, WitnessCommand};
use state_pack_ledger::default_key_path;

/// Check, inspect and prove a state-pack receipt ledger.
#[derive(Parser)]
#[command(name = "state-pack-ledger", version)]
struct Cli {
    /// The Ed25519 key that signs receipts (`receipts checkpoint`, `keys`) [default:
    /// $STATE_PACK_KEY or ~/.config/state-pack/signing-key.pem].
    #[arg(long, global = true, env = "STATE_PACK_KEY")]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a receipt ledger offline: signatures, links, numbering, states, checkpoints,
    /// and growth since a checkpoint you saved. Exits non-zero on any failure.
    Verify(VerifyArgs),
    /// Inspect, export and prove receipts.
    Receipts {
        #[command(subcommand)]
        command: ReceiptsCommand,
    },
    /// Manage the key that signs receipts.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Cosign logs' checkpoints as a witness.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let key = cli.key.unwrap_or_else(default_key_path);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Verify(args) => cli::verify(args, &mut out),
        Command::Receipts { command } => cli::receipts(command, &key, &mut out).map(|()| true),
        Command::Keys { command } => cli::keys(command, &key, &mut out).map(|()| true),
        Command::Witness { command } => cli::witness(command, &mut out).map(|()| true),
    }
    .and_then(|ok| out.flush().map(|()| ok).map_err(Into::into));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
