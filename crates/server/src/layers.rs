//! The layers around every route: authentication, JSON for every error (axum's own
//! rejections included), the panic catcher and the metrics observer.

use super::*;

pub(super) fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(ErrorCode::Internal, "internal error").into_response()
}

/// Paths anyone may call.
pub(super) fn is_open(path: &str) -> bool {
    matches!(path, "/health" | "/openapi.json" | "/dashboard")
}

/// Checks the bearer token and names the client.
pub(super) async fn authenticate(
    State(s): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let client = match &s.config.auth {
        Auth::Disabled => Client(Arc::from("anonymous")),
        Auth::Tokens(_) if is_open(req.uri().path()) => Client(Arc::from("anonymous")),
        Auth::Tokens(tokens) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::as_bytes);
            // Compare against every token in constant time, so timing tells nothing.
            let mut found = None;
            if let Some(p) = presented {
                for t in tokens {
                    if bool::from(t.secret.as_slice().ct_eq(p)) {
                        found = Some(t.name.clone());
                    }
                }
            }
            match (presented, found) {
                (_, Some(name)) => Client(name),
                (None, None) => {
                    return ApiError::new(
                        ErrorCode::Unauthorized,
                        "send Authorization: Bearer <token>",
                    )
                    .into_response()
                }
                (Some(_), None) => {
                    return ApiError::new(
                        ErrorCode::Unauthorized,
                        "the bearer token is not accepted",
                    )
                    .into_response()
                }
            }
        }
    };
    req.extensions_mut().insert(client);
    next.run(req).await
}

/// Rewrites any error answer that is not JSON yet (one made by axum or hyper) as JSON with
/// a stable code.
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    ApiError::new(ApiError::code_for(status), message)
        .with_status(status)
        .into_response()
}

/// Counts every request by route and status, with its latency.
pub(super) async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route: &'static str = match req.extensions().get::<MatchedPath>().map(|p| p.as_str()) {
        Some("/states") => "/states",
        Some("/states/{hash}") => "/states/{hash}",
        Some("/merge") => "/merge",
        Some("/infer") => "/infer",
        Some("/compact") => "/compact",
        Some("/states/{hash}/merge") => "/states/{hash}/merge",
        Some("/states/{hash}/infer") => "/states/{hash}/infer",
        Some("/states/{hash}/compact") => "/states/{hash}/compact",
        Some("/receipts/{seq}") => "/receipts/{seq}",
        Some("/receipts/{seq}/proof") => "/receipts/{seq}/proof",
        Some("/checkpoint") => "/checkpoint",
        Some("/tile/{*rest}") => "/tile/{*rest}",
        Some("/health") => "/health",
        Some("/metrics") => "/metrics",
        Some("/openapi.json") => "/openapi.json",
        Some("/v1/chat/completions") => "/v1/chat/completions",
        Some("/v1/completions") => "/v1/completions",
        Some("/v1/models") => "/v1/models",
        Some("/dashboard") => "/dashboard",
        Some("/dashboard.json") => "/dashboard.json",
        _ => "other",
    };
    let response = next.run(req).await;
    s.metrics
        .request(route, response.status().as_u16(), started.elapsed());
    response
}
