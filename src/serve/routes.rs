//! The HTTP routes: request parsing with limits and clear errors, the token
//! check, and turning engine events into JSON or server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::guard::token_matches;
use super::pool::{PoolError, Ticket};
use super::{AppState, MAX_BODY_BYTES};
use crate::engine::{DeviceChoice, ErrorKind, Event, GenerateJob, Prompt};
use crate::generate::{Generation, SamplingParams, MAX_VARIATIONS};
use crate::poetry::forms::PoemForm;
use crate::poetry::{check_in_form, Repeats, RulesMode, TemplateStart, VerseRules};

/// The longest prompt accepted, in characters.
const MAX_PROMPT_CHARS: usize = 64;
/// The most tokens one request may ask for.
const MAX_TOKENS: usize = 256;

/// An error answer: `{"error": {"kind", "message"}}` with its status.
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_request",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 503 gets its Retry-After from the admission layer.
        let body = Json(json!({"error": {"kind": self.kind, "message": self.message}}));
        (self.status, body).into_response()
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let (status, kind) = match e {
            PoolError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            PoolError::Start { .. } | PoolError::Stopped { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "engine")
            }
        };
        Self {
            status,
            kind,
            message: e.to_string(),
        }
    }
}

/// The bearer token, when the server has one.
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| token_matches(g, token)) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "unauthorized",
            message: "this server needs `Authorization: Bearer <token>` (the token from its --token-file)".into(),
        })
    }
}

/// `POST /v1/poems`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoemRequest {
    /// The poem's first characters, or lines kept from an earlier poem with
    /// their marks (`"春風入律作花時，"`): the rest is written after them.
    pub(super) prompt: String,
    #[serde(default)]
    pub(super) form: Option<String>,
    /// 1 to 4 words every poem holds where they keep the rules (`["秋江",
    /// "夜雨"]`, simplified or traditional); a sentence among them is reduced
    /// to the words of verse in it.
    #[serde(default)]
    pub(super) keywords: Option<Vec<String>>,
    /// "strict" (the default: rhyme and tones of the regulated forms, a
    /// 詞's rhymes and tones as its tune has them) or "off" (the form alone).
    #[serde(default)]
    pub(super) rules: Option<String>,
    /// A 平聲 group or a character in it ("東", "紅"); for a 詞 any group
    /// or character ("月"), whose 部 its first rhyme keeps.
    #[serde(default)]
    pub(super) rhyme: Option<String>,
    #[serde(default)]
    pub(super) template: Option<String>,
    /// "guard" (the default: no character three times in a row, no line
    /// twice, no character more than twice in a poem) or "allow".
    #[serde(default)]
    pub(super) repeats: Option<String>,
    #[serde(default)]
    pub(super) variations: Option<usize>,
    #[serde(default)]
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) temperature: Option<f64>,
    #[serde(default)]
    pub(super) top_k: Option<usize>,
    #[serde(default)]
    pub(super) top_p: Option<f64>,
    #[serde(default)]
    pub(super) max_tokens: Option<usize>,
    #[serde(default)]
    pub(super) stream: bool,
}

/// The body as JSON of type `T`, or a 400 that says what is wrong.
pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    // Every request body is one JSON object; anything else (an array, a
    // string) would otherwise be read as a struct's fields in order and
    // named `[0]`.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad(
            "the request body is not valid: give one JSON object, such as {\"prompt\": \"春\"}",
        ));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        // The path is "." when the body as a whole is wrong (not JSON, a
        // missing field); else the field the bad value is in (an unknown
        // field names itself).
        let field = e.path().to_string();
        let field = if field == "." {
            String::new()
        } else {
            format!("field `{field}`: ")
        };
        ApiError::bad(format!(
            "the request body is not valid: {field}{}",
            e.inner()
        ))
    })?;
    // Nothing but whitespace may follow the object.
    json.end()
        .map_err(|e| ApiError::bad(format!("the request body is not valid: {e}")))?;
    Ok(value)
}

/// What the request asks for, checked.
pub(super) struct Checked {
    prompt: String,
    form: PoemForm,
    verse: VerseRules,
    variations: usize,
    max_tokens: usize,
    sampling: SamplingParams,
    pub(super) stream: bool,
}

