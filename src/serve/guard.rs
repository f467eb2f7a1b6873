//! What keeps a web page from driving a server on this machine: on a loopback
//! bind only a `Host` that names the loopback is served (a page that rebinds
//! its own name to 127.0.0.1 sends its own name), and a POST must say its body
//! is JSON (a browser sends a cross-origin form or `text/plain` POST without
//! asking first; `application/json` it must ask for, and this server answers
//! no such question, so it sends no CORS headers). The bearer token is
//! compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// What the guard checks.
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// The port of a loopback bind (its `Host` is checked); `None` off loopback.
    pub loopback_port: Option<u16>,
    /// The largest body; a `Content-Length` over it is refused before the
    /// body is read (the body limit itself holds for chunked bodies).
    pub max_body_bytes: usize,
}

/// The host names a loopback server answers to.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether `host` (a `Host` header) names the loopback, with `port` or none.
pub fn is_loopback_host(host: &str, port: u16) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let (name, given_port) = match host.rsplit_once(':') {
        // `[::1]` alone has colons inside its brackets.
        Some((name, p)) if !p.ends_with(']') => (name.to_string(), Some(p.to_string())),
        _ => (host.clone(), None),
    };
    LOOPBACK_HOSTS.contains(&name.as_str())
        && given_port.is_none_or(|p| p.parse::<u16>() == Ok(port))
}

/// Whether the request says its body is JSON (`application/json`, any parameters).
fn says_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn refuse(status: StatusCode, kind: &str, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"kind": kind, "message": message}})),
    )
        .into_response()
}

/// The middleware: refuses what [`GuardConfig`] does not let through.
pub async fn guard(State(config): State<GuardConfig>, req: Request, next: Next) -> Response {
    if let Some(port) = config.loopback_port {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host, port) {
            return refuse(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "this server listens on loopback and answers only `Host: localhost:{port}`, \
                     `127.0.0.1:{port}` or `[::1]:{port}`; the request named `{host}` \
                     (bind another address with --token-file to serve other names)"
                ),
            );
        }
    }
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = length.filter(|n| *n > config.max_body_bytes as u64) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the request body would be {n} bytes (Content-Length); at most {} are accepted",
                config.max_body_bytes
            ),
        );
    }
    if req.method() == Method::POST && !says_json(req.headers()) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a POST needs `Content-Type: application/json` (curl: -H 'Content-Type: application/json')"
                .into(),
        );
    }
    next.run(req).await
}

/// Whether `given` is `token`, in time that does not depend on where they differ.
pub fn token_matches(given: &str, token: &str) -> bool {
    constant_time_eq::constant_time_eq(given.as_bytes(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_with_the_servers_port_are_loopback_hosts() {
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "LOCALHOST:8080",
            "localhost",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok, 8080), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost:8081",
            "127.0.0.2:8080",
            "localhost.evil.example:8080",
            "",
            "[::1]:80",
        ] {
            assert!(!is_loopback_host(bad, 8080), "{bad}");
        }
        assert!(token_matches("s3cret", "s3cret") && !token_matches("s3cre", "s3cret"));
    }
}
