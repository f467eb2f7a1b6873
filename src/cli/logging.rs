//! Logging: stderr at `--log-level`, and a daily-rotated file.

use std::path::Path;

/// Logs to stderr at `--log-level`, and to a daily-rotated file (7 kept) at
/// `info` or the finer of the two. Returns a notice when the file cannot be used.
pub fn init_logging(level: &str, dir: Option<&Path>) -> Option<String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let mut note = None;
    // A bare word that is not a level would parse as a target name and log
    // nothing useful, so only levels and `target=level` directives pass.
    let known = ["off", "error", "warn", "info", "debug", "trace"];
    let looks_valid = known.contains(&level.to_ascii_lowercase().as_str()) || level.contains('=');
    let parsed = if looks_valid {
        EnvFilter::try_new(level).ok()
    } else {
        None
    };
    let stderr_filter = parsed.unwrap_or_else(|| {
        note = Some(format!(
            "--log-level `{level}` is not a level (error, warn, info, debug, trace); using warn"
        ));
        EnvFilter::new("warn")
    });
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(stderr_filter);
    let dir = match dir {
        Some(d) if d.as_os_str() == "none" => None,
        Some(d) => Some(d.to_path_buf()),
        None => versifier::store::log_dir(),
    };
    let file = dir.and_then(|dir| {
        let built = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                tracing_appender::rolling::Builder::new()
                    .rotation(tracing_appender::rolling::Rotation::DAILY)
                    .filename_prefix("versifier")
                    .filename_suffix("log")
                    .max_log_files(7)
                    .build(&dir)
                    .map_err(|e| e.to_string())
            });
        match built {
            Ok(appender) => {
                let file_level = match level {
                    "debug" | "trace" => level,
                    _ => "info",
                };
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(appender)
                        .with_filter(EnvFilter::new(file_level)),
                )
            }
            Err(e) => {
                note = Some(format!(
                    "no log file: cannot write to {}: {e}",
                    dir.display()
                ));
                None
            }
        }
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "versifier started");
    note
}
