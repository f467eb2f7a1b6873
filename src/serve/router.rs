//! The server's whole surface: every route and the layers around them, in
//! the order a request meets them (CORS when allowed, the metrics and access
//! log, the guard, `Retry-After` on 503s, the body timeout and limit). The
//! handlers live in `routes.rs` (poems, status, release, swap, models,
//! metrics), `openai.rs` and `probes.rs`.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;

use super::guard::GuardConfig;
use super::{admission, connections, guard, metrics, openai, probes, routes};
use super::{AppState, MAX_BODY_BYTES};

pub fn router(
    state: Arc<AppState>,
    guard: GuardConfig,
    limits: connections::ConnectionLimits,
    allow_origin: Option<HeaderValue>,
) -> Router {
    let router = Router::new()
        .route("/v1/poems", post(routes::poems))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/status", get(routes::status))
        .route("/v1/release", post(routes::release))
        .route("/v1/model", post(routes::swap_model))
        .route("/metrics", get(routes::metrics))
        .route("/v1/models", get(routes::models))
        .route("/health", get(probes::health))
        .route("/ready", get(probes::ready))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_read,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            admission::retry_after,
        ))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics::observe,
        ));
    // Pages of `--allow-origin` may call the API (their preflight is
    // answered); without it no page may read an answer.
    let router = match allow_origin {
        Some(origin) => router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::AllowOrigin::list([origin]))
                .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
        ),
        None => router,
    };
    router.with_state(state)
}
