//! `GET /dashboard`: a live page of what the server saved, and `GET /dashboard.json`, the
//! figures it draws. The page is one HTML file served by the binary (no external assets);
//! it reads only the JSON endpoint, with the bearer token given after `#token=` in its
//! address (the page itself holds no data and needs no token).

use schemars::JsonSchema;
use serde::Serialize;

use super::*;
use crate::activity::{ClientCounts, Counts, Second};
use crate::queue::QueueStats;

const PAGE: &str = include_str!("dashboard.html");

pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                ),
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// What `GET /dashboard.json` answers: this process's measured figures.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardFigures {
    /// When these figures were read, unix seconds.
    pub now: u64,
    /// When the server started, unix seconds.
    pub started: u64,
    /// The model.
    pub model: ModelSummary,
    /// Every client's requests together.
    pub totals: Counts,
    /// Each client's.
    pub clients: Vec<ClientCounts>,
    /// Per second, the last ten minutes with requests.
    pub series: Vec<Second>,
    /// What the engine holds now.
    pub engine: EngineFigures,
    /// The engine queue.
    pub queue: QueueStats,
    /// The receipt log.
    pub ledger: LedgerFigures,
}

/// What the engine holds now.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EngineFigures {
    /// `mistralrs` or `llamacpp`.
    pub engine: String,
    /// Token sequences whose KV the engine holds.
    pub states_hot: usize,
    /// Tokens whose KV it holds (a shared prefix once).
    pub hot_tokens: usize,
    /// `hot_tokens` times the model's KV bytes per token.
    pub kv_bytes: u64,
}

/// The receipt log.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LedgerFigures {
    /// Receipts in the log.
    pub receipts: u64,
    /// States in the store.
    pub states: u64,
    /// The newest signed checkpoint: its canonical body and signature.
    pub checkpoint: Option<state_pack_ledger::SignedCheckpoint>,
    /// Receipts it covers.
    pub checkpoint_size: Option<u64>,
}

pub(super) async fn figures(
    State(s): State<Arc<AppState>>,
) -> Result<Json<DashboardFigures>, ApiError> {
    let (receipts, states, checkpoint) = s
        .read("cannot read the store", |st| {
            Ok((
                st.receipt_count()?,
                st.state_count()?,
                st.latest_checkpoint()?,
            ))
        })
        .await?;
    let (totals, clients, series) = s.activity.snapshot();
    let engine = s.pack.engine();
    let info = engine.info();
    let hot_tokens = engine.hot_tokens();
    Ok(Json(DashboardFigures {
        now: unix_now(),
        started: s.started_unix,
        model: s.model_summary(),
        totals,
        clients,
        series,
        engine: EngineFigures {
            engine: engine.engine_name().to_string(),
            states_hot: engine.hot_entries(),
            hot_tokens,
            kv_bytes: (hot_tokens * info.kv_bytes_per_token) as u64,
        },
        queue: s.queue.stats(),
        ledger: LedgerFigures {
            receipts,
            states,
            checkpoint_size: checkpoint
                .as_ref()
                .and_then(|c| c.checkpoint().ok())
                .map(|c| c.size),
            checkpoint,
        },
    }))
}
