//! `versifier serve` over loopback with CPU engines standing in for GPUs:
//! concurrent requests spread over two engines, hostile requests answered with
//! clear 4xx JSON errors while the server keeps serving, a full queue answered
//! 503 with Retry-After, a client that goes away cancelled, Release per engine,
//! and the bearer token.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use versifier::serve::{start, ServeError};

mod serve_harness;
use serve_harness::*;

#[test]
fn two_cpu_engines_answer_200_concurrent_requests_and_share_the_work() {
    let server = start(&options(2, 200)).unwrap();
    let addr = server.addr;
    let clients = clients(
        addr,
        200,
        |i| json!({"prompt": "月", "form": "wujue", "seed": i, "max_tokens": 40}),
    );
    for c in clients {
        let (status, _, v) = c.join().unwrap();
        assert_eq!(status, 200, "{v}");
        let poem = &v["poems"][0];
        assert!(
            poem["verdict"].as_str().unwrap().contains("平仄合律"),
            "{v}"
        );
        assert!(poem["text"].as_str().unwrap().starts_with('月'), "{v}");
    }
    let status: Value = serde_json::from_str(&get(&server, "/v1/status")).unwrap();
    let served: Vec<u64> = status["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["served"].as_u64().unwrap())
        .collect();
    assert_eq!(served.iter().sum::<u64>(), 200, "{status}");
    assert!(
        served.iter().all(|s| *s > 0),
        "both engines worked: {served:?}"
    );
    server.stop().unwrap();
}

#[test]
fn hostile_requests_get_clear_4xx_json_errors_and_the_server_keeps_serving() {
    let server = start(&options(1, 8)).unwrap();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let huge = json!({"prompt": "春".repeat(20_000)}).to_string();
    for (body, status, says) in [
        ("{\"prompt\": ", 400, "not valid"),
        ("not json at all", 400, "not valid"),
        (deep.as_str(), 400, "not valid"),
        (huge.as_str(), 413, "at most"),
        (r#"{"prompt": 5}"#, 400, "field `prompt`: invalid type"),
        (
            r#"{"prompt": "春"} and more"#,
            400,
            "not valid: trailing characters",
        ),
        (r#"["春"]"#, 400, "give one JSON object"),
        (
            r#"{"prompt": "春", "seed": "a"}"#,
            400,
            "field `seed`: invalid type",
        ),
        (
            r#"{"prompt": "春", "variations": 1000}"#,
            400,
            "invalid setting `variations`: 1000",
        ),
        (
            r#"{"prompt": "春", "max_tokens": 0}"#,
            400,
            "invalid setting `max_tokens`: 0",
        ),
        (r#"{"prompt": "春", "temperature": -1}"#, 400, "temperature"),
        (r#"{"prompt": "春", "form": "sonnet"}"#, 400, "sonnet"),
        (r#"{"prompt": "春", "rhyme": "董"}"#, 400, "rhyme"),
        (
            r#"{"prompt": "春", "model": "../../etc"}"#,
            400,
            "unknown field",
        ),
        (
            r#"{"prompt": "春春春春春春春春"}"#,
            400,
            "longer than one line",
        ),
    ] {
        let (got, v, _) = post(&server, "/v1/poems", body, None);
        assert_eq!(got, status, "{}: {v}", &body[..body.len().min(40)]);
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{}: {v}",
            &body[..body.len().min(40)]
        );
        assert!(v["error"]["kind"].is_string(), "{v}");
    }
    let (got, v, _) = post(&server, "/v1/release", r#"{"device": "cuda:7"}"#, None);
    assert_eq!(got, 400, "{v}");
    // Still serving.
    let (got, v, _) = post(&server, "/v1/poems", r#"{"prompt": "春", "seed": 1}"#, None);
    assert_eq!(got, 200, "{v}");
    server.stop().unwrap();
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted() {
    let server = start(&options(1, 1)).unwrap();
    let addr = server.addr;
    let clients = clients(
        addr,
        6,
        |i| json!({"prompt": "山", "form": "qilv", "seed": i, "variations": 4}),
    );
    let results: Vec<(u16, bool, Value)> = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .map(|(status, retry, v)| (status, retry.is_some(), v))
        .collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy = results.iter().filter(|r| r.0 == 503).count();
    assert!(ok >= 1 && busy >= 1, "{results:?}");
    assert_eq!(ok + busy, 6, "{results:?}");
    for (status, retry, v) in &results {
        if *status == 503 {
            assert!(retry, "503 says when to retry");
            assert_eq!(v["error"]["kind"], "busy");
        } else {
            assert_eq!(v["poems"].as_array().unwrap().len(), 4, "{v}");
        }
    }
    server.stop().unwrap();
}

#[test]
fn a_client_that_goes_away_has_its_request_cancelled() {
    let server = start(&options(1, 8)).unwrap();
    let body = json!({"prompt": "江", "form": "qilv", "variations": 8, "stream": true, "seed": 5})
        .to_string();
    let mut resp = agent()
        .post(format!("http://{}/v1/poems", server.addr))
        .header("Content-Type", "application/json")
        .send(&body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut reader = resp.body_mut().as_reader();
    let mut first = [0u8; 64];
    let n = reader.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("event: token"));
    drop(reader);
    drop(resp); // the client goes away mid-poem
    assert!(
        metric_reaches(&server, "versifier_cancelled_total", 1),
        "{}",
        get(&server, "/metrics")
    );
    server.stop().unwrap();
}

#[test]
fn release_unloads_the_engines_and_status_says_so() {
    let server = start(&options(2, 8)).unwrap();
    let (got, _, _) = post(&server, "/v1/poems", r#"{"prompt": "秋", "seed": 2}"#, None);
    assert_eq!(got, 200);
    let (got, v, _) = post(&server, "/v1/release", "", None);
    assert_eq!(got, 200, "{v}");
    assert!(metric_reaches(&server, "versifier_releases_total", 1));
    let status: Value = serde_json::from_str(&get(&server, "/v1/status")).unwrap();
    for e in status["engines"].as_array().unwrap() {
        assert_eq!(e["state"]["state"], "unloaded", "{status}");
    }
    server.stop().unwrap();
}

#[test]
fn a_token_is_required_off_loopback_and_checked_when_set() {
    let mut open = options(1, 4);
    open.bind = "0.0.0.0:0".parse().unwrap();
    // Refused before anything listens.
    assert!(matches!(start(&open), Err(ServeError::TokenRequired(_))));
    let mut locked = options(1, 4);
    locked.token = Some("s3cret".into());
    let server = start(&locked).unwrap();
    for token in [None, Some("wrong")] {
        let (got, v, _) = post(&server, "/v1/poems", r#"{"prompt": "春"}"#, token);
        assert_eq!(got, 401, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("Bearer"));
    }
    let (got, v, _) = post(
        &server,
        "/v1/poems",
        r#"{"prompt": "春", "seed": 4}"#,
        Some("s3cret"),
    );
    assert_eq!(got, 200, "{v}");
    server.stop().unwrap();
}

#[test]
fn the_openai_compatible_completions_endpoint_answers_in_its_shape() {
    let server = start(&options(1, 8)).unwrap();
    let (got, v, _) = post(
        &server,
        "/v1/completions",
        r#"{"model": "tang-poems", "prompt": "春風", "max_tokens": 12, "n": 2, "seed": 9, "temperature": 0.8}"#,
        None,
    );
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert!(choices
        .iter()
        .all(|c| c["text"].is_string() && c["finish_reason"].is_string()));
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (got, v, _) = post(
        &server,
        "/v1/completions",
        r#"{"prompt": "春", "n": 50}"#,
        None,
    );
    assert_eq!(got, 400, "{v}");
    // Named as the OpenAI client wrote it, not as the poem request it becomes.
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("invalid setting `n`: 50"), "{v}");
    server.stop().unwrap();
}

#[test]
fn a_model_swap_under_load_takes_only_folders_under_models_dir_and_fails_no_request() {
    let models = tempfile::tempdir().unwrap();
    let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems");
    let copy = models.path().join("tang-copy");
    std::fs::create_dir(&copy).unwrap();
    for f in ["config.json", "model.safetensors", "vocab.txt", "s2t.tsv"] {
        std::fs::copy(bundled.join(f), copy.join(f)).unwrap();
    }
    // A symlink that points out of the folder.
    #[cfg(unix)]
    std::os::unix::fs::symlink(&bundled, models.path().join("escape")).unwrap();
    let mut opts = options(1, 32);
    opts.models_dir = Some(models.path().to_path_buf());
    let server = start(&opts).unwrap();
    let (got, _, _) = post(&server, "/v1/poems", r#"{"prompt": "春", "seed": 1}"#, None);
    assert_eq!(got, 200);
    for (name, says) in [
        ("../tang-copy", "no .."),
        ("/etc", "no absolute"),
        ("missing", "invalid setting `model`"),
        #[cfg(unix)]
        ("escape", "outside --models-dir"),
    ] {
        let (got, v, _) = post(
            &server,
            "/v1/model",
            &json!({ "model": name }).to_string(),
            None,
        );
        assert_eq!(got, 400, "{name}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{name}: {v}"
        );
    }
    // A swap under load: 12 requests in flight while the model changes; none fails.
    let addr = server.addr;
    let load = poem_requests(
        addr,
        12,
        |i| json!({"prompt": "月", "seed": i, "max_tokens": 24}),
    );
    let (got, v, _) = post(&server, "/v1/model", r#"{"model": "tang-copy"}"#, None);
    assert_eq!(got, 200, "{v}");
    for c in load {
        assert_eq!(c.join().unwrap(), 200, "a request failed during the swap");
    }
    // Requests after the swap work, and the status names the new model.
    for seed in 0..4 {
        let (got, v, _) = post(
            &server,
            "/v1/poems",
            &json!({"prompt": "月", "seed": seed}).to_string(),
            None,
        );
        assert_eq!(got, 200, "{v}");
    }
    let status = swap_settled(&server);
    assert_eq!(status["swap"]["state"], "done", "{status}");
    assert!(
        status["model"].as_str().unwrap().ends_with("tang-copy"),
        "{status}"
    );
    server.stop().unwrap();
    // Without --models-dir there are no swaps.
    let server = start(&options(1, 8)).unwrap();
    let (got, v, _) = post(&server, "/v1/model", r#"{"model": "tang-copy"}"#, None);
    assert_eq!(got, 403, "{v}");
    server.stop().unwrap();
}

#[test]
fn each_engine_releases_after_its_own_idle_time_and_a_restarted_server_serves_again() {
    let mut opts = options(2, 8);
    opts.idle = Some(Duration::from_millis(300));
    let server = start(&opts).unwrap();
    let (got, _, _) = post(&server, "/v1/poems", r#"{"prompt": "雪", "seed": 3}"#, None);
    assert_eq!(got, 200);
    // The engine that served releases on its own timer; the other never started.
    assert!(metric_reaches(&server, "versifier_releases_total", 1));
    let status: Value = serde_json::from_str(&get(&server, "/v1/status")).unwrap();
    let engines = status["engines"].as_array().unwrap();
    assert_eq!(engines[0]["state"]["state"], "unloaded", "{status}");
    assert_eq!(
        engines[0]["last_release"]["reason"], "idle_timeout",
        "{status}"
    );
    assert_eq!(engines[1]["started"], false, "{status}");
    server.stop().unwrap();
    // The same models, a new server: it serves.
    let server = start(&opts).unwrap();
    let (got, v, _) = post(&server, "/v1/poems", r#"{"prompt": "雪", "seed": 3}"#, None);
    assert_eq!(got, 200, "{v}");
    server.stop().unwrap();
}

#[test]
fn a_ci_tune_asked_of_the_bundled_model_is_written_by_the_bundled_ci_model_and_says_so() {
    let server = start(&options(1, 8)).unwrap();
    let (got, v, _) = post(
        &server,
        "/v1/poems",
        r#"{"prompt": "春", "form": "ci:浣溪沙", "seed": 4, "max_tokens": 160}"#,
        None,
    );
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["model"], "song-ci", "{v}");
    let poem = v["poems"][0]["text"].as_str().unwrap();
    let form = "ci:浣溪沙".parse().unwrap();
    assert!(versifier::poetry::forms::satisfies(poem, &form), "{poem}");
    // Its verdict judges the tune's rhymes, which strict rules kept.
    let verdict = v["poems"][0]["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("押詞林正韻第"), "{v}");
    // A 詩 on the same server: the bundled model itself.
    let (got, v, _) = post(
        &server,
        "/v1/poems",
        r#"{"prompt": "春", "form": "qijue"}"#,
        None,
    );
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["model"], "tang-poems", "{v}");
    server.stop().unwrap();
}

#[test]
fn keywords_in_the_api_are_in_every_poem_and_kept_lines_stay_as_sent() {
    let server = start(&options(1, 8)).unwrap();
    // Simplified words, a sentence reduced to its words, in 七絕 and a 詞.
    for (body, words) in [
        (
            r#"{"prompt": "", "form": "qijue", "keywords": ["秋江", "夜雨"], "variations": 2, "seed": 3}"#,
            vec!["秋江", "夜雨"],
        ),
        (
            r#"{"prompt": "", "form": "wulv", "keywords": ["写一首关于秋夜思乡的诗"], "seed": 5}"#,
            vec!["秋夜", "思鄉"],
        ),
        (
            r#"{"prompt": "春", "form": "ci:浣溪沙", "keywords": ["明月"], "seed": 4, "max_tokens": 160}"#,
            vec!["明月"],
        ),
    ] {
        let (got, v, _) = post(&server, "/v1/poems", body, None);
        assert_eq!(got, 200, "{v}");
        assert_eq!(v["keywords"], json!(words), "{v}");
        for poem in v["poems"].as_array().unwrap() {
            let text = poem["text"].as_str().unwrap();
            for w in &words {
                assert!(text.contains(w), "{w} not in {text}");
            }
            let verdict = poem["verdict"].as_str().unwrap();
            assert!(
                verdict.contains("押") && !verdict.contains("不"),
                "{verdict}"
            );
        }
    }
    // Lines kept as the prompt: the answer begins with them, unchanged.
    let kept = "秋江夜雨送行舟，";
    let (got, v, _) = post(
        &server,
        "/v1/poems",
        &json!({"prompt": kept, "form": "qijue", "keywords": ["明月"], "seed": 9}).to_string(),
        None,
    );
    assert_eq!(got, 200, "{v}");
    let text = v["poems"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(kept) && text.contains("明月"), "{text}");
    // A keyword no place takes, or not in Chinese: a 400 naming it.
    for (keywords, says) in [
        (json!(["月落白日"]), "`月落白日`"),
        (json!(["moon"]), "`moon`"),
    ] {
        let body = json!({"prompt": "", "form": "wujue", "keywords": keywords}).to_string();
        let (got, v, _) = post(&server, "/v1/poems", &body, None);
        assert_eq!(got, 400, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`keywords`") && message.contains(says),
            "{v}"
        );
    }
    server.stop().unwrap();
}

#[test]
fn a_page_that_rebinds_its_name_to_loopback_gets_nothing_from_a_loopback_server() {
    let server = start(&options(1, 8)).unwrap();
    let port = server.addr.port();
    let ask = |host: &str| {
        raw_http(
            &server,
            &format!("GET /v1/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    for evil in [
        format!("evil.example:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
    ] {
        let answer = ask(&evil);
        assert!(answer.starts_with("HTTP/1.1 403"), "{evil}: {answer}");
        assert!(
            answer.contains("forbidden_host") && !answer.contains("engines"),
            "{answer}"
        );
    }
    for good in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let answer = ask(&good);
        assert!(answer.starts_with("HTTP/1.1 200"), "{good}: {answer}");
    }
    server.stop().unwrap();
}

#[test]
fn a_cross_origin_form_or_text_post_writes_no_poem_and_releases_nothing() {
    let server = start(&options(1, 8)).unwrap();
    let port = server.addr.port();
    for (path, content_type) in [
        ("/v1/poems", "text/plain"),
        ("/v1/poems", "application/x-www-form-urlencoded"),
        ("/v1/release", "text/plain"),
        ("/v1/model", "multipart/form-data; boundary=x"),
    ] {
        let body = r#"{"prompt": "月"}"#;
        let answer = raw_http(
            &server,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://evil.example\r\n\
                 Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(
            answer.starts_with("HTTP/1.1 415"),
            "{path} {content_type}: {answer}"
        );
        assert!(
            answer.contains("Content-Type: application/json"),
            "{answer}"
        );
    }
    // No CORS: a browser's preflight gets no leave to send JSON from a page.
    let answer = raw_http(
        &server,
        &format!(
            "OPTIONS /v1/poems HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://evil.example\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{answer}"
    );
    // Nothing was written and nothing loaded.
    let status: Value = serde_json::from_str(&get(&server, "/v1/status")).unwrap();
    assert_eq!(status["engines"][0]["served"], 0, "{status}");
    assert!(status["engines"][0]["last_load"].is_null(), "{status}");
    server.stop().unwrap();
}

#[test]
fn a_swap_to_a_broken_model_keeps_the_old_one_serving_and_says_why() {
    let models = tempfile::tempdir().unwrap();
    let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems");
    let broken = models.path().join("truncated");
    std::fs::create_dir(&broken).unwrap();
    for f in ["config.json", "vocab.txt", "s2t.tsv"] {
        std::fs::copy(bundled.join(f), broken.join(f)).unwrap();
    }
    let weights = std::fs::read(bundled.join("model.safetensors")).unwrap();
    std::fs::write(
        broken.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    let mut opts = options(1, 32);
    opts.models_dir = Some(models.path().to_path_buf());
    let server = start(&opts).unwrap();
    // Requests in flight while the swap fails: none hears of it.
    let addr = server.addr;
    let load = poem_requests(
        addr,
        8,
        |i| json!({"prompt": "月", "seed": i, "max_tokens": 24}),
    );
    let (got, v, _) = post(&server, "/v1/model", r#"{"model": "truncated"}"#, None);
    assert_eq!(got, 200, "{v}");
    for c in load {
        assert_eq!(
            c.join().unwrap(),
            200,
            "a request failed during the failed swap"
        );
    }
    let status = swap_settled(&server);
    assert_eq!(status["swap"]["state"], "failed", "{status}");
    assert!(
        status["swap"]["error"]
            .as_str()
            .unwrap()
            .contains("model.safetensors"),
        "{status}"
    );
    assert!(
        status["model"].as_str().unwrap().ends_with("tang-poems"),
        "{status}"
    );
    // After it, the old model still writes every poem.
    for seed in 0..4 {
        let (got, v, _) = post(
            &server,
            "/v1/poems",
            &json!({"prompt": "月", "seed": seed}).to_string(),
            None,
        );
        assert_eq!(got, 200, "{v}");
        assert_eq!(v["model"], "tang-poems", "{v}");
    }
    server.stop().unwrap();
}

#[test]
fn probes_find_health_and_readiness_and_clients_find_the_model_list() {
    let server = start(&options(1, 8)).unwrap();
    let health: Value = serde_json::from_str(&get(&server, "/health")).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let ready: Value = serde_json::from_str(&get(&server, "/ready")).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let models: Value = serde_json::from_str(&get(&server, "/v1/models")).unwrap();
    assert_eq!(models["object"], "list", "{models}");
    assert_eq!(models["data"][0]["id"], "tang-poems", "{models}");
    server.stop().unwrap();
}

#[test]
fn completion_ids_never_repeat_and_a_vanishing_temperature_is_a_400_not_a_500() {
    let server = start(&options(1, 8)).unwrap();
    let mut ids = std::collections::HashSet::new();
    for seed in 0..3 {
        let body = json!({"prompt": "春", "max_tokens": 4, "seed": seed}).to_string();
        let (got, v, _) = post(&server, "/v1/completions", &body, None);
        assert_eq!(got, 200, "{v}");
        assert!(ids.insert(v["id"].as_str().unwrap().to_string()), "{v}");
    }
    for path in ["/v1/poems", "/v1/completions"] {
        let (got, v, _) = post(
            &server,
            path,
            r#"{"prompt": "春", "temperature": 1e-300}"#,
            None,
        );
        assert_eq!(got, 400, "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`temperature`") && message.contains("0.001"),
            "{v}"
        );
    }
    server.stop().unwrap();
}

#[test]
fn a_burst_of_128_on_one_engine_with_the_default_queue_is_answered_without_a_503() {
    let server = start(&options(1, versifier::serve::DEFAULT_MAX_QUEUE)).unwrap();
    let addr = server.addr;
    let clients = poem_requests(
        addr,
        128,
        |i| json!({"prompt": "月", "form": "wujue", "seed": i}),
    );
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    server.stop().unwrap();
}
