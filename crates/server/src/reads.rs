//! The read endpoints: a stored state, a receipt, its inclusion proof, the newest
//! checkpoint, health, metrics and the OpenAPI document. None of them uses the engine.

use super::*;

impl AppState {
    /// Runs `f` on the read-only connection (the writer's for an in-memory store) on a
    /// blocking thread, so that a slow read never holds an async worker or the writer's lock.
    pub(super) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || match &s.reader {
            Some(r) => f(&mut r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)),
            None => s.pack.with_store(f),
        })
        .await
        .map_err(|e| ApiError::internal(what, &e))?
        .map_err(|e| ApiError::internal(what, &e))
    }

    /// What the server runs.
    pub(super) fn model_summary(&self) -> ModelSummary {
        let info = self.pack.engine().info();
        ModelSummary {
            id: self.model_id().to_string(),
            name: info.name.clone(),
            fingerprint: info.fingerprint.to_hex(),
            context_window: info.context_window,
            chat_template: info.template.name().to_string(),
            kv_dtype: info.kv_dtype.to_string(),
            device: info.device.to_string(),
        }
    }
}

pub(super) async fn state_info(
    State(s): State<Arc<AppState>>,
    UrlPath(hash): UrlPath<String>,
) -> Result<Json<StateInfo>, ApiError> {
    let hash = parse_hash("the path's state hash", &hash)?;
    let pack = s.pack.clone();
    let v = tokio::task::spawn_blocking(move || pack.state(&hash))
        .await
        .map_err(|e| ApiError::internal("cannot read the state", &e))??;
    Ok(Json(StateInfo {
        state_hash: v.hash,
        tokens: v.tokens,
        kv_bytes: v.kv_bytes,
        bytes: v.kv_bytes,
        model: s.model_id().to_string(),
        hot: v.hot,
        parent: v.parent,
        op: v.op.as_str().to_string(),
    }))
}

pub(super) fn parse_seq(s: &str) -> Result<u64, ApiError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "a receipt number is a non-negative decimal integer".into(),
        ));
    }
    s.parse()
        .map_err(|_| ApiError::invalid("receipt number out of range".into()))
}

pub(super) async fn known_receipt(s: &Arc<AppState>, seq: u64) -> Result<(), ApiError> {
    let count = s
        .read("cannot count receipts", |st| st.receipt_count())
        .await?;
    if seq >= count {
        return Err(ApiError::new(
            ErrorCode::UnknownReceipt,
            format!("no receipt {seq}: the log holds {count} (0..{count})"),
        ));
    }
    Ok(())
}

pub(super) async fn receipt(
    State(s): State<Arc<AppState>>,
    UrlPath(seq): UrlPath<String>,
) -> Result<Json<WireReceipt>, ApiError> {
    let seq = parse_seq(&seq)?;
    known_receipt(&s, seq).await?;
    let r = s
        .read("cannot read the receipt", move |st| st.receipt(seq))
        .await?;
    Ok(Json(WireReceipt::from(&r)))
}

pub(super) async fn proof(
    State(s): State<Arc<AppState>>,
    UrlPath(seq): UrlPath<String>,
) -> Result<Json<state_pack_ledger::ReceiptProof>, ApiError> {
    let seq = parse_seq(&seq)?;
    known_receipt(&s, seq).await?;
    // A proof is against a signed checkpoint that covers the receipt: if the newest does not,
    // the writer signs one (a short write); the proof itself is built on the reader.
    let covered = s
        .read("cannot read the checkpoint", move |st| {
            Ok(st
                .latest_checkpoint()?
                .and_then(|c| c.checkpoint().ok())
                .is_some_and(|c| c.size > seq))
        })
        .await?;
    if !covered {
        let pack = s.pack.clone();
        tokio::task::spawn_blocking(move || pack.with_store(|st| st.checkpoint()))
            .await
            .map_err(|e| ApiError::internal("cannot write a checkpoint", &e))?
            .map_err(|e| ApiError::internal("cannot write a checkpoint", &e))?;
    }
    s.read("cannot build the proof", move |st| st.prove(seq))
        .await
        .map(Json)
}

/// The newest signed checkpoint, written now if the log has grown since the last one: as
/// JSON, or with `Accept: text/plain` as its C2SP signed note (c2sp.org/tlog-checkpoint, with
/// any witness cosignatures).
pub(super) async fn checkpoint(
    State(s): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let wants_note = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json"));
    let (signed, note) = s
        .pack
        .with_store(|st| {
            st.checkpoint()?;
            Ok::<_, StoreError>((st.latest_checkpoint()?, st.checkpoint_note()?))
        })
        .map_err(|e| ApiError::internal("cannot write a checkpoint", &e))?;
    if wants_note {
        let note =
            note.ok_or_else(|| ApiError::internal("no checkpoint note", &"the log is empty"))?;
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            note,
        )
            .into_response());
    }
    signed
        .map(|c| Json(c).into_response())
        .ok_or_else(|| ApiError::internal("no checkpoint", &"the log is empty"))
}

/// `GET /tile/...`: the log as C2SP tlog-tiles (hash tiles, entry bundles of receipt hashes,
/// and receipt bodies under `tile/bodies/`), as of its newest checkpoint.
pub(super) async fn tile(
    State(s): State<Arc<AppState>>,
    UrlPath(rest): UrlPath<String>,
) -> Result<Response, ApiError> {
    let path = format!("tile/{rest}");
    let Some(t) = state_pack_ledger::tiles::Tile::parse(&path) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{path} is not a tile path (tile/<L>/<N>[.p/<W>], tile/entries/..., tile/bodies/...)"),
        ));
    };
    let bytes = s
        .read("cannot read the tile", move |st| st.tile(&t))
        .await?;
    let Some(bytes) = bytes else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{path} is not a tile of the log at its newest checkpoint"),
        ));
    };
    // Full tiles never change; a partial one is replaced by a wider one as the log grows.
    let cache = if t.width == state_pack_ledger::tiles::WIDTH {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        bytes,
    )
        .into_response())
}

pub(super) async fn health(State(s): State<Arc<AppState>>) -> Result<Json<Health>, ApiError> {
    let (states, receipts) = s
        .read("cannot read the store", |st| {
            Ok((st.state_count()?, st.receipt_count()?))
        })
        .await?;
    Ok(Json(Health {
        status: if s.draining.load(Ordering::SeqCst) {
            "draining"
        } else {
            "ok"
        }
        .into(),
        states_hot: s.pack.engine().hot_entries(),
        states_cached: states,
        receipts,
        model: s.model_summary(),
        queue: s.queue.stats(),
    }))
}

pub(super) async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    let q = s.queue.stats();
    let body = s
        .metrics
        .render(s.pack.engine().hot_entries(), q.running, q.waiting);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

pub(super) async fn openapi_doc(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(s.openapi.clone())
}
