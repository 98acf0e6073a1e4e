//! The JSON error of DESIGN.md: `{"error", "code", "request_id"}` with a fixed set of codes.
//!
//! Handlers return [`ApiError`]; its response carries the error in an extension, and the
//! request-id middleware renders the body, so every error (routing and body-limit rejections
//! included) gets the same shape and the request's id. On the gRPC port the same errors become
//! a `tonic::Status` through [`ErrorCode::grpc_code`], with the same message.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// The error codes a client can see, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 400: the request is malformed or does not match the model.
    InvalidRequest,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 404: no such model (or version, or route).
    ModelNotFound,
    /// 408: the request body did not arrive within the body deadline.
    RequestTimeout,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 429: over the concurrency or rate limit.
    RateLimited,
    /// 503: the model is not loaded yet, or the server is shutting down.
    ModelNotReady,
    /// 504: the request's deadline passed before inference finished.
    InferenceTimeout,
    /// 500: anything else; the message never leaks internals.
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ModelNotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InferenceTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code of the same error (the gRPC server's one mapping).
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidRequest => tonic::Code::InvalidArgument,
            ErrorCode::Unauthorized => tonic::Code::Unauthenticated,
            ErrorCode::ModelNotFound => tonic::Code::NotFound,
            ErrorCode::PayloadTooLarge | ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::ModelNotReady => tonic::Code::Unavailable,
            ErrorCode::InferenceTimeout | ErrorCode::RequestTimeout => tonic::Code::DeadlineExceeded,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::ModelNotFound => "MODEL_NOT_FOUND",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::ModelNotReady => "MODEL_NOT_READY",
            ErrorCode::InferenceTimeout => "INFERENCE_TIMEOUT",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// An error returned to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ModelNotFound, message)
    }
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ModelNotReady, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
    request_id: &'a str,
}

impl ApiError {
    /// The JSON body for this error and request id.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&ErrorBody { error: &self.message, code: self.code.as_str(), request_id })
            .unwrap_or_else(|_| b"{\"error\":\"internal error\",\"code\":\"INTERNAL\"}".to_vec())
    }
}

impl From<&ApiError> for tonic::Status {
    /// The gRPC status: the code's gRPC equivalent and the same message as the JSON `error`.
    fn from(e: &ApiError) -> tonic::Status {
        tonic::Status::new(e.code.grpc_code(), e.message.clone())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = self.code.status().into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_grpc_status() {
        let pairs = [
            (ErrorCode::InvalidRequest, tonic::Code::InvalidArgument),
            (ErrorCode::Unauthorized, tonic::Code::Unauthenticated),
            (ErrorCode::ModelNotFound, tonic::Code::NotFound),
            (ErrorCode::PayloadTooLarge, tonic::Code::ResourceExhausted),
            (ErrorCode::RateLimited, tonic::Code::ResourceExhausted),
            (ErrorCode::ModelNotReady, tonic::Code::Unavailable),
            (ErrorCode::InferenceTimeout, tonic::Code::DeadlineExceeded),
            (ErrorCode::Internal, tonic::Code::Internal),
        ];
        for (code, grpc) in pairs {
            let s = tonic::Status::from(&ApiError::new(code, "input 'x' is wrong"));
            assert_eq!((s.code(), s.message()), (grpc, "input 'x' is wrong"));
        }
    }
}
