//! Errors as the client sees them: a status, a stable `code` and a message, always as JSON.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{ErrorBody, ErrorDetail};
use crate::engine::EngineError;
use crate::pack::PackError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Seconds after which to retry (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 invalid_parameters.
    pub fn invalid(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameters", message)
    }

    /// 500 internal; the details go to the log, not to the client.
    pub fn internal(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}: see the server log"),
        )
    }

    /// The code a bare status maps to (for answers made outside the handlers).
    pub fn code_for(status: StatusCode) -> &'static str {
        match status {
            StatusCode::BAD_REQUEST => "invalid_parameters",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_json",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => "timeout",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        }
    }
}

impl From<PackError> for ApiError {
    fn from(e: PackError) -> Self {
        let msg = e.to_string();
        match e {
            PackError::UnknownState(_) => Self::new(StatusCode::NOT_FOUND, "unknown_state", msg),
            PackError::WrongModel { .. } => Self::new(StatusCode::CONFLICT, "wrong_model", msg),
            PackError::EmptyBase | PackError::EmptyDelta => {
                Self::new(StatusCode::BAD_REQUEST, "empty_text", msg)
            }
            PackError::ContextOverflow { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "context_overflow", msg)
            }
            PackError::InvalidParameters(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_parameters", msg)
            }
            PackError::Engine(EngineError::Rejected(_)) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_parameters", msg)
            }
            PackError::Engine(e) => {
                tracing::error!(error = %e, "engine failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "engine_failed",
                    e.to_string(),
                )
            }
            PackError::Inconsistent { .. } | PackError::Store(_) => {
                Self::internal("store failure", &msg)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"state-pack\""),
            );
        }
        response
    }
}
