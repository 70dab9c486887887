//! `state-pack serve` and the HTTP load benchmark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::progress::Progress;
use anyhow::{Context, Result};
use state_pack::engine::EngineSpec;
use state_pack::ledger::Signer;
use state_pack::load;
use state_pack::server::{self, Auth, Server, ServerConfig};
use state_pack::Store;

/// Options of `state-pack serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The SQLite database (states, receipts).
    #[arg(long, default_value = "state-pack.db")]
    pub db: PathBuf,
    /// File of accepted bearer tokens, one per line: `token` or `name:token`.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// Accepted bearer tokens, comma-separated (`name:token` or `token`).
    #[arg(long, env = "STATE_PACK_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// Serve without authentication (only on a loopback address).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Token sequences whose KV the engine keeps (each costs its length x the model's
    /// KV bytes per token); set above the number of agents that run at once.
    #[arg(long, default_value_t = 64)]
    pub hot_states: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Largest delta or base, tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_delta_tokens: usize,
    /// Largest `sampling.max_tokens`.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Requests allowed to wait for the engine; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue_depth: usize,
    /// Engine operations run at once (round-robin across clients); 0 takes the engine's:
    /// llama.cpp batches up to one generation per hot state, mistral.rs runs one.
    #[arg(long, default_value_t = 0)]
    pub max_concurrent: usize,
    /// Longest one operation may use the engine, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub engine_timeout: Duration,
    /// The id OpenAI-style clients name the model by (`GET /v1/models`); by default the
    /// known model's name (`smollm2-135m`) or the GGUF file's stem.
    #[arg(long)]
    pub model_id: Option<String>,
}

/// The id `/v1/models` serves when `--model-id` is not given.
fn default_model_id(model: Option<&Path>) -> String {
    match model {
        None => state_pack::model::DEFAULT_MODEL.name.to_string(),
        Some(p) if p.is_file() => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string()),
        Some(p) => p.display().to_string(),
    }
}

fn auth(args: &ServeArgs) -> Result<Auth> {
    let mut tokens = Vec::new();
    if let Some(f) = &args.tokens_file {
        tokens.extend(server::load_tokens(f)?);
    }
    if let Some(t) = &args.tokens {
        tokens.extend(server::parse_tokens(t)?);
    }
    match (tokens.is_empty(), args.insecure_no_auth) {
        (false, false) => Ok(Auth::Tokens(tokens)),
        (true, true) if args.addr.ip().is_loopback() => Ok(Auth::Disabled),
        (true, true) => anyhow::bail!(
            "--insecure-no-auth is only allowed on a loopback address, not {}",
            args.addr
        ),
        (false, true) => anyhow::bail!("give either tokens or --insecure-no-auth, not both"),
        (true, false) => anyhow::bail!(
            "no bearer tokens: pass --tokens-file FILE or set STATE_PACK_TOKENS (or --insecure-no-auth on loopback)"
        ),
    }
}

