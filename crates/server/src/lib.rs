//! `state-pack serve`: the pack behind a stateless HTTP protocol (axum on tokio).
//!
//! Any client may continue any state in the store by its hash; the server keeps no session.
//! Every mutating answer carries its signed receipt. Engine work goes through one bounded,
//! per-client round-robin queue ([`queue::FairQueue`]); a full queue answers 503 with
//! `Retry-After`. Every error is JSON with a stable `code` ([`error::ErrorBody`]).
//!
//! ```text
//! POST /states   {base_text}                       -> StateResponse
//! POST /merge    {state_hash, delta_text}          -> StateResponse
//! POST /infer    {state_hash, delta_text, sampling?} -> InferResponse
//! POST /compact  {state_hash, policy?}             -> CompactResponse
//! POST /states/{hash}/merge, /infer, /compact     the same, the state in the path
//! GET  /states/{hash}   GET /health   GET /metrics   GET /openapi.json
//! GET  /receipts/{seq}  GET /receipts/{seq}/proof  GET /checkpoint
//! ```

pub mod activity;
pub mod api;
pub mod compact;
mod dashboard;
pub mod error;
mod layers;
pub mod openai;

mod metrics;
mod native;
mod openapi;
pub mod queue;
mod reads;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use self::api::*;
use self::error::{ApiError, ErrorCode};
use self::layers::{authenticate, json_errors, observe, panicked};
use self::metrics::Metrics;
use self::native::{compact_state, create, infer, merge};
use self::queue::{FairQueue, Permit};
use self::reads::{checkpoint, health, metrics_text, openapi_doc, proof, receipt, state_info};
use state_pack_core::pack::StatePack;
use state_pack_core::store::{Store, StoreError};

/// Limits and settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Largest delta (or base) accepted, tokens.
    pub max_delta_tokens: usize,
    /// Largest `sampling.max_tokens` accepted.
    pub max_new_tokens: usize,
    /// Requests using the engine at once; 0 takes the engine's
    /// ([`Engine::max_concurrent`](state_pack_core::engine::Engine::max_concurrent): the
    /// llama.cpp engine batches one generation per hot slot, mistral.rs runs one).
    pub queue_capacity: usize,
    /// Requests allowed to wait for the engine; beyond, 503.
    pub queue_depth: usize,
    /// The longest one operation may use the engine (queueing excluded).
    pub engine_timeout: Duration,
    /// Who may call.
    pub auth: Auth,
    /// The id OpenAI-style clients name the model by (`GET /v1/models`); the model file's
    /// name when `None`.
    pub model_id: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_delta_tokens: 4096,
            max_new_tokens: 512,
            queue_capacity: 0,
            queue_depth: 256,
            engine_timeout: Duration::from_secs(300),
            auth: Auth::Disabled,
            model_id: None,
        }
    }
}

/// Authentication.
#[derive(Clone)]
pub enum Auth {
    /// Anyone on the network may call (only for a loopback address you control).
    Disabled,
    /// `Authorization: Bearer <token>` with one of these tokens; `/health` and
    /// `/openapi.json` stay open.
    Tokens(Vec<ApiToken>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Disabled => f.write_str("Disabled"),
            Auth::Tokens(t) => write!(f, "Tokens({} tokens)", t.len()),
        }
    }
}

/// One accepted bearer token and the client name it stands for (used for queue fairness
/// and logs; the token itself is never logged).
#[derive(Clone)]
pub struct ApiToken {
    /// The client's name.
    pub name: Arc<str>,
    secret: Vec<u8>,
}

impl ApiToken {
    /// A token; it must be at least 16 characters of visible ASCII.
    pub fn new(name: &str, secret: &str) -> Result<Self, ServerError> {
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ServerError::Tokens(format!(
                "token for {name:?} must be at least 16 visible ASCII characters"
            )));
        }
        Ok(Self {
            name: Arc::from(name),
            secret: secret.as_bytes().to_vec(),
        })
    }
}