/// A setting given by name (`value`, or `default` when absent), parsed; a bad
/// name is a 400 with the parser's message.
fn setting<T: std::str::FromStr<Err = String>>(
    value: Option<&str>,
    default: &str,
) -> Result<T, ApiError> {
    value.unwrap_or(default).parse().map_err(ApiError::bad)
}

pub(super) fn check_request(r: PoemRequest) -> Result<Checked, ApiError> {
    let prompt = r.prompt.trim().to_string();
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::bad(format!(
            "invalid setting `prompt`: {} characters; at most {MAX_PROMPT_CHARS}",
            prompt.chars().count()
        )));
    }
    let form: PoemForm = r
        .form
        .as_deref()
        .unwrap_or("qijue")
        .parse()
        .map_err(|e: crate::poetry::forms::FormParseError| ApiError::bad(e.to_string()))?;
    let mode: RulesMode = setting(r.rules.as_deref(), "strict")?;
    let template: TemplateStart = setting(r.template.as_deref(), "any")?;
    let repeats: Repeats = setting(r.repeats.as_deref(), "guard")?;
    let keywords = crate::poetry::keywords::parse_theme(&r.keywords.unwrap_or_default().join(" "))
        .map_err(|e| ApiError::bad(format!("invalid setting `keywords`: {e}")))?;
    let verse = VerseRules {
        mode,
        rhyme: r.rhyme,
        template,
        repeats,
        keywords: keywords.words,
        ..VerseRules::default()
    };
    verse
        .check_rhyme_for(&form)
        .map_err(|e| ApiError::bad(format!("invalid setting `rhyme`: {e}")))?;
    let variations = r.variations.unwrap_or(1);
    if !(1..=MAX_VARIATIONS).contains(&variations) {
        return Err(ApiError::bad(format!(
            "invalid setting `variations`: {variations}; give 1 to {MAX_VARIATIONS}"
        )));
    }
    let max_tokens = r.max_tokens.unwrap_or(80);
    if !(1..=MAX_TOKENS).contains(&max_tokens) {
        return Err(ApiError::bad(format!(
            "invalid setting `max_tokens`: {max_tokens}; give 1 to {MAX_TOKENS}"
        )));
    }
    let d = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: r.temperature.unwrap_or(d.temperature),
        top_k: r.top_k.unwrap_or(d.top_k),
        top_p: r.top_p.unwrap_or(d.top_p),
        seed: r.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |t| t.as_nanos() as u64 % 1_000_000_007)
        }),
        ..d
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(Checked {
        prompt,
        form,
        verse,
        variations,
        max_tokens,
        sampling,
        stream: r.stream,
    })
}

/// One poem of the answer.
#[derive(Serialize)]
struct PoemAnswer {
    text: String,
    ids: Vec<u32>,
    seed: u64,
    stop: Option<crate::generate::StopReason>,
    verdict: Option<String>,
    relaxed: Vec<crate::poetry::Relaxed>,
}

/// The folder name of the model that writes `c` (the bundled 詞 model for a
/// tune asked of the bundled model), as it is when the request is queued.
fn writing_model(state: &AppState, c: &Checked) -> String {
    let model = crate::store::model_for_form(&state.pool.model(), &c.form);
    model.file_name().map_or_else(
        || model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn answer(c: &Checked, model: &str, device: DeviceChoice, g: &Generation) -> serde_json::Value {
    let echoed = crate::generate::echoed_prompt(&c.prompt, &c.form);
    let poems: Vec<PoemAnswer> = g
        .variations
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let text = format!("{echoed}{}", v.text);
            let report = check_in_form(&text, &c.form);
            PoemAnswer {
                verdict: report.form.is_some().then_some(report.verdict),
                text,
                ids: v.ids.clone(),
                seed: c.sampling.seed.wrapping_add(i as u64),
                stop: v.stop,
                relaxed: v.relaxed.clone(),
            }
        })
        .collect();
    json!({
        "poems": poems,
        "keywords": c.verse.keywords,
        "model": model,
        "device": device.to_string(),
        "timing": {
            "first_token_ms": g.timings.first_token_ms,
            "decode_ms": g.timings.decode_ms,
            "tokens": g.generated_tokens(),
            "batch_rows": g.batch_rows,
        },
    })
}

