//! What orchestrators and routers ask of a server before sending it work:
//! `GET /health` (the process answers) and `GET /ready` (an engine can take
//! a request now). Neither needs the token nor says anything about the
//! model, so probes can reach them; `GET /v1/models` (in `routes.rs`) does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;

/// `GET /health`: the server is up.
pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /ready`: 200 while some engine has room in its queue and the server
/// is not stopping, else 503.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.lifecycle.phase() != super::shutdown::Phase::Serving {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "the server is shutting down"})),
        )
            .into_response()
    } else if state.pool.can_take_work() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "every engine's queue is full"})),
        )
            .into_response()
    }
}

/// A completion id no other answer of this process has: the time and a
/// counter (two answers in one second differ).
pub fn completion_id(created: u64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("cmpl-{created}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::shutdown::Phase;

    #[tokio::test]
    async fn readiness_turns_false_when_the_server_starts_draining() {
        let opts = crate::serve::ServeOptions::in_process(
            std::path::PathBuf::from("models/tang-poems"),
            vec![crate::engine::DeviceChoice::Cpu],
            crate::engine::Precision::F32,
        );
        let state = crate::serve::state(&opts);
        assert_eq!(
            ready(State(Arc::clone(&state))).await.status(),
            StatusCode::OK
        );
        state.lifecycle.enter(Phase::Draining);
        assert_eq!(
            ready(State(Arc::clone(&state))).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Alive all the same.
        assert_eq!(health().await.status(), StatusCode::OK);
    }
}
