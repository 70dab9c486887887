//! The native protocol's engine endpoints: `POST /states`, `/merge`, `/infer`, `/compact`,
//! with the seed protocol's fields (`dtype`, `accumulated_deltas`) accepted as its clients
//! send them; and the path-style `POST /states/{hash}/merge`, `/infer`, `/compact`, which
//! carry the state in the URL so that a stock proxy can route a state's requests to the
//! replica most likely to hold it (`docs/DEPLOY.md`).

use super::*;
use state_pack_ledger::hash::StateHash;

/// Refuses a seed-protocol `dtype` that is not the engine's KV type.
fn check_dtype(s: &AppState, dtype: Option<&str>) -> Result<(), ApiError> {
    let Some(asked) = dtype else { return Ok(()) };
    let runs = s.pack.engine().info().kv_dtype;
    match state_pack_core::engine::KvDType::parse(asked) {
        Some(d) if d == runs => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedDtype,
            format!("dtype {asked:?} is not what this engine keeps KV in: it runs {runs} (send \"{runs}\" or leave dtype out)"),
        )),
    }
}

pub(super) async fn create(
    State(s): State<Arc<AppState>>,
    axum::Extension(client): axum::Extension<Client>,
    ApiJson(req): ApiJson<CreateRequest>,
) -> Result<Json<StateResponse>, ApiError> {
    check_dtype(&s, req.dtype.as_deref())?;
    let tokens = s.tokenize("base_text", &req.base_text).await?;
    if tokens.is_empty() {
        return Err(state_pack_core::pack::PackError::EmptyBase.into());
    }
    let (_permit, queued) = s.engine(&client).await?;
    let report = s
        .timed(async { Ok(s.pack.create(&req.base_text).await?) })
        .await?;
    s.state_answer(&client, &report, queued)
}

pub(super) async fn merge(
    State(s): State<Arc<AppState>>,
    axum::Extension(client): axum::Extension<Client>,
    ApiJson(req): ApiJson<MergeRequest>,
) -> Result<Json<StateResponse>, ApiError> {
    check_dtype(&s, req.dtype.as_deref())?;
    let state = parse_hash("state_hash", &req.state_hash)?;
    let delta = s.tokenize("delta_text", &req.delta_text).await?;
    s.pack.state(&state)?;
    let (_permit, queued) = s.engine(&client).await?;
    let report = s
        .timed(async { Ok(s.pack.merge_tokens(&state, &delta).await?) })
        .await?;
    s.state_answer(&client, &report, queued)
}

pub(super) async fn infer(
    State(s): State<Arc<AppState>>,
    axum::Extension(client): axum::Extension<Client>,
    ApiJson(req): ApiJson<InferRequest>,
) -> Result<Json<InferResponse>, ApiError> {
    check_dtype(&s, req.dtype.as_deref())?;
    let state = parse_hash("state_hash", &req.state_hash)?;
    let sampling = req
        .sampling
        .unwrap_or_default()
        .to_sampling(s.config.max_new_tokens)?;
    let delta = s.tokenize("delta_text", &req.delta_text).await?;
    s.pack.state(&state)?;
    // An answer already computed needs no engine, so no queue.
    let (answer, queued) = match s.pack.replay_tokens(&state, &delta, &sampling)? {
        Some(a) => (a, Duration::ZERO),
        None => {
            let (_permit, queued) = s.engine(&client).await?;
            let a = s
                .timed(async {
                    Ok(s.pack
                        .infer_tokens_or_replay(&state, &delta, &sampling)
                        .await?)
                })
                .await?;
            (a, queued)
        }
    };
    let r = &answer.report;
    s.count_report(&client, r);
    Ok(Json(InferResponse {
        state_hash: state,
        new_state_hash: r.output,
        delta_hash: state_pack_ledger::hash::DeltaHash::of(
            &s.pack.engine().info().fingerprint,
            &delta,
        ),
        finish: answer.finish,
        tokens: r.tokens.into(),
        timings: WireTimings::new(&r.timings, queued),
        engine_called: r.engine_called,
        replay_of: r.replay_of,
        receipt: s.receipt(r.receipt.seq)?,
        output: answer.text,
    }))
}

