//! Versifier: a desktop app that writes poems with a local GPT-2 and gives the
//! GPU back when it is done.
//!
//! Data flows one way: `ui` sends commands to `engine`; `engine` sends events
//! back; `meter` sends memory snapshots. Only `engine` opens or drops devices.

pub mod engine;
pub mod generate;
pub mod meter;
pub mod model;
pub mod store;
pub mod train;
#[cfg(feature = "gui")]
pub mod ui;

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

#[cfg(test)]
mod tests {
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
