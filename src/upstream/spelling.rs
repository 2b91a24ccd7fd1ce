//! Header names on the wire to the legacy system, spelled as they should be.
//!
//! hyper writes HTTP/1.1 header names lower-case, or all in Title-Case; it keeps a name's
//! case only when it parsed the message itself. Legacy servers that match names
//! case-sensitively (PHP's `getallheaders()['X-API-Key']`, a SOAP stack's `SOAPAction`)
//! need the operator's spelling byte for byte, and W3C's `traceparent` is lower-case. This
//! transport sits under hyper's client connection and respells each name of a request's
//! head, which hyper writes lower-case, as the operator or the standard writes it. The
//! spelling keeps a name's length, so nothing else in the stream moves; the body, after
//! the head's blank line, is counted off by its `Content-Length` (every request the
//! gateway sends has one) and passed through untouched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

/// The names to respell, each as it goes out; any other name goes out lower-case.
#[derive(Debug, Clone)]
pub struct Spellings(Arc<[Box<[u8]>]>);

impl Spellings {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> Self {
        Self(
            names
                .into_iter()
                .map(|n| n.as_ref().as_bytes().into())
                .collect(),
        )
    }

    fn of(&self, name: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|s| s.eq_ignore_ascii_case(name))
            .map(|s| &s[..])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request's head: past its request line or not, at a line's start or not, and
    /// the `Content-Length` read so far.
    Head {
        request_line: bool,
        line_start: bool,
        content_length: u64,
    },
    /// In a request's body, this many bytes still to pass through.
    Body(u64),
}

const NEW_REQUEST: State = State::Head {
    request_line: false,
    line_start: true,
    content_length: 0,
};

/// A client connection's transport that respells header names (see the module).
#[derive(Debug)]
pub struct Spelled<T> {
    io: T,
    spellings: Spellings,
    state: State,
    scratch: Vec<u8>,
    /// The head line written so far, when a write ended inside it.
    line: Vec<u8>,
}

impl<T> Spelled<T> {
    pub fn new(io: T, spellings: Spellings) -> Self {
        Self {
            io,
            spellings,
            state: NEW_REQUEST,
            scratch: Vec::new(),
            line: Vec::new(),
        }
    }

    /// Copies the complete head lines at the start of `buf` into the scratch buffer,
    /// respelled, with the body after them when the head ends in `buf`, and returns how
    /// many bytes that is (0: no line complete).
    fn respell(&mut self, buf: &[u8]) -> usize {
        let State::Head {
            mut request_line,
            line_start,
            ..
        } = self.state
        else {
            return 0;
        };
        self.scratch.clear();
        let mut at = 0;
        let mut first = true;
        // Read from this write's lines: the state's is only known once they are written.
        let mut content_length = None;
        while let Some(nl) = memchr::memchr(b'\n', &buf[at..]) {
            let line = &buf[at..=at + nl];
            let start = self.scratch.len();
            self.scratch.extend_from_slice(line);
            let colon = if request_line {
                memchr::memchr(b':', line)
            } else {
                None
            };
            // The rest of a line begun in an earlier write, or the request line, is copied.
            if (line_start || !first)
                && let Some(colon) = colon
                && let Some(spelled) = self.spellings.of(&line[..colon])
            {
                self.scratch[start..start + colon].copy_from_slice(spelled);
            }
            if let Some(colon) = colon
                && line[..colon].eq_ignore_ascii_case(b"content-length")
                && let Ok(text) = std::str::from_utf8(&line[colon + 1..])
                && let Ok(n) = text.trim().parse::<usize>()
            {
                content_length = Some(n);
            }
            // A blank line cut between its CR and its LF by the last write ends the head too.
            let blank =
                line == b"\r\n" || (first && !line_start && line == b"\n" && self.line == b"\r");
            request_line = true;
            first = false;
            at += nl + 1;
            if blank {
                // The body goes in the same write as its head, as hyper would send them:
                // one system call, one packet.
                let body = content_length.unwrap_or(0).min(buf.len() - at);
                self.scratch.extend_from_slice(&buf[at..at + body]);
                at += body;
                break;
            }
        }
        at
    }

