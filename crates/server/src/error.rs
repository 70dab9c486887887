//! Errors as the client sees them: a status, a stable `code` and a message, always as JSON.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use state_pack_core::engine::EngineError;
use state_pack_core::pack::PackError;

/// The error body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error: a stable machine-readable `code`, a message for people, and OpenAI's `type`
/// (so that OpenAI clients read the same body).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable code: one of `ErrorCode::ALL` (`docs/SERVER.md` lists them with their status).
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
    /// The class of error in OpenAI's terms: `invalid_request_error`,
    /// `authentication_error`, `not_found_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Every error code the server answers with: its wire name and its HTTP status. The
/// handlers, the OpenAPI document and `docs/SERVER.md` are all made from this list (a test
/// checks the doc names every variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not JSON or not the request's shape.
    InvalidJson,
    /// A state hash that is not 64 lowercase hex characters.
    InvalidHash,
    /// Sampling, policy or a path parameter out of range.
    InvalidParameters,
    /// A base or delta that tokenizes to nothing.
    EmptyText,
    /// Any other client error (answered outside the handlers).
    BadRequest,
    /// No bearer token, or one not accepted.
    Unauthorized,
    /// The state is not in this store.
    UnknownState,
    /// The receipt is not in this log.
    UnknownReceipt,
    /// No such endpoint.
    NotFound,
    /// The endpoint does not take this method.
    MethodNotAllowed,
    /// The state was made on another model.
    WrongModel,
    /// The body or the delta is over the server's limit.
    PayloadTooLarge,
    /// A body without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// The result would not fit the context window.
    ContextOverflow,
    /// The compaction policy keeps every turn.
    NothingToCompact,
    /// A seed-protocol `dtype` other than the one the engine keeps KV in.
    UnsupportedDtype,
    /// A bug or a store failure; details in the server log only.
    Internal,
    /// The engine failed while running the request.
    EngineFailed,
    /// The engine queue is full; retry after `Retry-After` seconds.
    Overloaded,
    /// An OpenAI-style request named a model this server does not run.
    UnknownModel,
    /// The server is draining.
    ShuttingDown,
    /// The operation used the engine longer than the server's limit.
    Timeout,
}