fn engine_error(kind: ErrorKind, message: String) -> ApiError {
    let (status, k) = match kind {
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        ErrorKind::DoesNotFit | ErrorKind::OutOfMemory => {
            (StatusCode::SERVICE_UNAVAILABLE, "out_of_memory")
        }
        ErrorKind::BadModel => (StatusCode::INTERNAL_SERVER_ERROR, "bad_model"),
        ErrorKind::Device => (StatusCode::INTERNAL_SERVER_ERROR, "device"),
        ErrorKind::Internal | ErrorKind::Generation => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    ApiError {
        status,
        kind: k,
        message,
    }
}

/// Queues the request, then waits for it to start (its first token or its
/// answer) for at most `--queue-timeout`; one that cannot start by then is
/// withdrawn (dropping the ticket cancels it) and answered 503.
pub(super) async fn submit(state: &AppState, c: &Checked) -> Result<Ticket, ApiError> {
    let mut ticket = queue(state, c)?;
    let Some(limit) = state.queue_timeout else {
        return Ok(ticket);
    };
    if ticket.started_within(limit).await {
        return Ok(ticket);
    }
    state
        .pool
        .counters
        .timed_out_in_queue
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Err(ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "queue_timeout",
        message: format!(
            "the request could not start within the queue timeout ({} s; --queue-timeout) behind {} others; try again after Retry-After",
            limit.as_secs_f64(),
            state.pool.waiting().saturating_sub(1)
        ),
    })
}

fn queue(state: &AppState, c: &Checked) -> Result<Ticket, ApiError> {
    Ok(state.pool.submit(|id, spec| GenerateJob {
        id,
        spec,
        prompt: Prompt::Text(c.prompt.clone()),
        form: c.form.clone(),
        variations: c.variations,
        max_new_tokens: c.max_tokens,
        sampling: c.sampling.clone(),
        verse: c.verse.clone(),
    })?)
}

/// The body, or a JSON error (413 for one over the size limit).
pub(super) fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        status: e.status(),
        kind: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        },
        message: format!(
            "the request body could not be read: {e} (at most {MAX_BODY_BYTES} bytes)"
        ),
    })
}

pub(super) async fn poems(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match poems_inner(&state, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn poems_inner(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    authorize(state, headers)?;
    let checked = check_request(parse(body)?)?;
    let model = writing_model(state, &checked);
    let mut ticket = submit(state, &checked).await?;
    if checked.stream {
        return Ok(stream(Arc::clone(state), ticket, checked, model).into_response());
    }
    let generation = await_generation(state, &mut ticket).await?;
    Ok(Json(answer(&checked, &model, ticket.device, &generation)).into_response())
}

/// Waits for the request's result. Dropping this future (the client went
/// away) drops the ticket, which cancels the request between tokens.
pub(super) async fn await_generation(
    state: &AppState,
    ticket: &mut Ticket,
) -> Result<Generation, ApiError> {
    tokio::select! {
        answer = generation_of(ticket) => answer,
        () = state.lifecycle.aborting() => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "shutting_down",
            message: super::shutdown::ABORTED_MESSAGE.into(),
        }),
    }
}

async fn generation_of(ticket: &mut Ticket) -> Result<Generation, ApiError> {
    while let Some(event) = ticket.next_event().await {
        match event {
            Event::Done { generation, .. } => {
                ticket.answered();
                return Ok(generation);
            }
            Event::Error { kind, message, .. } => {
                ticket.answered();
                return Err(engine_error(kind, message));
            }
            _ => {}
        }
    }
    ticket.answered();
    Err(engine_error(
        ErrorKind::Internal,
        "the engine stopped before answering".into(),
    ))
}

