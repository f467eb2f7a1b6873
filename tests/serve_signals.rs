//! `versifier serve` as systemd, Docker and Kubernetes stop it: SIGTERM
//! closes the listener and answers every request in flight before the process
//! exits 0 (the real binary, on loopback, bounded).

#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

#[test]
fn sigterm_under_load_answers_every_request_in_flight_and_exits_0() {
    let (mut child, addr, _) = serve(&["--max-queue", "32"]);
    // Eight requests of eight 七律 each: seconds of work on the CPU.
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body =
                    format!(r#"{{"prompt": "山", "form": "qilv", "variations": 8, "seed": {i}}}"#);
                let mut resp = agent()
                    .post(format!("http://{addr}/v1/poems"))
                    .header("Content-Type", "application/json")
                    .send(&body)
                    .unwrap();
                (
                    resp.status().as_u16(),
                    resp.body_mut().read_to_string().unwrap(),
                )
            })
        })
        .collect();
    // Every request accepted, then the signal.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = agent()
            .get(format!("http://{addr}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let accepted = metrics
            .lines()
            .find_map(|l| l.strip_prefix("versifier_requests_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if accepted >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "the requests never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    for c in clients {
        let (status, body) = c.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"poems\""), "{body}");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
}

/// Starts `versifier serve` with `extra` options; returns it, its address,
/// and the thread that collects what it writes to stderr until it exits.
fn serve(
    extra: &[&str],
) -> (
    std::process::Child,
    String,
    std::thread::JoinHandle<Vec<String>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_versifier"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--devices",
            "cpu",
            "--log-dir",
            "none",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on http://") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no listening line"
        );
    }
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    // Keep reading what it says, so its last words find an open pipe.
    let said = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect());
    (child, addr, said)
}

#[test]
fn a_client_holding_a_half_sent_request_keeps_a_stopping_server_no_longer_than_the_drain_timeout() {
    use std::io::Write;
    let (mut child, addr, _) = serve(&["--drain-timeout", "1s"]);
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    held.write_all(b"POST /v1/poems HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let signalled = Instant::now();
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(20));
    drop(held);
}

#[test]
fn each_request_gets_one_access_log_line_at_info() {
    let (mut child, addr, said) = serve(&["--log-level", "info"]);
    let (status, _) = {
        let mut resp = agent()
            .post(format!("http://{addr}/v1/poems"))
            .header("Content-Type", "application/json")
            .send(r#"{"prompt": "月", "seed": 1}"#)
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(status, 200);
    let mut resp = agent()
        .get(format!("http://{addr}/nowhere"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let _ = resp.body_mut().read_to_string();
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    let lines = said.join().unwrap();
    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("versifier::access"))
        .collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    assert!(access[0].contains("POST /v1/poems 200"), "{access:?}");
    assert!(access[1].contains("GET /nowhere 404"), "{access:?}");
}
