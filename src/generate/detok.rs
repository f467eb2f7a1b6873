//! Streaming detokenization: token bytes in, complete UTF-8 text out. A CJK
//! character or an emoji split across byte-level tokens is held back until its
//! last byte arrives, so a half-made character is never shown.

/// Turns a stream of byte chunks into complete UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token's bytes and returns the text that is now complete (maybe empty).
    /// Bytes that can never become valid UTF-8 come out as U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid by construction.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: whatever is still pending comes out (as U+FFFD if incomplete).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_character_split_across_tokens_is_emitted_whole() {
        let bytes = "春".as_bytes(); // 3 bytes
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&bytes[..1]), "");
        assert_eq!(s.push(&bytes[1..2]), "");
        assert_eq!(s.push(&bytes[2..]), "春");
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn emoji_split_with_ascii_around_it() {
        let text = "a😀b";
        let b = text.as_bytes();
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        for chunk in b.chunks(2) {
            let piece = s.push(chunk);
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_and_stream_recovers() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[0xFF, b'x']), "\u{FFFD}x");
        assert_eq!(s.push("月".as_bytes()), "月");
    }

    #[test]
    fn finish_flushes_incomplete_tail() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&"春".as_bytes()[..2]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}
