//! The built-in demo API, answering when no `upstream` is configured, so
//! `floodgate serve` shows limiting with nothing else running.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::future::Either;
use serde_json::{Value, json};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::error::ApiError;

/// The demo API as a service: `GET /api/hello`, its busiest route, is
/// answered directly with its body made once; every other request goes
/// through [`router`].
#[derive(Clone)]
pub struct Demo {
    router: Router,
}

impl Default for Demo {
    fn default() -> Self {
        Demo { router: router() }
    }
}

/// `GET /api/hello`'s body.
const HELLO: &[u8] = br#"{"message":"hello from the floodgate demo API"}"#;

impl Service<Request> for Demo {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Oneshot<Router, Request>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.method() == Method::GET && req.uri().path() == "/api/hello" {
            let mut response = Response::new(Body::from(Bytes::from_static(HELLO)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Either::Left(ready(Ok(response)));
        }
        Either::Right(self.router.clone().oneshot(req))
    }
}

/// `GET /api/hello`, `GET /api/items`, `GET /api/items/{id}`, `POST /api/echo`.
pub fn router() -> Router {
    Router::new()
        .route("/api/hello", get(hello))
        .route("/api/items", get(items))
        .route("/api/items/{id}", get(item))
        .route("/api/echo", post(echo))
        .fallback(not_found)
}

const ITEMS: [(u32, &str); 3] = [(1, "anvil"), (2, "rope"), (3, "lantern")];

async fn hello() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], HELLO).into_response()
}

async fn items() -> Json<Value> {
    Json(json!({
        "items": ITEMS.iter().map(|(id, name)| json!({ "id": id, "name": name })).collect::<Vec<_>>()
    }))
}

async fn item(Path(id): Path<String>) -> Response {
    match id
        .parse::<u32>()
        .ok()
        .and_then(|id| ITEMS.iter().find(|(i, _)| *i == id))
    {
        Some((id, name)) => Json(json!({ "id": id, "name": name })).into_response(),
        None => ApiError::not_found(format!("no item {id:?}")).into_response(),
    }
}

async fn echo(body: axum::body::Bytes) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "the demo API has /api/hello, /api/items, /api/items/{id} and POST /api/echo",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer<S>(service: S, method: Method, path: &str) -> (u16, Option<String>, Bytes)
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = service.oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body)
    }

    #[tokio::test]
    async fn the_direct_hello_answers_as_the_router_does() {
        for method in [Method::GET, Method::HEAD, Method::POST] {
            let direct = answer(Demo::default(), method.clone(), "/api/hello").await;
            let routed = answer(router(), method.clone(), "/api/hello").await;
            assert_eq!(direct, routed, "{method}");
        }
        let (status, _, body) = answer(Demo::default(), Method::GET, "/api/hello").await;
        assert_eq!(status, 200);
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["message"], "hello from the floodgate demo API");
        // Other paths go through the router.
        let (status, _, _) = answer(Demo::default(), Method::GET, "/api/items/2").await;
        assert_eq!(status, 200);
        let (status, _, _) = answer(Demo::default(), Method::GET, "/api/hello/").await;
        assert_eq!(status, 404);
    }
}
