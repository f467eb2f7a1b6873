//! The OpenAI-compatible subset, so existing clients (the official `openai`
//! Python package among them) work unchanged:
//!
//! - `POST /v1/completions`: free continuation of `prompt` (no form, no
//!   rules), `n` variations.
//! - `POST /v1/chat/completions`: a poem about the last user message (its
//!   words of verse become the poem's keywords), in `form` (an extension
//!   field; 七絕 by default), `n` poems.
//!
//! Both stream too (`"stream": true`): chunks that each carry the answer's
//! `id`, `created` and `model`, a last chunk per choice with its
//! `finish_reason`, then `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::pool::Ticket;
use super::routes::{
    authorize, await_generation, body_or_error, check_request, parse, sse_pump, submit, ApiError,
    PoemRequest,
};
use super::AppState;
use crate::engine::Event;
use crate::generate::{Generation, StopReason, Variation, MAX_VARIATIONS};

/// What an answer says about itself, the same in every chunk of a stream.
struct AnswerHead {
    id: String,
    created: u64,
    model: String,
}

impl AnswerHead {
    fn new(state: &AppState, prefix: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("{prefix}{}", super::probes::completion_id(created)),
            created,
            model: state
                .pool
                .model()
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        }
    }
}

impl AnswerHead {
    /// The whole (not streamed) answer.
    fn answer(&self, object: &str, choices: Vec<Value>, g: &Generation) -> Response {
        Json(json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(g),
        }))
        .into_response()
    }
}

/// The request's body as `T`, once the token is checked; `n` checked too.
fn accepted<T: serde::de::DeserializeOwned + HasN>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    authorize(state, headers)?;
    let r: T = parse(&body_or_error(body)?)?;
    check_n(r.n())?;
    Ok(r)
}

/// Requests with OpenAI's `n`.
trait HasN {
    fn n(&self) -> Option<usize>;
}

/// Queues `checked` and answers it in `flavour`'s shape: as a stream from
/// its first token, or whole.
async fn write(
    state: &Arc<AppState>,
    checked: &super::routes::Checked,
    flavour: Flavour,
) -> Result<Response, ApiError> {
    let head = AnswerHead::new(state, flavour.id_prefix());
    let mut ticket = submit(state, checked).await?;
    if checked.stream {
        return Ok(openai_stream(Arc::clone(state), ticket, head, flavour).into_response());
    }
    let g = await_generation(state, &mut ticket).await?;
    let choices: Vec<Value> = g
        .variations
        .iter()
        .enumerate()
        .map(|(i, v)| flavour.whole_choice(i, v))
        .collect();
    Ok(head.answer(flavour.object(), choices, &g))
}

/// OpenAI's `finish_reason`: `length` when the token budget or the context
/// ended it, else `stop`.
fn finish_reason(v: &Variation) -> &'static str {
    match v.stop {
        Some(StopReason::MaxTokens | StopReason::ContextFull) => "length",
        _ => "stop",
    }
}

fn usage(g: &Generation) -> Value {
    let (prompt, completion) = (g.prompt_ids.len(), g.generated_tokens());
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// `n` as the client wrote it, checked (it becomes `variations`).
fn check_n(n: Option<usize>) -> Result<(), ApiError> {
    match n.filter(|n| !(1..=MAX_VARIATIONS).contains(n)) {
        Some(n) => Err(ApiError::bad(format!(
            "invalid setting `n`: {n}; give 1 to {MAX_VARIATIONS}"
        ))),
        None => Ok(()),
    }
}

/// Which API an answer speaks.
#[derive(Clone, Copy)]
enum Flavour {
    Completion,
    Chat,
}

impl Flavour {
    fn id_prefix(self) -> &'static str {
        match self {
            Self::Completion => "",
            Self::Chat => "chat",
        }
    }

    fn object(self) -> &'static str {
        match self {
            Self::Completion => "text_completion",
            Self::Chat => "chat.completion",
        }
    }

    /// One poem of a whole answer.
    fn whole_choice(self, index: usize, v: &Variation) -> Value {
        match self {
            Self::Completion => {
                json!({"text": v.text, "index": index, "logprobs": null, "finish_reason": finish_reason(v)})
            }
            Self::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": v.text},
                "logprobs": null,
                "finish_reason": finish_reason(v),
            }),
        }
    }
}

