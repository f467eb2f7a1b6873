//! `versifier serve`: the engine over local HTTP; see `versifier::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use versifier::engine::{DeviceChoice, Precision};
use versifier::serve::{run_until_signal, ServeOptions, Stopped};

use super::{model_or_bundled, DeviceArg};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Off loopback a bearer token is required.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// One engine per entry: auto, cpu, cuda:N (cpu,cpu gives two CPU engines).
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    devices: Vec<DeviceArg>,
    /// Checkpoint folder (default: the bundled Tang model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Release an engine after this long idle: 90s, 5m, 1h, or never.
    #[arg(long, default_value = "5m")]
    idle: String,
    /// Requests accepted per engine before answering 503 with Retry-After.
    #[arg(long, default_value_t = versifier::serve::DEFAULT_MAX_QUEUE)]
    max_queue: usize,
    /// Folder whose model folders `POST /v1/model` may switch to (no swaps without it).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// File holding the bearer token clients must send (never the token itself
    /// on the command line); or set VERSIFIER_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// On SIGTERM, SIGINT or SIGHUP: how long requests in flight may take to
    /// be answered before the process exits anyway (90s, 5m, or never to wait
    /// for them all); a second signal exits at once.
    #[arg(long, default_value = "30s")]
    drain_timeout: String,
    /// How long a request may wait in the queue to start before it is
    /// answered 503 with a Retry-After from the queue's drain rate (90s, 5m,
    /// or never).
    #[arg(long, default_value = "30s")]
    queue_timeout: String,
    /// Connections open at once; more wait to be accepted.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection stays open (10s, 1m).
    #[arg(long, default_value = "10s")]
    header_timeout: String,
    /// How long a client may take to send a request's body (30s, 1m).
    #[arg(long, default_value = "30s")]
    body_timeout: String,
    /// The one web origin (scheme://host[:port]) whose pages may call the
    /// API; without it no page can read an answer (no CORS).
    #[arg(long, value_name = "ORIGIN")]
    allow_origin: Option<String>,
}

/// A timeout that must be finite.
fn finite(setting: &str, text: &str) -> Result<Duration> {
    match duration(setting, text)? {
        Some(d) if !d.is_zero() => Ok(d),
        _ => bail!(
            "invalid setting `{setting}`: `{text}`; give a length above zero such as 10s or 1m"
        ),
    }
}

/// `--allow-origin`: a web origin, `scheme://host[:port]`, nothing after.
fn origin(text: &str) -> Result<axum::http::HeaderValue> {
    let t = text.trim();
    let shaped = (t.starts_with("http://") || t.starts_with("https://"))
        && !t
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .contains('/')
        && t.len() > "https://".len();
    if t == "*" || !shaped {
        bail!("invalid setting `allow-origin`: `{text}`; give one origin such as https://poems.example.org (scheme and host, no path; `*` is not allowed)");
    }
    axum::http::HeaderValue::from_str(t).with_context(|| {
        format!("invalid setting `allow-origin`: `{text}` is not a valid header value")
    })
}

/// `90s`, `5m`, `1h`, a number of seconds, or `never`.
pub(super) fn duration(setting: &str, text: &str) -> Result<Option<Duration>> {
    let t = text.trim();
    if t == "never" {
        return Ok(None);
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().with_context(|| {
        format!("invalid setting `{setting}`: `{text}`; give 90s, 5m, 1h or never")
    })?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("invalid setting `{setting}`: `{text}`; give 90s, 5m, 1h or never"),
    };
    Ok(Some(Duration::from_secs(secs)))
}

pub fn run_serve(args: ServeArgs) -> Result<()> {
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the token file", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("VERSIFIER_TOKEN").ok(),
    };
    let devices: Vec<DeviceChoice> = args.devices.iter().map(|d| d.resolve()).collect();
    let opts = ServeOptions {
        bind: args.bind,
        devices,
        model: model_or_bundled(args.model)?,
        precision: args.dtype,
        idle: duration("idle", &args.idle)?,
        max_queue: args.max_queue,
        queue_timeout: duration("queue-timeout", &args.queue_timeout)?,
        token,
        models_dir: args.models_dir,
        limits: versifier::serve::connections::ConnectionLimits {
            header_read: finite("header-timeout", &args.header_timeout)?,
            body_read: finite("body-timeout", &args.body_timeout)?,
            max_connections: if args.max_connections == 0 {
                bail!("invalid setting `max-connections`: 0; give at least 1 (default 512)")
            } else {
                args.max_connections
            },
        },
        allow_origin: args.allow_origin.as_deref().map(origin).transpose()?,
    };
    let drain = duration("drain-timeout", &args.drain_timeout)?.unwrap_or(Duration::MAX);
    let stopped = run_until_signal(&opts, drain, |addr| {
        eprintln!("versifier serve: listening on http://{addr} (Ctrl+C or SIGTERM stops)");
    })?;
    match stopped {
        Stopped::Drained => Ok(()),
        Stopped::DrainTimedOut => {
            eprintln!(
                "versifier serve: connections still open after the drain timeout ({}); exiting",
                args.drain_timeout
            );
            std::process::exit(0)
        }
        Stopped::Interrupted => {
            eprintln!("versifier serve: second signal; exiting without waiting");
            std::process::exit(130)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn idle_durations_parse_with_units_and_never() {
        assert_eq!(
            super::duration("idle", "90s").unwrap(),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            super::duration("idle", "5m").unwrap(),
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(super::duration("idle", "never").unwrap(), None);
        assert!(super::duration("idle", "5 weeks").is_err());
    }
}