/// Parses tokens, one per line (or comma-separated): `token` or `name:token`; blank lines
/// and lines starting with `#` are skipped.
pub fn parse_tokens(text: &str) -> Result<Vec<ApiToken>, ServerError> {
    let mut out = Vec::new();
    for (i, entry) in text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
    {
        let (name, secret) = match entry.split_once(':') {
            Some((n, s)) => (n.trim().to_string(), s.trim()),
            None => (format!("client-{}", i + 1), entry),
        };
        out.push(ApiToken::new(&name, secret)?);
    }
    Ok(out)
}

/// Reads tokens from a file (see [`parse_tokens`]).
pub fn load_tokens(path: &Path) -> Result<Vec<ApiToken>, ServerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServerError::Tokens(format!("cannot read {}: {e}", path.display())))?;
    let tokens = parse_tokens(&text)?;
    if tokens.is_empty() {
        return Err(ServerError::Tokens(format!(
            "{} holds no token",
            path.display()
        )));
    }
    Ok(tokens)
}

/// Errors starting or running a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad token configuration.
    #[error("tokens: {0}")]
    Tokens(String),
    /// A socket error.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The final checkpoint could not be written.
    #[error(transparent)]
    Pack(#[from] state_pack_core::pack::PackError),
}

struct AppState {
    pack: Arc<StatePack>,
    /// The read endpoints' own read-only connection to the pack's database (none for an
    /// in-memory store, whose only connection is the writer's).
    reader: Option<std::sync::Mutex<Store>>,
    queue: FairQueue,
    metrics: Metrics,
    config: ServerConfig,
    draining: AtomicBool,
    openapi: serde_json::Value,
    /// What the dashboard shows.
    activity: activity::Activity,
    /// When the server started, unix seconds.
    started_unix: u64,
}

/// The client a request is made for (its token's name).
#[derive(Clone)]
struct Client(Arc<str>);

/// A state-pack HTTP server over one pack.
pub struct Server {
    state: Arc<AppState>,
}

/// What a server did before it stopped.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    /// Receipts in the ledger, all covered by the final checkpoint.
    pub receipts: u64,
}

impl Server {
    /// A server for `pack`.
    pub fn new(pack: Arc<StatePack>, config: ServerConfig) -> Self {
        let conn = pack.with_store(|s| s.connect_again());
        let reader = conn.and_then(|c| match c.and_then(Store::open_db_for_reading) {
            Ok(store) => Some(std::sync::Mutex::new(store)),
            Err(e) => {
                tracing::warn!(error = %e, "no read-only connection: reads share the writer's");
                None
            }
        });
        Self {
            state: Arc::new(AppState {
                queue: FairQueue::new(
                    match config.queue_capacity {
                        0 => pack.engine().max_concurrent(),
                        n => n,
                    },
                    config.queue_depth,
                ),
                pack,
                reader,
                metrics: Metrics::default(),
                config,
                draining: AtomicBool::new(false),
                openapi: openapi::document(),
                activity: activity::Activity::default(),
                started_unix: unix_now(),
            }),
        }
    }

    /// The routes, with authentication, limits, metrics and JSON errors.
    pub fn router(&self) -> Router {
        let s = self.state.clone();
        Router::new()
            .route("/states", post(create))
            .route("/states/{hash}", get(state_info))
            .route("/merge", post(merge))
            .route("/infer", post(infer))
            .route("/compact", post(compact_state))
            // The same, with the state in the path for a proxy to route on (docs/DEPLOY.md).
            .route("/states/{hash}/merge", post(native::merge_at))
            .route("/states/{hash}/infer", post(native::infer_at))
            .route("/states/{hash}/compact", post(native::compact_at))
            .route("/receipts/{seq}", get(receipt))
            .route("/receipts/{seq}/proof", get(proof))
            .route("/checkpoint", get(checkpoint))
            .route("/tile/{*rest}", get(reads::tile))
            .route("/health", get(health))
            .route("/metrics", get(metrics_text))
            .route("/openapi.json", get(openapi_doc))
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/v1/completions", post(openai::completions))
            .route("/v1/models", get(openai::models))
            .route("/dashboard", get(dashboard::page))
            .route("/dashboard.json", get(dashboard::figures))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(s.clone(), authenticate))
            .layer(axum::extract::DefaultBodyLimit::max(
                s.config.max_body_bytes,
            ))
            .layer(middleware::from_fn(json_errors))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
            .layer(middleware::from_fn_with_state(s.clone(), observe))
            .with_state(s)
    }

    /// Serves on `listener` until `shutdown` resolves, then stops taking connections,
    /// finishes the requests in flight and writes a final signed checkpoint.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Shutdown, ServerError> {
        let state = self.state.clone();
        let draining = self.state.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                draining.draining.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: draining requests in flight");
            })
            .await?;
        state.pack.close()?;
        let receipts = state
            .pack
            .with_store(|s| s.receipt_count())
            .map_err(state_pack_core::pack::PackError::from)?;
        tracing::info!(receipts, "final checkpoint written");
        Ok(Shutdown { receipts })
    }
}