/// OpenAI-style streaming: a chunk per token, a last chunk per choice with
/// its `finish_reason` (and the usage), then `[DONE]`.
fn openai_stream(
    state: Arc<AppState>,
    ticket: Ticket,
    head: AnswerHead,
    flavour: Flavour,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let object = match flavour {
        Flavour::Completion => "text_completion",
        Flavour::Chat => "chat.completion.chunk",
    };
    let chunk = move |choices: Value| {
        SseEvent::default().data(
            json!({"id": head.id, "object": object, "created": head.created, "model": head.model, "choices": choices})
                .to_string(),
        )
    };
    let choice = move |index: usize, text: &str, finish: Option<&str>| match flavour {
        Flavour::Completion => {
            json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
        }
        Flavour::Chat => {
            let delta = if finish.is_some() {
                json!({})
            } else {
                json!({"role": "assistant", "content": text})
            };
            json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
    };
    sse_pump(state, ticket, move |event, _| match event {
        Event::Token {
            variation, text, ..
        } => Some((vec![chunk(json!([choice(variation, &text, None)]))], false)),
        Event::Done { generation, .. } => {
            let mut last: Vec<SseEvent> = generation
                .variations
                .iter()
                .enumerate()
                .map(|(i, v)| chunk(json!([choice(i, "", Some(finish_reason(v)))])))
                .collect();
            last.push(SseEvent::default().data("[DONE]"));
            Some((last, true))
        }
        Event::Error { message, .. } => Some((
            vec![SseEvent::default()
                .data(json!({"error": {"kind": "engine", "message": message}}).to_string())],
            true,
        )),
        _ => None,
    })
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: String,
    /// Accepted and ignored (the server has one model); named in the answer.
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

impl HasN for CompletionRequest {
    fn n(&self) -> Option<usize> {
        self.n
    }
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: CompletionRequest = accepted(&state, &headers, body)?;
    let checked = check_request(PoemRequest {
        prompt: r.prompt,
        form: Some("free".into()),
        keywords: None,
        rules: Some("off".into()),
        rhyme: None,
        template: None,
        // A plain language model's completion, as OpenAI clients expect.
        repeats: Some("allow".into()),
        variations: r.n,
        seed: r.seed,
        temperature: r.temperature,
        top_k: Some(0),
        top_p: r.top_p,
        max_tokens: r.max_tokens.or(Some(16)),
        stream: r.stream,
    })?;
    write(&state, &checked, Flavour::Completion).await
}

/// One message of a chat.
#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    /// A string, or a list of parts of which the `text` ones are read.
    #[serde(default)]
    content: Option<Value>,
}

impl ChatMessage {
    fn text(&self) -> String {
        match &self.content {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }
}

/// `POST /v1/chat/completions`: OpenAI's fields, and `form` and `rules` as
/// `/v1/poems` has them (through the client's extra body).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    form: Option<String>,
    #[serde(default)]
    rules: Option<String>,
}

impl HasN for ChatRequest {
    fn n(&self) -> Option<usize> {
        self.n
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: ChatRequest = accepted(&state, &headers, body)?;
    let Some(asked) = r
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(ChatMessage::text)
        .filter(|t| !t.trim().is_empty())
    else {
        return Err(ApiError::bad(
            "invalid setting `messages`: no user message with text; the last one says what the poem is about (e.g. 秋夜 思鄉)",
        ));
    };
    let checked = check_request(PoemRequest {
        prompt: String::new(),
        form: r.form.or(Some("qijue".into())),
        keywords: Some(vec![asked]),
        rules: r.rules,
        rhyme: None,
        template: None,
        repeats: None,
        variations: r.n,
        seed: r.seed,
        temperature: r.temperature,
        top_k: None,
        top_p: r.top_p,
        max_tokens: r.max_completion_tokens.or(r.max_tokens),
        stream: r.stream,
    })
    .map_err(|mut e| {
        // The keywords are the client's message here.
        e.message = e
            .message
            .replace("invalid setting `keywords`", "the last user message");
        e
    })?;
    write(&state, &checked, Flavour::Chat).await
}