    /// Moves the state past `written`, the start of what the last write offered.
    fn advance(&mut self, written: &[u8]) {
        let mut rest = written;
        while !rest.is_empty() {
            match self.state {
                State::Body(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    rest = &rest[n..];
                    self.state = match left - n as u64 {
                        0 => NEW_REQUEST,
                        left => State::Body(left),
                    };
                }
                State::Head { .. } => {
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        self.line.extend_from_slice(rest);
                        self.set_line_start(false);
                        return;
                    };
                    let (part, after) = rest.split_at(nl + 1);
                    rest = after;
                    if self.line.is_empty() {
                        self.end_line(part);
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(part);
                        self.end_line(&line);
                    }
                }
            }
        }
    }

    fn set_line_start(&mut self, at: bool) {
        if let State::Head { line_start, .. } = &mut self.state {
            *line_start = at;
        }
    }

    /// One whole line of a head has been written.
    fn end_line(&mut self, line: &[u8]) {
        let State::Head {
            request_line,
            content_length,
            ..
        } = &mut self.state
        else {
            return;
        };
        if !*request_line {
            *request_line = true;
        } else if line == b"\r\n" {
            self.state = match *content_length {
                0 => NEW_REQUEST,
                n => State::Body(n),
            };
            return;
        } else if let Some(colon) = memchr::memchr(b':', line)
            && line[..colon].eq_ignore_ascii_case(b"content-length")
            && let Ok(text) = std::str::from_utf8(&line[colon + 1..])
            && let Ok(n) = text.trim().parse()
        {
            *content_length = n;
        }
        self.set_line_start(true);
    }
}

impl<T: Read + Unpin> Read for Spelled<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Spelled<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let lines = this.respell(buf);
        let written = if lines > 0 {
            match Pin::new(&mut this.io).poll_write(cx, &this.scratch) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            }
        } else {
            // A body, or a piece of a line the last write cut: as it is.
            let end = match this.state {
                State::Body(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
                State::Head { .. } => buf.len(),
            };
            match Pin::new(&mut this.io).poll_write(cx, &buf[..end]) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            }
        };
        this.advance(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `writes` (each offered whole, the transport taking at most `take` bytes of
    /// each offer) come out as.
    fn through(spellings: &[&str], writes: &[&[u8]], take: usize) -> Vec<u8> {
        let mut s = Spelled::new((), Spellings::new(spellings));
        let mut out = Vec::new();
        for write in writes {
            let mut rest: &[u8] = write;
            while !rest.is_empty() {
                let lines = s.respell(rest);
                let offered: Vec<u8> = if lines > 0 {
                    s.scratch.clone()
                } else {
                    let end = match s.state {
                        State::Body(left) => rest.len().min(left as usize),
                        State::Head { .. } => rest.len(),
                    };
                    rest[..end].to_vec()
                };
                let n = offered.len().min(take);
                out.extend_from_slice(&offered[..n]);
                s.advance(&rest[..n]);
                rest = &rest[n..];
            }
        }
        out
    }

    const NAMES: &[&str] = &[
        "X-API-Key",
        "SOAPAction",
        "Content-Type",
        "Content-Length",
        "Host",
    ];

    fn request(body: &str) -> String {
        format!(
            "POST /a:b HTTP/1.1\r\nx-api-key: k\r\nsoapaction: \"urn:x\"\r\ncontent-type: application/json\r\n\
             traceparent: 00-1-2-01\r\ncontent-length: {}\r\nhost: legacy\r\n\r\n{body}",
            body.len()
        )
    }

    fn expected(body: &str) -> String {
        format!(
            "POST /a:b HTTP/1.1\r\nX-API-Key: k\r\nSOAPAction: \"urn:x\"\r\nContent-Type: application/json\r\n\
             traceparent: 00-1-2-01\r\nContent-Length: {}\r\nHost: legacy\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn names_are_respelled_and_bodies_pass_through_across_requests() {
        // A body that looks like a head is still a body.
        let bodies = ["{\"a\":1}", "x-api-key: not a header\r\n\r\n"];
        let sent: Vec<String> = bodies.iter().map(|b| request(b)).collect();
        let wanted: String = bodies.iter().map(|b| expected(b)).collect();
        let writes: Vec<&[u8]> = sent.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(
            String::from_utf8(through(NAMES, &writes, usize::MAX)).unwrap(),
            wanted
        );
    }

    #[test]
    fn short_writes_keep_the_place() {
        let body = "{\"reason\":\"content-length: 5\"}";
        let sent = [request(body), request(body)].concat();
        let wanted = [expected(body), expected(body)].concat();
        for take in [1, 3, 7, 40] {
            let out = through(NAMES, &[sent.as_bytes()], take);
            // Cut mid-name, a name may go out as hyper wrote it; never anything else.
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out.len(), wanted.len(), "take {take}");
            assert!(out.eq_ignore_ascii_case(&wanted), "take {take}: {out}");
            assert!(out.ends_with(&expected(body)[expected(body).len() - body.len() - 4..]));
        }
    }
}