fn config(args: &ServeArgs, auth: Auth) -> ServerConfig {
    ServerConfig {
        max_body_bytes: args.max_body_bytes,
        max_delta_tokens: args.max_delta_tokens,
        max_new_tokens: args.max_new_tokens,
        queue_depth: args.queue_depth,
        queue_capacity: args.max_concurrent,
        engine_timeout: args.engine_timeout,
        auth,
        model_id: args.model_id.clone(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `state-pack serve`.
pub async fn serve(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
    key: &Path,
    args: ServeArgs,
) -> Result<()> {
    let auth = auth(&args)?;
    let args = ServeArgs {
        model_id: args
            .model_id
            .clone()
            .or_else(|| Some(default_model_id(model))),
        ..args
    };
    let (signer, created) = Signer::load_or_create(key)?;
    if created {
        eprintln!("created signing key {}", key.display());
    }
    let public_key = signer.public_key().to_hex();
    let store = crate::open_store(&args.db, signer)?;
    let engine = crate::load(model, cache, spec.hot_states(args.hot_states)).await?;
    let pack = Arc::new(crate::new_pack(engine, store));
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let authn = match &auth {
        Auth::Disabled => "no authentication (loopback only)".to_string(),
        Auth::Tokens(t) => format!("{} bearer token(s)", t.len()),
    };
    eprintln!(
        "state-pack serving http://{addr} ({authn}); database {}; OpenAI-compatible API at http://{addr}/v1 (model {:?}); dashboard at http://{addr}/dashboard; OpenAPI at /openapi.json; Ctrl-C or SIGTERM to stop",
        crate::shown(&args.db),
        args.model_id.as_deref().unwrap_or_default(),
        addr = listener.local_addr()?
    );
    let done = Server::new(pack, config(&args, auth))
        .serve(listener, shutdown_signal())
        .await?;
    eprintln!(
        "stopped; final checkpoint covers {} receipts. verify with: state-pack verify --db {} --pubkey {public_key}",
        done.receipts,
        crate::shown(&args.db)
    );
    Ok(())
}

/// What `state-pack bench --workload serve` runs.
pub struct ServeBench {
    /// Concurrent clients.
    pub clients: usize,
    /// Infer steps per client.
    pub steps: usize,
    /// Greedy tokens generated a step.
    pub tokens_per_step: usize,
    /// Engine operations admitted at once (0: the engine's own figure).
    pub max_concurrent: usize,
    /// A `llama-server` (run with `-np` at least `clients`) driven by the same clients after
    /// state-pack, for a peer arm in the same invocation.
    pub peer: Option<String>,
    /// JSON on stdout instead of the text report.
    pub json: bool,
}

/// `state-pack bench --workload serve`: a server on a loopback port, in this process, driven
/// by `clients` concurrent HTTP clients; then, with a peer, the same clients against it.
pub async fn bench(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
    plan: ServeBench,
) -> Result<()> {
    let ServeBench {
        clients,
        steps,
        tokens_per_step,
        max_concurrent,
        peer,
        json,
    } = plan;
    if clients == 0 || steps == 0 || tokens_per_step == 0 {
        anyhow::bail!("--clients, --steps and --tokens-per-step must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("serve-bench.db");
    let store = Store::open(&db, Signer::generate()?)?;
    // Every client's state stays hot, plus the base and the states being replaced.
    let engine = crate::load(model, cache, spec.hot_states(2 * clients + 2)).await?;
    let template = engine.info().template;
    let pack = Arc::new(crate::new_pack(engine, store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let token = "bench-token-0123456789abcdef".to_string();
    let config = ServerConfig {
        auth: Auth::Tokens(server::parse_tokens(&token)?),
        queue_capacity: max_concurrent,
        ..ServerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(pack, config).serve(listener, async {
        let _ = stop_rx.await;
    }));
    let config = |url: &str, token: Option<String>, api| load::LoadConfig {
        url: url.to_string(),
        token,
        clients,
        steps,
        max_tokens: tokens_per_step,
        template,
        api,
    };
    let report = drive(&config(&url, Some(token), load::LoadApi::StatePack)).await?;
    let _ = stop_tx.send(());
    let shutdown = server.await.context("server task")??;
    let verified = state_pack::ledger::verify_file(&db, &Default::default())?;
    // This process holds the engine, the server and the clients; its peak is theirs.
    let rss_peak_mib = crate::measure::memory_usage().map(|(_, peak)| peak as f64 / 1048576.0);
    let peer_report = match &peer {
        Some(url) => Some(
            drive(&config(
                url.trim_end_matches('/'),
                None,
                load::LoadApi::LlamaServer,
            ))
            .await
            .with_context(|| format!("the peer at {url}"))?,
        ),
        None => None,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "load": report,
                "tokens_per_step": tokens_per_step,
                "receipts": shutdown.receipts,
                "verify_ok": verified.ok(),
                "rss_peak_mib": rss_peak_mib,
                "peer": peer_report,
            }))?
        );
        return Ok(());
    }
    println!(
        "{clients} clients x {steps} steps over HTTP on loopback ({url}), {tokens_per_step} tokens generated per step"
    );
    print_load(&report);
    if let Some(mib) = rss_peak_mib {
        println!("peak resident memory of this process (engine, server, clients): {mib:.0} MiB");
    }
    println!(
        "ledger: {} receipts, verify {}",
        shutdown.receipts,
        if verified.ok() { "OK" } else { "FAILED" }
    );
    if let (Some(url), Some(p)) = (&peer, &peer_report) {
        println!("\npeer: llama-server at {url}, the same clients and loop");
        print_load(p);
        println!(
            "state-pack / llama-server aggregate throughput: {:.2}x",
            report.steps_per_s / p.steps_per_s.max(1e-9)
        );
    }
    Ok(())
}

/// Runs one load test with a progress bar.
async fn drive(cfg: &load::LoadConfig) -> Result<load::LoadReport> {
    let bar = Progress::new(
        cfg.clients * cfg.steps,
        "steps",
        "{bar:40} {pos}/{len} steps  [{elapsed_precise}]",
    );
    let tick = bar.clone();
    let report = load::run(cfg, move || tick.inc()).await?;
    bar.finish();
    Ok(report)
}

fn print_load(report: &load::LoadReport) {
    println!(
        "wall {:.1} s, {:.2} steps/s, {} requests, {} errors ({} overloaded)",
        report.wall_s, report.steps_per_s, report.requests, report.errors, report.overloaded
    );
    for e in &report.error_samples {
        println!("  error: {e}");
    }
    println!(
        "infer latency p50 {:.0} ms, p99 {:.0} ms (client side; queue wait p50 {:.0} ms, engine p50 {:.0} ms)",
        report.infer_p50_ms, report.infer_p99_ms, report.queued_p50_ms, report.engine_p50_ms
    );
    println!(
        "shared base: prefilled by {} of {} creates ({} tokens in all)",
        report.base_prefills, report.clients, report.base_prefilled_tokens
    );
    println!(
        "infers: {} tokens prefilled, {} reused ({:.1}% never recomputed), {} answered from the store",
        report.prefilled,
        report.reused,
        100.0 * report.reused as f64 / (report.prefilled + report.reused).max(1) as f64,
        report.replays
    );
}