/// A stream of server-sent events for `ticket`: `to_sse` turns each engine
/// event into one (and says whether it is the last), or skips it. A client
/// that goes away ends the pump, and dropping the ticket cancels the request.
pub(super) fn sse_pump(
    state: Arc<AppState>,
    ticket: Ticket,
    to_sse: impl Fn(Event, DeviceChoice) -> Option<(Vec<SseEvent>, bool)> + Send + 'static,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut ticket = ticket;
        loop {
            let event = tokio::select! {
                event = ticket.next_event() => event,
                // The drain timeout passed: the stream ends with why.
                () = state.lifecycle.aborting() => Some(Event::Error {
                    request: Some(ticket.id),
                    kind: ErrorKind::Internal,
                    message: super::shutdown::ABORTED_MESSAGE.into(),
                    partial: None,
                    fit: None,
                }),
            };
            let Some(event) = event else {
                break;
            };
            let Some((sse, last)) = to_sse(event, ticket.device) else {
                continue;
            };
            if last {
                ticket.answered();
            }
            if sse.into_iter().any(|e| tx.send(Ok(e)).is_err()) || last {
                break;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
}

/// Server-sent events: `token` events as the poem is written, then `done`
/// with the whole answer (or `error`).
fn stream(
    state: Arc<AppState>,
    ticket: Ticket,
    checked: Checked,
    model: String,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    sse_pump(state, ticket, move |event, device| match event {
        Event::Token {
            variation, text, ..
        } => Some((
            vec![SseEvent::default()
                .event("token")
                .data(json!({"variation": variation, "text": text}).to_string())],
            false,
        )),
        Event::Done { generation, .. } => Some((
            vec![SseEvent::default()
                .event("done")
                .data(answer(&checked, &model, device, &generation).to_string())],
            true,
        )),
        Event::Error { message, .. } => Some((
            vec![SseEvent::default()
                .event("error")
                .data(json!({"message": message}).to_string())],
            true,
        )),
        _ => None,
    })
}

pub(super) async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let gpus: Vec<crate::meter::GpuMemory> = state
        .meter
        .as_ref()
        .and_then(|m| m.lock().ok())
        .map(|m| (0..m.device_count()).filter_map(|i| m.read(i)).collect())
        .unwrap_or_default();
    Json(json!({
        "model": state.pool.model().display().to_string(),
        "engines": state.pool.status(),
        "swap": state.pool.swap_outcome(),
        "gpus": gpus,
        "process_rss_bytes": crate::meter::process_memory().map(|m| m.rss_bytes),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    #[serde(default)]
    device: Option<String>,
}

pub(super) async fn release(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<Response, ApiError> {
        authorize(&state, &headers)?;
        let body = body_or_error(body)?;
        let req: ReleaseRequest = if body.is_empty() {
            ReleaseRequest { device: None }
        } else {
            parse(&body)?
        };
        let device = match req.device.as_deref() {
            None | Some("all") => None,
            Some(d) => {
                let d: DeviceChoice = d
                    .parse()
                    .map_err(|e: crate::device::DeviceError| ApiError::bad(e.to_string()))?;
                if !state.pool.has_device(d) {
                    return Err(ApiError::bad(format!(
                        "invalid setting `device`: {d} is not one of this server's devices"
                    )));
                }
                Some(d)
            }
        };
        Ok(Json(json!({"released": state.pool.release(device)})).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelRequest {
    /// A folder under `--models-dir`, by its path relative to it.
    model: String,
}

/// The model folder `name` names under `dir`, refusing anything that leaves
/// it (`..`, absolute paths, symlinks pointing out).
fn model_under(dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf, ApiError> {
    let relative = std::path::Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ApiError::bad(format!(
            "invalid setting `model`: {name} must be a folder name under the server's --models-dir (no absolute paths, no ..)"
        )));
    }
    let resolved = std::fs::canonicalize(dir.join(relative))
        .map_err(|e| ApiError::bad(format!("invalid setting `model`: {name}: {e}")))?;
    if !resolved.starts_with(dir) {
        return Err(ApiError::bad(format!(
            "invalid setting `model`: {name} leads outside --models-dir (a symlink?)"
        )));
    }
    if !resolved.join("config.json").is_file() {
        return Err(ApiError::bad(format!(
            "invalid setting `model`: {name} has no config.json; give a GPT-2 model folder"
        )));
    }
    Ok(resolved)
}

pub(super) async fn swap_model(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<Response, ApiError> {
        authorize(&state, &headers)?;
        let req: ModelRequest = parse(&body_or_error(body)?)?;
        let Some(dir) = &state.models_dir else {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                kind: "forbidden",
                message: "this server takes no model swaps: start it with --models-dir DIR".into(),
            });
        };
        let model = model_under(dir, &req.model)?;
        let asked = state.pool.swap(model.clone());
        Ok(Json(json!({"model": model.display().to_string(), "swapping": asked})).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/models`: the OpenAI list shape, naming the model requests use.
pub(super) async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let name = state
        .pool
        .model()
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Json(json!({
        "object": "list",
        "data": [{"id": name, "object": "model", "owned_by": "versifier"}],
    }))
    .into_response()
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    super::metrics::metrics(State(state)).await
}
