//! What the serve tests share: a server's options, an HTTP client that
//! returns error statuses instead of failing, and bounded waits.

#![allow(dead_code)] // each test file uses some of these
#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use versifier::engine::{DeviceChoice, Precision};
use versifier::serve::{RunningServer, ServeOptions};

pub fn options(devices: usize, max_queue: usize) -> ServeOptions {
    ServeOptions {
        max_queue,
        ..ServeOptions::in_process(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems"),
            vec![DeviceChoice::Cpu; devices],
            Precision::F32,
        )
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// POSTs `body` (raw text) and returns the status and the JSON answer.
pub fn post(
    server: &RunningServer,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut req = agent()
        .post(format!("http://{}{path}", server.addr))
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        retry,
    )
}

pub fn get(server: &RunningServer, path: &str) -> String {
    agent()
        .get(format!("http://{}{path}", server.addr))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// Polls `/metrics` (bounded) until `name` reaches `at_least`.
pub fn metric_reaches(server: &RunningServer, name: &str, at_least: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let text = get(server, "/metrics");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if value >= at_least {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Sends `request` (raw HTTP/1.1, `Connection: close`) and returns the
/// response's status line, headers and body as text.
pub fn raw_http(server: &RunningServer, request: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Polls `/v1/status` (bounded) until the last swap is no longer under way.
pub fn swap_settled(server: &RunningServer) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = serde_json::from_str(&get(server, "/v1/status")).unwrap();
        if status["swap"]["state"] != "swapping" || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` clients on threads of their own, each POSTing `body(i)` to `/v1/poems`
/// once; each thread returns the status it got.
pub fn poem_requests(
    addr: std::net::SocketAddr,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<std::thread::JoinHandle<u16>> {
    (0..n)
        .map(|i| {
            let body = body(i).to_string();
            std::thread::spawn(move || {
                agent()
                    .post(format!("http://{addr}/v1/poems"))
                    .header("Content-Type", "application/json")
                    .send(&body)
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect()
}

/// `n` clients on threads of their own, each POSTing `body(i)` once; each
/// returns the status, the Retry-After header and the JSON answer.
pub fn clients(
    addr: std::net::SocketAddr,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<std::thread::JoinHandle<(u16, Option<u64>, Value)>> {
    (0..n)
        .map(|i| {
            let body = body(i).to_string();
            std::thread::spawn(move || {
                let mut resp = agent()
                    .post(format!("http://{addr}/v1/poems"))
                    .header("Content-Type", "application/json")
                    .send(&body)
                    .unwrap();
                let status = resp.status().as_u16();
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                let text = resp.body_mut().read_to_string().unwrap();
                (status, retry, serde_json::from_str(&text).unwrap())
            })
        })
        .collect()
}

/// [`clients`], each joined: what every one got, in order.
pub fn answers(
    addr: std::net::SocketAddr,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<(u16, Option<u64>, Value)> {
    clients(addr, n, body)
        .into_iter()
        .map(|c| c.join().unwrap())
        .collect()
}
