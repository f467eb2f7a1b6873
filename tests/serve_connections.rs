//! `versifier serve`'s connections as a hostile or careless client uses them
//! (raw TCP on loopback, bounded): headers sent too slowly and idle
//! keep-alive connections are closed, a body that stalls is answered, a huge
//! Content-Length is refused before any body is read, the connection cap
//! holds and frees; and `--allow-origin` lets exactly one web origin in.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use versifier::serve::connections::ConnectionLimits;
use versifier::serve::{start, RunningServer, ServeOptions};

mod serve_harness;
use serve_harness::*;

fn with_limits(limits: ConnectionLimits) -> ServeOptions {
    ServeOptions {
        limits,
        ..options(1, 8)
    }
}

fn connect(server: &RunningServer) -> TcpStream {
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection (or 10 s pass); what it sent.
fn until_closed(mut s: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the server kept the connection open for {:?} ({e}); it sent {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn headers_sent_too_slowly_and_idle_keep_alive_connections_are_closed() {
    let server = start(&with_limits(ConnectionLimits {
        header_read: Duration::from_millis(500),
        ..ConnectionLimits::default()
    }))
    .unwrap();
    // Half a request line, then nothing.
    let mut slow = connect(&server);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.")
        .unwrap();
    let (_, took) = until_closed(slow);
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A request answered, then the connection left idle.
    let mut idle = connect(&server);
    idle.write_all(
        format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            server.addr.port()
        )
        .as_bytes(),
    )
    .unwrap();
    let (answer, took) = until_closed(idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    server.stop().unwrap();
}

#[test]
fn a_huge_content_length_is_refused_before_the_body_and_a_stalled_body_is_answered() {
    let server = start(&with_limits(ConnectionLimits {
        body_read: Duration::from_millis(500),
        ..ConnectionLimits::default()
    }))
    .unwrap();
    let port = server.addr.port();
    // 10^12 bytes announced, none sent: answered at once.
    let mut huge = connect(&server);
    huge.write_all(
        format!(
            "POST /v1/poems HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let n = huge.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    // 100 bytes announced, 10 sent, then silence: answered, not held.
    let mut stalled = connect(&server);
    stalled
        .write_all(
            format!(
                "POST /v1/poems HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"prompt\":"
            )
            .as_bytes(),
        )
        .unwrap();
    let (answer, took) = until_closed(stalled);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    server.stop().unwrap();
}

#[test]
fn the_connection_cap_holds_and_a_closed_connection_frees_its_place() {
    let server = start(&with_limits(ConnectionLimits {
        max_connections: 4,
        ..ConnectionLimits::default()
    }))
    .unwrap();
    let port = server.addr.port();
    // Four idle connections, each accepted (a request answered on it).
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(
                format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
            )
            .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    // A fifth is not accepted while they stay open.
    let mut fifth = connect(&server);
    fifth
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    fifth
        .write_all(format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(fifth.read(&mut buf).is_err(), "served past the cap of 4");
    // One closes: the fifth is served.
    drop(held.pop());
    fifth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = fifth.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(held);
    server.stop().unwrap();
}

#[test]
fn only_the_allowed_origin_may_call_the_api_from_a_page() {
    let origin = "https://poems.example.org";
    let server = start(&ServeOptions {
        allow_origin: Some(origin.parse().unwrap()),
        ..options(1, 8)
    })
    .unwrap();
    let port = server.addr.port();
    let preflight = |from: &str| {
        raw_http(
            &server,
            &format!(
                "OPTIONS /v1/poems HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {from}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"
            ),
        )
        .to_ascii_lowercase()
    };
    let allowed = preflight(origin);
    assert!(
        allowed.contains(&format!("access-control-allow-origin: {origin}")),
        "{allowed}"
    );
    let other = preflight("https://evil.example");
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    server.stop().unwrap();
    // Without --allow-origin no page is let in.
    let plain = start(&options(1, 8)).unwrap();
    let answer = raw_http(
        &plain,
        &format!(
            "OPTIONS /v1/poems HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
            plain.addr.port()
        ),
    )
    .to_ascii_lowercase();
    assert!(!answer.contains("access-control-allow-origin"), "{answer}");
    plain.stop().unwrap();
}
