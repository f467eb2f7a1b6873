//! The OpenAI-compatible endpoints as routers and clients use them (loopback,
//! bounded): a chat completion is a poem about the last user message, stream
//! chunks carry the answer's id and model and end with a finish_reason, and
//! the official `openai` Python client works for models, completions and
//! chat, plain and streamed.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use serde_json::{json, Value};
use versifier::serve::start;

mod serve_harness;
use serve_harness::*;

/// The `data:` payloads of a server-sent event stream.
fn sse_data(server: &versifier::serve::RunningServer, path: &str, body: &Value) -> Vec<String> {
    let mut resp = agent()
        .post(format!("http://{}{path}", server.addr))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.body_mut()
        .read_to_string()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[test]
fn a_chat_completion_is_a_poem_about_the_last_user_message() {
    let server = start(&options(1, 8)).unwrap();
    let body = json!({
        "model": "tang-poems",
        "messages": [
            {"role": "system", "content": "你是詩人"},
            {"role": "user", "content": "寫一首關於秋夜思鄉的詩"}
        ],
        "n": 2,
        "seed": 5
    });
    let (status, v, _) = post(&server, "/v1/chat/completions", &body.to_string(), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["model"], "tang-poems");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for c in choices {
        assert_eq!(c["message"]["role"], "assistant");
        let poem = c["message"]["content"].as_str().unwrap();
        // 七絕 by default, holding the message's words of verse.
        assert!(poem.contains("秋夜") && poem.contains("思鄉"), "{poem}");
        assert_eq!(
            poem.chars().filter(|c| "，。".contains(*c)).count(),
            4,
            "{poem}"
        );
        assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    }
    // A message without words to write about is a 400 that says so.
    let (status, v, _) = post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "   "}]}).to_string(),
        None,
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("messages"),
        "{v}"
    );
    server.stop().unwrap();
}

#[test]
fn stream_chunks_carry_the_answers_id_and_model_and_end_with_a_finish_reason() {
    let server = start(&options(1, 8)).unwrap();
    for (path, body) in [
        (
            "/v1/completions",
            json!({"prompt": "月", "max_tokens": 6, "seed": 1, "stream": true}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "春江"}], "seed": 1, "stream": true}),
        ),
    ] {
        let data = sse_data(&server, path, &body);
        assert_eq!(data.last().unwrap(), "[DONE]", "{path}: {data:?}");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(chunks.len() >= 2, "{path}: {data:?}");
        let id = chunks[0]["id"].as_str().unwrap();
        assert!(!id.is_empty());
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == id && c["model"] == "tang-poems"),
            "{path}: {data:?}"
        );
        let finishes: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finishes.len(), 1, "{path}: {data:?}");
        assert!(
            chunks.last().unwrap()["choices"][0]["finish_reason"].is_string(),
            "{path}: the last chunk says why it ended: {data:?}"
        );
    }
    server.stop().unwrap();
}

#[test]
fn the_official_openai_python_client_lists_models_completes_and_chats() {
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        // `.ci/run` installs it; a machine without Python or PyPI cannot run this.
        eprintln!(
            "SKIPPED: python3 with the `openai` package is not installed (pip install openai)"
        );
        return;
    }
    let server = start(&options(1, 8)).unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/serve/openai_client_check.py"
        ))
        .arg(format!("http://{}", server.addr))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "models",
        "completion",
        "completion stream",
        "chat",
        "chat stream",
    ] {
        assert!(
            said.contains(&format!("\"check\": \"{check}\", \"ok\": true")),
            "{said}"
        );
    }
    server.stop().unwrap();
}