pub(super) async fn compact_state(
    State(s): State<Arc<AppState>>,
    axum::Extension(client): axum::Extension<Client>,
    ApiJson(req): ApiJson<CompactRequest>,
) -> Result<Json<CompactResponse>, ApiError> {
    check_dtype(&s, req.dtype.as_deref())?;
    let state = parse_hash("state_hash", &req.state_hash)?;
    if let Some(deltas) = &req.accumulated_deltas {
        if req.policy.is_some() {
            return Err(ApiError::invalid(
                "send either policy or accumulated_deltas, not both".into(),
            ));
        }
        return fold_accumulated(s, client, state, deltas).await;
    }
    let policy = req.policy.unwrap_or_default();
    if policy.summary_tokens > s.config.max_new_tokens {
        return Err(ApiError::invalid(format!(
            "policy.summary_tokens must be at most {}",
            s.config.max_new_tokens
        )));
    }
    s.pack.state(&state)?;
    let (_permit, queued) = s.engine(&client).await?;
    let done = s
        .timed(async {
            compact::compact(&s.pack, &state, policy)
                .await
                .map_err(|e| match e {
                    compact::CompactError::Pack(p) => ApiError::from(p),
                    compact::CompactError::KeepLast | compact::CompactError::Template(_) => {
                        ApiError::invalid(e.to_string())
                    }
                    other => ApiError::new(ErrorCode::NothingToCompact, other.to_string()),
                })
        })
        .await?;
    if let Some(sum) = &done.summary {
        s.count_report(&client, &sum.report);
    }
    s.count_report(&client, &done.report);
    let mut timings = WireTimings::new(&done.report.timings, queued);
    if let Some(sum) = &done.summary {
        timings.total_ms += sum.report.timings.total.as_secs_f64() * 1e3;
    }
    Ok(Json(CompactResponse {
        new_state_hash: done.report.output,
        steps_folded: done.folded,
        tokens_before: done.before,
        tokens: done.report.tokens,
        timings,
        policy: Some(policy),
        summary_receipt: done
            .summary
            .as_ref()
            .map(|sum| s.receipt(sum.report.receipt.seq))
            .transpose()?,
        summary: done.summary.map(|sum| sum.text),
        receipt: s.receipt(done.report.receipt.seq)?,
    }))
}

/// `POST /compact` with the seed's `accumulated_deltas`.
async fn fold_accumulated(
    s: Arc<AppState>,
    client: Client,
    state: StateHash,
    deltas: &[String],
) -> Result<Json<CompactResponse>, ApiError> {
    if deltas.is_empty() {
        return Err(ApiError::invalid(
            "accumulated_deltas must hold at least one delta".into(),
        ));
    }
    let mut tokenized = Vec::with_capacity(deltas.len());
    for (i, d) in deltas.iter().enumerate() {
        let t = s.tokenize(&format!("accumulated_deltas[{i}]"), d).await?;
        if t.is_empty() {
            return Err(state_pack_core::pack::PackError::EmptyDelta.into());
        }
        tokenized.push(t);
    }
    s.pack.state(&state)?;
    let (_permit, queued) = s.engine(&client).await?;
    let done = s
        .timed(async { Ok(compact::fold_deltas(&s.pack, &state, &tokenized).await?) })
        .await?;
    s.count_report(&client, &done.report);
    Ok(Json(CompactResponse {
        new_state_hash: done.report.output,
        steps_folded: done.folded,
        tokens_before: done.before,
        tokens: done.report.tokens,
        timings: WireTimings::new(&done.report.timings, queued),
        policy: None,
        summary_receipt: None,
        summary: None,
        receipt: s.receipt(done.report.receipt.seq)?,
    }))
}

/// The body of a path-style request as the operation's own: `state_hash` comes from the
/// path; one in the body must be the same.
fn at_path<T: DeserializeOwned>(hash: String, mut body: serde_json::Value) -> Result<T, ApiError> {
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the body must be a JSON object",
        ));
    };
    match fields.get("state_hash") {
        Some(given) if given.as_str() != Some(hash.as_str()) => {
            return Err(ApiError::invalid(
                "state_hash in the body is not the state in the path (leave it out)".into(),
            ))
        }
        _ => {
            fields.insert("state_hash".into(), hash.into());
        }
    }
    serde_json::from_value(body).map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))
}

/// `POST /states/{hash}/merge`: [`merge`] with the state in the path.
pub(super) async fn merge_at(
    s: State<Arc<AppState>>,
    client: axum::Extension<Client>,
    UrlPath(hash): UrlPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<StateResponse>, ApiError> {
    merge(s, client, ApiJson(at_path(hash, body)?)).await
}

/// `POST /states/{hash}/infer`: [`infer`] with the state in the path.
pub(super) async fn infer_at(
    s: State<Arc<AppState>>,
    client: axum::Extension<Client>,
    UrlPath(hash): UrlPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<InferResponse>, ApiError> {
    infer(s, client, ApiJson(at_path(hash, body)?)).await
}

/// `POST /states/{hash}/compact`: [`compact_state`] with the state in the path.
pub(super) async fn compact_at(
    s: State<Arc<AppState>>,
    client: axum::Extension<Client>,
    UrlPath(hash): UrlPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<CompactResponse>, ApiError> {
    compact_state(s, client, ApiJson(at_path(hash, body)?)).await
}
