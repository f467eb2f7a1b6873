//! Versifier: a desktop app that writes poems with a local GPT-2 and gives the
//! GPU back when it is done.
//!
//! Data flows one way: `ui` sends commands to `engine`; `engine` sends events
//! back; `meter` sends memory snapshots. Only `engine` opens or drops devices.

pub mod device;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod meter;
pub mod model;
pub mod poetry;
pub mod serve;
pub mod store;
pub mod train;
#[cfg(feature = "gui")]
pub mod ui;

/// Bytes in a mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// Whole MiB in `bytes` (rounded down), for messages.
pub fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

/// MiB in `bytes` as a fraction, for figures and plots.
pub fn mib_f64(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// An error's text without the backtrace frames candle appends to some of its
/// messages: what a person reads should say what is wrong, not where.
pub fn without_backtrace(text: &str) -> String {
    let frame = |l: &str| {
        let t = l.trim_start();
        let digits = t.chars().take_while(char::is_ascii_digit).count();
        (digits > 0 && t[digits..].starts_with(": ") && l.starts_with(' '))
            || (t.starts_with("at ") && l.starts_with("    "))
    };
    text.lines()
        .filter(|l| !frame(l))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
}

/// An error and its causes as one line, each said once: a cause whose text
/// the message already contains (`{path}: {source}` variants) is not repeated,
/// and backtrace frames are dropped.
pub fn error_chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = e.source();
    }
    without_backtrace(&out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_os_error_inside_a_path_error_is_said_once() {
        let e = crate::store::StoreError::Io {
            path: "/x/settings.json".into(),
            source: std::io::Error::from_raw_os_error(13),
        };
        let text = super::error_chain_text(&e);
        assert_eq!(text.matches("os error 13").count(), 1, "{text}");
        assert!(text.starts_with("/x/settings.json: "), "{text}");
        #[derive(Debug, thiserror::Error)]
        #[error("loading the model")]
        struct Outer(#[source] std::io::Error);
        let text = super::error_chain_text(&Outer(std::io::Error::other("disk on fire")));
        assert_eq!(text, "loading the model: disk on fire");
    }

    #[test]
    fn backtrace_frames_are_dropped_and_the_message_kept() {
        let text = "bad op-code 140\n   0: candle_core::error::Error::bt\n   1: main\n             at ./csu/libc-start.c:360:3\n  12: _start";
        assert_eq!(super::without_backtrace(text), "bad op-code 140");
        assert_eq!(
            super::without_backtrace("line one\nline two: 3"),
            "line one\nline two: 3"
        );
    }
}
