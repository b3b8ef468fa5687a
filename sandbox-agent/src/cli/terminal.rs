//! A workload's output on the operator's terminal: control characters shown, not obeyed.
//!
//! A workload's bytes relayed raw to a terminal can retitle the window, clear the screen,
//! move the cursor over earlier lines (hiding them) or, on some terminals, answer queries
//! into the operator's input. When our stdout (stderr) is a terminal, `logs`, `exec` and
//! `run` through the daemon escape every control character but newline and tab (`\x1b`,
//! `\r`, `\u{9b}`) and every byte that is not UTF-8 (`\xff`); `--raw` passes the bytes as
//! they are, and so does any output that is not a terminal (pipes, files).
use std::io::{IsTerminal as _, Write};

/// Where relayed output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One stream's relay to our own stdout or stderr.
pub struct Relay {
    stream: Stream,
    escape: bool,
    /// The start of a UTF-8 sequence that the next chunk completes.
    carry: Vec<u8>,
}

impl Relay {
    /// Escapes when the stream is a terminal, unless `raw`.
    pub fn new(stream: Stream, raw: bool) -> Self {
        let terminal = match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        };
        Self {
            stream,
            escape: terminal && !raw,
            carry: Vec::new(),
        }
    }

    /// Shows what is left of a UTF-8 sequence the stream ended in the middle of.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if self.carry.is_empty() {
            return Ok(());
        }
        let mut rest = Vec::new();
        for b in std::mem::take(&mut self.carry) {
            let _ = write!(rest, "\\x{b:02x}");
        }
        self.write_bytes(&rest)
    }

    /// Passes a chunk on at once.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let escaped;
        let bytes = if self.escape {
            escaped = escape(&mut self.carry, chunk);
            &escaped
        } else {
            chunk
        };
        self.write_bytes(bytes)
    }

    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self.stream {
            Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes)?;
                o.flush()
            }
            Stream::Stderr => {
                let mut e = std::io::stderr().lock();
                e.write_all(bytes)?;
                e.flush()
            }
        }
    }
}

/// `chunk` (after the `carry` of the previous one) with control characters and invalid
/// bytes escaped; an incomplete UTF-8 sequence at the end waits in `carry`.
pub fn escape(carry: &mut Vec<u8>, chunk: &[u8]) -> Vec<u8> {
    let mut input = std::mem::take(carry);
    input.extend_from_slice(chunk);
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input.as_slice();
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                escape_text(text, &mut out);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                escape_text(std::str::from_utf8(valid).unwrap_or_default(), &mut out);
                // No error length: cut short by the chunk's end, the rest (at most 3
                // bytes) waits for the next chunk.
                let Some(n) = e.error_len() else {
                    carry.extend_from_slice(after);
                    break;
                };
                for b in &after[..n] {
                    let _ = write!(out, "\\x{b:02x}");
                }
                rest = &after[n..];
            }
        }
    }
    out
}

fn escape_text(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c as u8),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // C1 controls: `\u{9b}` is CSI on terminals that take 8-bit controls.
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> String {
        let mut carry = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(escape(&mut carry, c));
        }
        out.extend(
            carry
                .iter()
                .flat_map(|b| format!("\\x{b:02x}").into_bytes()),
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn controls_are_shown_and_text_is_kept() {
        assert_eq!(
            all(&[b"\x1b]0;owned\x07\x1b[2Jok\r\n\tdone\x7f"]),
            "\\x1b]0;owned\\x07\\x1b[2Jok\\r\n\tdone\\x7f"
        );
        // 8-bit CSI (U+009B), and bytes that are not UTF-8.
        assert_eq!(all(&["a\u{9b}2J".as_bytes()]), "a\\u{9b}2J");
        assert_eq!(all(&[b"\xff\xfe!"]), "\\xff\\xfe!");
        // Multi-byte characters survive a split across chunks.
        let snow = "é☃".as_bytes();
        assert_eq!(all(&[&snow[..1], &snow[1..3], &snow[3..]]), "é☃");
        // An ESC split from its sequence is still escaped.
        assert_eq!(all(&[b"x\x1b", b"[31m"]), "x\\x1b[31m");
    }
}
