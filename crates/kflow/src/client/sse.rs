//! A small incremental parser for server-sent events (the `text/event-stream` format).
//!
//! Bytes arrive in arbitrary chunks; [`SseParser::feed`] returns the events completed so far.
//! Lines end with LF, CRLF or CR; `event:` sets the type, `data:` lines are joined with
//! newlines, lines starting with `:` are comments, `id:`/`retry:` and unknown fields are
//! ignored, and a blank line dispatches the event (one without data is dropped, as the format
//! says). A partial event at the end of the stream is discarded.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    started: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Takes the next chunk of the stream; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        if !self.started {
            // A UTF-8 byte order mark may open the stream; wait until we can tell.
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return Vec::new();
            }
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
            self.started = true;
        }
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                if b == b'\r' && i + 1 == self.buf.len() {
                    break; // maybe the first half of CRLF: wait for the next byte
                }
                let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                i += if b == b'\r' && self.buf[i + 1] == b'\n' {
                    2
                } else {
                    1
                };
                start = i;
                if let Some(ev) = self.line(&line) {
                    out.push(ev);
                }
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        out
    }

    /// The stream ended: a final CR still ends its line (the partial event after it is dropped).
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.buf.ends_with(b"\r") {
            let line = String::from_utf8_lossy(&self.buf[..self.buf.len() - 1]).into_owned();
            out.extend(self.line(&line));
        }
        self.buf.clear();
        self.event = None;
        self.data = None;
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let data = self.data.take()?;
            return Some(SseEvent {
                event: event
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn parses_events_and_fields() {
        let mut p = SseParser::new();
        let got =
            p.feed(b": hello\n\nevent: history\ndata: {\"seq\":1}\nid: 1\n\nevent: end\ndata:\n\n");
        assert_eq!(got, vec![ev("history", "{\"seq\":1}"), ev("end", "")]);
    }

    #[test]
    fn joins_data_lines_and_defaults_the_type() {
        let mut p = SseParser::new();
        let got = p.feed(b"data: a\ndata:b\ndata\n\n");
        assert_eq!(got, vec![ev("message", "a\nb\n")]);
    }

    #[test]
    fn events_without_data_are_dropped() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(b"event: ping\n\nretry: 10\n\n"), vec![]);
    }

    #[test]
    fn split_anywhere_gives_the_same_events() {
        let stream: &[u8] = b"\xEF\xBB\xBFevent: history\r\ndata: {\"k\":\"\xC3\xA9\"}\r\n\r\nevent: end\rdata: x\r\r";
        let mut p = SseParser::new();
        let mut whole = p.feed(stream);
        whole.extend(p.finish());
        assert_eq!(
            whole,
            vec![ev("history", "{\"k\":\"\u{e9}\"}"), ev("end", "x")]
        );
        for size in 1..stream.len() {
            let mut p = SseParser::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(size) {
                got.extend(p.feed(chunk));
            }
            got.extend(p.finish());
            assert_eq!(got, whole, "chunks of {size}");
        }
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(b"event: history\ndata: {}\n"), vec![]);
        assert_eq!(p.feed(b"\n"), vec![ev("history", "{}")]);
    }
}
