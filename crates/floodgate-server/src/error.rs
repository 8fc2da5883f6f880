//! The one shape of every error floodgate's own endpoints answer with: an
//! RFC 9457 problem+json body ([`ApiError`]), so a handler returns
//! `Result<_, ApiError>` and uses `?`, and the framework's own error answers
//! are turned into the same shape ([`problems_only`]).

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use floodgate_tower::Problem;
use floodgate_tower::response::PROBLEM_JSON;
use serde::de::DeserializeOwned;

/// An error answer: a status, what went wrong in words, and any header the
/// status calls for (`Allow`, `WWW-Authenticate`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// `status`, described by `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
            header: None,
        }
    }

    /// 400: the request is wrong, and `detail` says how.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404: `detail` names what is not there.
    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, detail)
    }

    /// 503: the store failed.
    pub fn store(e: &floodgate_core::Error) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store could not be reached: {e}"),
        )
    }

    /// The same error with the header `name: value`.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.header = Some((name, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = Problem::new(self.status, self.detail)
            .into_response()
            .map(Body::new);
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// A problem+json response.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    ApiError::new(status, detail).into_response()
}

/// Parses a JSON body; a 400 naming the problem otherwise.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Turns the framework's own error answers (a body over the size limit, a
/// path that does not decode to UTF-8, a method the route does not take)
/// into problem+json, keeping their status, headers and text. For
/// floodgate's own endpoints only: an upstream's answers pass unchanged.
pub async fn problems_only(req: Request, next: Next) -> Response {
    problems_only_response(next.run(req).await).await
}

/// [`problems_only`] of an answer already made.
pub async fn problems_only_response(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_owned(),
    };
    let (problem_parts, body) = problem(status, &detail).into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.extend(problem_parts.headers);
    Response::from_parts(parts, body)
}