impl ErrorCode {
    /// Every code, in the order `docs/SERVER.md` lists them.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidHash,
        ErrorCode::InvalidParameters,
        ErrorCode::EmptyText,
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownState,
        ErrorCode::UnknownReceipt,
        ErrorCode::NotFound,
        ErrorCode::UnknownModel,
        ErrorCode::MethodNotAllowed,
        ErrorCode::WrongModel,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::ContextOverflow,
        ErrorCode::NothingToCompact,
        ErrorCode::UnsupportedDtype,
        ErrorCode::Internal,
        ErrorCode::EngineFailed,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::Timeout,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidHash => "invalid_hash",
            ErrorCode::InvalidParameters => "invalid_parameters",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownState => "unknown_state",
            ErrorCode::UnknownReceipt => "unknown_receipt",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownModel => "model_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::WrongModel => "wrong_model",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::ContextOverflow => "context_overflow",
            ErrorCode::NothingToCompact => "nothing_to_compact",
            ErrorCode::UnsupportedDtype => "unsupported_dtype",
            ErrorCode::Internal => "internal",
            ErrorCode::EngineFailed => "engine_failed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidHash => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParameters => StatusCode::BAD_REQUEST,
            ErrorCode::EmptyText => StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::UnknownState => StatusCode::NOT_FOUND,
            ErrorCode::UnknownReceipt => StatusCode::NOT_FOUND,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::UnknownModel => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::WrongModel => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ContextOverflow => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::NothingToCompact => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnsupportedDtype => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::EngineFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The class of error in OpenAI's terms (the body's `type`).
    pub fn kind(self) -> &'static str {
        match self.status().as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            503 if self == ErrorCode::Overloaded => "rate_limit_error",
            s if s < 500 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// What it means, for the OpenAPI document.
    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "The body is not JSON or not the request's shape.",
            ErrorCode::InvalidHash => "A state hash that is not 64 lowercase hex characters.",
            ErrorCode::InvalidParameters => "Sampling, policy or a path parameter out of range.",
            ErrorCode::EmptyText => "A base or delta that tokenizes to nothing.",
            ErrorCode::BadRequest => "Any other client error (answered outside the handlers).",
            ErrorCode::Unauthorized => "No bearer token, or one not accepted.",
            ErrorCode::UnknownState => "The state is not in this store.",
            ErrorCode::UnknownReceipt => "The receipt is not in this log.",
            ErrorCode::NotFound => "No such endpoint.",
            ErrorCode::UnknownModel => {
                "An OpenAI-style request named a model this server does not run."
            }
            ErrorCode::MethodNotAllowed => "The endpoint does not take this method.",
            ErrorCode::WrongModel => "The state was made on another model.",
            ErrorCode::PayloadTooLarge => "The body or the delta is over the server's limit.",
            ErrorCode::UnsupportedMediaType => "A body without `Content-Type: application/json`.",
            ErrorCode::ContextOverflow => "The result would not fit the context window.",
            ErrorCode::NothingToCompact => "The compaction policy keeps every turn.",
            ErrorCode::UnsupportedDtype => {
                "A seed-protocol `dtype` other than the one the engine keeps KV in."
            }
            ErrorCode::Internal => "A bug or a store failure; details in the server log only.",
            ErrorCode::EngineFailed => "The engine failed while running the request.",
            ErrorCode::Overloaded => "The engine queue is full; retry after `Retry-After` seconds.",
            ErrorCode::ShuttingDown => "The server is draining.",
            ErrorCode::Timeout => "The operation used the engine longer than the server's limit.",
        }
    }
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status: the code's, unless the error was answered outside the handlers.
    pub status: StatusCode,
    /// Stable code.
    pub code: ErrorCode,
    /// Message.
    pub message: String,
    /// Seconds after which to retry (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this code (and its status) and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 invalid_parameters.
    pub fn invalid(message: String) -> Self {
        Self::new(ErrorCode::InvalidParameters, message)
    }

    /// The same error answered with `status` (for answers made outside the handlers, which
    /// keep the status axum chose).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// 500 internal; the details go to the log, not to the client.
    pub fn internal(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what}");
        Self::new(ErrorCode::Internal, format!("{what}: see the server log"))
    }

    /// The code a bare status maps to (for answers made outside the handlers).
    pub fn code_for(status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::BAD_REQUEST => ErrorCode::InvalidParameters,
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::InvalidJson,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Overloaded,
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => ErrorCode::Timeout,
            s if s.is_client_error() => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

impl From<PackError> for ApiError {
    fn from(e: PackError) -> Self {
        let msg = e.to_string();
        match e {
            PackError::UnknownState(_) => Self::new(ErrorCode::UnknownState, msg),
            PackError::WrongModel { .. } => Self::new(ErrorCode::WrongModel, msg),
            PackError::EmptyBase | PackError::EmptyDelta => Self::new(ErrorCode::EmptyText, msg),
            PackError::ContextOverflow { .. } => Self::new(ErrorCode::ContextOverflow, msg),
            PackError::InvalidParameters(_) | PackError::Template(_) => {
                Self::new(ErrorCode::InvalidParameters, msg)
            }
            PackError::Engine(EngineError::Rejected(_)) => {
                Self::new(ErrorCode::InvalidParameters, msg)
            }
            PackError::Engine(e) => {
                tracing::error!(error = %e, "engine failure");
                Self::new(ErrorCode::EngineFailed, e.to_string())
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
                code: self.code.as_str().to_string(),
                message: self.message,
                kind: self.code.kind().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/SERVER.md`'s error table: every code, on a row of its own status.
    #[test]
    fn the_server_doc_lists_every_error_code_with_its_status() {
        let doc = include_str!("../../../docs/SERVER.md");
        let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| ")).collect();
        for code in ErrorCode::ALL {
            let name = format!("`{}`", code.as_str());
            let row = rows
                .iter()
                .find(|r| r.split('|').nth(2).is_some_and(|c| c.contains(&name)))
                .unwrap_or_else(|| panic!("docs/SERVER.md has no row for {name}"));
            let status = row.split('|').nth(1).unwrap_or_default().trim();
            let expected = code.status().as_u16().to_string();
            assert!(
                status == expected || (code == ErrorCode::BadRequest && status == "4xx"),
                "{name} is listed under {status}, answered with {expected}"
            );
        }
    }

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }
}