/// JSON bodies whose rejections are [`ApiError`]s.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body over the server's limit",
                ))
            }
            Err(r) => Err(ApiError::new(ErrorCode::InvalidJson, r.body_text())),
        }
    }
}

impl AppState {
    /// Waits for the engine, or refuses when the queue is full.
    async fn engine(&self, client: &Client) -> Result<(Permit<'_>, Duration), ApiError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        let queued = Instant::now();
        match self.queue.acquire(&client.0).await {
            Ok(p) => Ok((p, queued.elapsed())),
            Err(full) => {
                self.metrics.queue_full();
                let mut e = ApiError::new(ErrorCode::Overloaded, format!("{full}: retry later"));
                e.retry_after = Some(1);
                Err(e)
            }
        }
    }

    /// Runs engine work under the configured time limit.
    async fn timed<T>(
        &self,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.config.engine_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the operation took longer than the server's limit of {} s",
                        self.config.engine_timeout.as_secs()
                    ),
                ))
            })
    }

    /// Counts one operation of `client` in the metrics and the dashboard.
    fn count_report(&self, client: &Client, r: &state_pack_core::pack::OpReport) {
        self.metrics.operation(r);
        let prompt = r.tokens.state.saturating_sub(r.tokens.generated);
        let prefilled = r.tokens.prefilled;
        self.activity.request(
            &client.0,
            unix_now(),
            activity::Counts {
                requests: 1,
                prompt_tokens: prompt,
                prefilled,
                cached: prompt.saturating_sub(prefilled),
                restored: r.tokens.restored,
                generated: r.tokens.generated,
            },
        );
    }

    /// The answer to a create or merge, counted in the metrics.
    fn state_answer(
        &self,
        client: &Client,
        report: &state_pack_core::pack::OpReport,
        queued: Duration,
    ) -> Result<Json<StateResponse>, ApiError> {
        self.count_report(client, report);
        Ok(Json(StateResponse::new(
            report,
            queued,
            self.receipt(report.receipt.seq)?,
            self.pack.engine().info().kv_bytes_per_token,
        )))
    }

    fn receipt(&self, seq: u64) -> Result<WireReceipt, ApiError> {
        self.pack
            .with_store(|s| s.receipt(seq))
            .map(|r| WireReceipt::from(&r))
            .map_err(|e| ApiError::internal("cannot read the receipt just written", &e))
    }

    /// Tokenizes a request's text and checks its size.
    async fn tokenize(&self, field: &str, text: &str) -> Result<Vec<u32>, ApiError> {
        // A token is at least one byte: a text this long cannot be within the limit.
        if text.len() > self.config.max_delta_tokens.saturating_mul(64) {
            return Err(too_long(field, self.config.max_delta_tokens));
        }
        let tokens = self
            .pack
            .engine()
            .tokenize(text)
            .await
            .map_err(state_pack_core::pack::PackError::from)?;
        if tokens.len() > self.config.max_delta_tokens {
            return Err(too_long(field, self.config.max_delta_tokens));
        }
        Ok(tokens)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn too_long(field: &str, limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("{field} is over the server's limit of {limit} tokens"),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint (see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method (see /openapi.json)",
    )
}
