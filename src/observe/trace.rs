//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the caller's
//! `traceparent` continued, or a new trace started, for every callback, and
//! carried to the legacy system so a platform team can join the hops.
//!
//! This is all the tracing a callback costs when no exporter is configured:
//! parsing one header, a few hashes for new ids, and formatting the outgoing
//! header. Exporting spans is [`crate::observe::otlp`]'s business.

use crate::util::hex::{self, Hex};
use http::{HeaderMap, HeaderValue};

/// Header carrying the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying vendors' trace state, passed on as it came.
pub const TRACESTATE: &str = "tracestate";

/// The specification lets a vendor drop a `tracestate` longer than this.
const MAX_TRACESTATE: usize = 512;

/// The trace context of one callback.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The span of the exchange with the legacy system: the parent it sees.
    pub exchange_span: [u8; 8],
    /// Whether the trace is being recorded: the caller's flag, or the
    /// exporter's sampler when one is configured.
    pub sampled: bool,
    /// The caller's `tracestate`, only ever with its `traceparent`.
    pub tracestate: Option<HeaderValue>,
}

impl Trace {
    /// Continues the trace in `headers` when they carry a valid
    /// `traceparent`, otherwise starts one; new ids come from `random`, each
    /// call an independent random word, called only for the ids needed.
    pub fn from_headers(headers: &HeaderMap, mut random: impl FnMut() -> u64) -> Self {
        let exchange_span = nonzero(random()).to_be_bytes();
        let caller = headers
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        match caller {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                parent: Some(parent),
                exchange_span,
                sampled: flags & 1 == 1,
                tracestate: tracestate(headers),
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&nonzero(random()).to_be_bytes());
                trace_id[8..].copy_from_slice(&random().to_be_bytes());
                Self {
                    trace_id,
                    parent: None,
                    exchange_span,
                    // Without an exporter nothing records it; with one, the
                    // sampler decides (see `telemetry`).
                    sampled: false,
                    tracestate: None,
                }
            }
        }
    }

    /// The trace id as 32 lower-case hex digits, for the log line.
    pub fn trace_id_hex(&self) -> Hex<32> {
        Hex::of(&self.trace_id)
    }

    /// `traceparent` for the legacy system: this trace, the exchange's span
    /// as its parent.
    pub fn traceparent(&self) -> HeaderValue {
        // Hex digits and dashes are always a valid header value.
        HeaderValue::from_bytes(&self.traceparent_text())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The same, as the text it is.
    pub fn traceparent_text(&self) -> [u8; TRACEPARENT_LEN] {
        let mut text = [0u8; TRACEPARENT_LEN];
        text[..3].copy_from_slice(b"00-");
        text[3..35].copy_from_slice(Hex::<32>::of(&self.trace_id).as_bytes());
        text[35] = b'-';
        text[36..52].copy_from_slice(Hex::<16>::of(&self.exchange_span).as_bytes());
        text[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        text
    }
}

/// Length of a version `00` `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// Random words are zero once in 2^64; an id may never be.
fn nonzero(word: u64) -> u64 {
    if word == 0 { 1 } else { word }
}

/// `version-traceid-parentid-flags`, as the specification parses it: version
/// `00` exactly 55 characters, a later version at least that with anything
/// after a dash; lower-case hex; neither id all zeros; version `ff` invalid.
fn parse_traceparent(text: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if text.len() < 55 || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let version = hex::decode::<1>(&text[..2])?[0];
    match version {
        0xff => return None,
        0 if text.len() != 55 => return None,
        0 => {}
        _ if text.len() > 55 && text[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = hex::decode::<16>(&text[3..35])?;
    let parent = hex::decode::<8>(&text[36..52])?;
    let flags = hex::decode::<1>(&text[53..55])?[0];
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

/// The caller's `tracestate`, its header lines joined as the specification
/// allows; dropped when too long or not the specification's list (the legacy system
/// and the collector get nothing a stranger wrote in any other form).
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(TRACESTATE).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return (first.len() <= MAX_TRACESTATE && is_tracestate(first.as_bytes()))
            .then(|| first.clone());
    };
    let mut joined = Vec::with_capacity(first.len() + second.len() + 1);
    for line in [first, second].into_iter().chain(lines) {
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(line.as_bytes());
    }
    if joined.len() > MAX_TRACESTATE || !is_tracestate(&joined) {
        return None;
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Members a `tracestate` may hold (W3C Trace Context, section 3.3.1).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Whether `list` is a `tracestate` as W3C Trace Context writes its grammar: at most 32
/// `key=value` members separated by commas and optional spaces or tabs, empty ones
/// allowed; a key is a simple key or `tenant@system`, a value printable ASCII without `,`
/// or `=` that does not end in a space.
fn is_tracestate(list: &[u8]) -> bool {
    let mut members = 0;
    for member in list.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        members += 1;
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if members > MAX_TRACESTATE_MEMBERS || !is_tracestate_key(key) {
            return false;
        }
        let value_char = |c: &u8| matches!(c, 0x20..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
        if value.is_empty()
            || value.len() > 256
            || !value.iter().all(value_char)
            || value.ends_with(b" ")
        {
            return false;
        }
    }
    true
}

fn is_tracestate_key(key: &[u8]) -> bool {
    let rest = |c: &u8| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    match key.iter().position(|&b| b == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key[1..].iter().all(rest)
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant[1..].iter().all(rest)
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system[1..].iter().all(rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    fn counting() -> impl FnMut() -> u64 {
        let mut words = [0x4444u64, 0x1111, 0x2222].into_iter();
        move || words.next().expect("at most three words")
    }

    fn with(pairs: &[(&'static str, &str)]) -> Trace {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        Trace::from_headers(&headers, counting())
    }

    #[test]
    fn a_callers_trace_is_continued_with_a_new_span() {
        let t = with(&[(TRACEPARENT, CALLER), (TRACESTATE, "congo=t61rcWkgMzE")]);
        assert_eq!(
            t.trace_id_hex().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(t.parent, Some(0x00f0_67aa_0ba9_02b7u64.to_be_bytes()));
        assert!(t.sampled);
        assert_eq!(
            t.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000004444-01"
        );
        assert_eq!(t.tracestate.unwrap(), "congo=t61rcWkgMzE");
        let unsampled = with(&[(TRACEPARENT, &CALLER.replace("-01", "-00"))]);
        assert!(!unsampled.sampled);
        assert!(unsampled.traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn without_a_valid_traceparent_a_trace_is_started_and_tracestate_dropped() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let t = with(&[(TRACEPARENT, bad), (TRACESTATE, "congo=t61rcWkgMzE")]);
            assert_eq!(t.parent, None, "{bad:?}");
            assert_eq!(t.tracestate, None, "{bad:?}");
            assert_eq!(
                t.traceparent(),
                "00-00000000000011110000000000002222-0000000000004444-00",
                "{bad:?}"
            );
        }
        let t = with(&[]);
        assert_eq!(t.parent, None);
        assert_eq!(
            t.trace_id_hex().as_str(),
            "00000000000011110000000000002222"
        );
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        let t = with(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
        )]);
        assert_eq!(
            t.trace_id_hex().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(t.traceparent().to_str().unwrap().starts_with("00-"));
    }

    #[test]
    fn tracestate_lines_are_joined_and_an_oversized_one_dropped() {
        let t = with(&[
            (TRACEPARENT, CALLER),
            (TRACESTATE, "a=1"),
            (TRACESTATE, "b=2"),
        ]);
        assert_eq!(t.tracestate.unwrap(), "a=1,b=2");
        let long = format!("a={}", "x".repeat(600));
        assert_eq!(
            with(&[(TRACEPARENT, CALLER), (TRACESTATE, &long)]).tracestate,
            None
        );
    }

    #[test]
    fn only_a_tracestate_of_the_specifications_grammar_is_kept() {
        for good in [
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "a=1 , ,b=2",
            "tenant1@vendor=x y",
            "k=<>{}",
        ] {
            let t = with(&[(TRACEPARENT, CALLER), (TRACESTATE, good)]);
            assert_eq!(
                t.tracestate.as_ref().map(|v| v.to_str().unwrap()),
                Some(good)
            );
        }
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            "not a valid list member;;;<script>,x",
            "Upper=1",
            "a=",
            "a=b,=c",
            "a=b=c",
            "a=café",
            "1a=b",
            "t@Vendor=x",
            many.as_str(),
        ] {
            let t = with(&[(TRACEPARENT, CALLER), (TRACESTATE, bad)]);
            assert_eq!(t.tracestate, None, "{bad:?}");
        }
    }

    #[test]
    fn ids_are_never_zero() {
        let t = Trace::from_headers(&HeaderMap::new(), || 0);
        assert_ne!(t.trace_id, [0; 16]);
        assert_ne!(t.exchange_span, [0; 8]);
    }
}
