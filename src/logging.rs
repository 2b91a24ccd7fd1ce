//! Structured logs: JSON lines by default, human-readable text on request.
//! The level comes from `RUST_LOG` (default `info`).
//!
//! The one line per callback is written on every request, so it is formatted
//! by [`JsonLines`] directly into the output buffer; every other event goes
//! through tracing-subscriber's JSON formatter, whose output the fast line
//! matches byte for byte (a test holds the two side by side).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The target of the line logged for every callback.
pub const CALLBACK_TARGET: &str = "feishu_gate::callback";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init(format: LogFormat, sink: Sink) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (format, sink) {
        (LogFormat::Json, Sink::Stdout) => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::default())
            .with_writer(std::io::stdout)
            .try_init(),
        (LogFormat::Json, Sink::Stderr) => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::default())
            .with_writer(std::io::stderr)
            .try_init(),
        // Colour codes only for a terminal: in a log collector they are noise.
        (LogFormat::Text, Sink::Stdout) => builder
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .try_init(),
        (LogFormat::Text, Sink::Stderr) => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
    };
    // Already installed (a second call in tests): keep the first.
    drop(result);
}

/// JSON lines: `{"timestamp":..,"level":..,<fields>..,"target":..}`.
pub struct JsonLines {
    standard: Format<Json, time::SystemTime>,
}

impl Default for JsonLines {
    fn default() -> Self {
        Self {
            standard: Format::default()
                .json()
                .flatten_event(true)
                .with_current_span(false),
        }
    }
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonLines")
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Inside a span the standard formatter adds the span list; only the
        // plain case is worth a second implementation.
        if meta.target() != CALLBACK_TARGET
            || event.parent().is_some()
            || ctx.lookup_current().is_some()
        {
            return self.standard.format_event(ctx, writer, event);
        }
        LINE.with(|cell| {
            // Taken only if a `Debug` value logged while being formatted.
            let Ok(mut line) = cell.try_borrow_mut() else {
                return self.standard.format_event(ctx, writer, event);
            };
            let line = &mut *line;
            line.clear();
            line.push_str("{\"timestamp\":\"");
            write_timestamp(line, SystemTime::now())?;
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
            event.record(&mut Fields { line: &mut *line });
            line.push_str(",\"target\":");
            push_str_value(line, meta.target());
            line.push_str("}\n");
            writer.write_str(line)
        })
    }
}

thread_local! {
    /// The line being formatted, reused so a line costs no allocation.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// Values only known through `Debug` (the message), reused likewise.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes each field as `,"name":value`, as serde_json would write it.
struct Fields<'a> {
    line: &'a mut String,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        push_str_value(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_str_value(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.line.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            self.line.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        SCRATCH.with_borrow_mut(|text| {
            text.clear();
            // Writing into a `String` fails only if `Debug` itself does;
            // what was written so far is logged, as serde_json would.
            let _ = write!(text, "{value:?}");
            push_str_value(self.line, text);
        });
    }
}

/// The bytes serde_json escapes in a string: control characters, `"`, `\\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// A JSON string, escaped exactly as serde_json escapes it.
fn push_str_value(out: &mut String, value: &str) {
    out.push('"');
    if !value.bytes().any(|b| NEEDS_ESCAPE[usize::from(b)]) {
        out.push_str(value);
    } else {
        push_escaped(out, value);
    }
    out.push('"');
}

fn push_escaped(out: &mut String, value: &str) {
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
}

thread_local! {
    /// The second last formatted and its `YYYY-MM-DDTHH:MM:SS`: a callback
    /// line's timestamp then costs a copy and six digits.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-23T23:38:29.184955Z`, as tracing-subscriber's `SystemTime` timer
/// writes it (microseconds, UTC).
fn write_timestamp(out: &mut String, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            text.clear();
            write_date_time(text, secs)?;
            *cached = secs;
        }
        out.push_str(text);
        Ok(())
    })?;
    let mut digits = *b".000000Z";
    let mut n = since.subsec_micros();
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for d in digits {
        out.push(char::from(d));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch (proleptic Gregorian,
/// the civil-from-days algorithm).
fn write_date_time(out: &mut String, secs: u64) -> fmt::Result {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        write!(out, "+{year}")?;
    } else {
        write!(out, "{year:04}")?;
    }
    write!(
        out,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn emit(fast: bool, f: impl Fn()) -> String {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(writer);
        if fast {
            let subscriber = builder
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines::default())
                .finish();
            tracing::subscriber::with_default(subscriber, f);
        } else {
            let subscriber = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish();
            tracing::subscriber::with_default(subscriber, f);
        }
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// The line without its timestamp, which differs between two runs.
    fn untimed(line: &str) -> String {
        let start = line.find("\"timestamp\":\"").unwrap() + 13;
        let end = start + line[start..].find('"').unwrap();
        format!("{}{}", &line[..start], &line[end..])
    }

    fn callback_event() {
        let summary: Option<&str> = Some("7C468A54-8745-2245-9675-08B7C63E7A85");
        let missing: Option<&str> = None;
        tracing::info!(
            target: CALLBACK_TARGET,
            request_id = "b1f0e3c2-0d8e-4a51-9d0b-2f0b5d1c9e77",
            approval_code = summary,
            instance_id = missing,
            task_id = "a \"quoted\" \\ task\u{1}\u{7f}\n\t\u{8}\u{c}\r",
            action = "同意 ✓",
            status = 200u16,
            upstream_status = Some(502u16),
            negative = -7i64,
            flag = true,
            duration_ms = 0.352_125_f64,
            whole_ms = 2.0_f64,
            tiny_ms = 1.5e-7_f64,
            huge_ms = 1.0e17_f64,
            nan_ms = f64::NAN,
            detail = %format_args!("shown {}", "with Display"),
            debugged = ?Some("debug"),
            "callback"
        );
        tracing::warn!(target: CALLBACK_TARGET, outcome = "upstream_timeout", "callback");
    }

    #[test]
    fn the_fast_line_matches_the_standard_formatter_byte_for_byte() {
        let standard = emit(false, callback_event);
        let fast = emit(true, callback_event);
        assert_eq!(standard.lines().count(), 2, "{standard}");
        for (s, f) in standard.lines().zip(fast.lines()) {
            assert_eq!(untimed(s), untimed(f));
            assert_eq!(
                s.len(),
                f.len(),
                "timestamps have the same shape: {s} / {f}"
            );
        }
        let parsed: serde_json::Value = serde_json::from_str(fast.lines().next().unwrap()).unwrap();
        assert_eq!(parsed["message"], "callback");
        assert_eq!(parsed["target"], CALLBACK_TARGET);
    }

    #[test]
    fn other_events_and_spans_use_the_standard_formatter() {
        let other = || {
            tracing::info!(listen = "127.0.0.1:1", tls = false, "serving callbacks");
            let span = tracing::info_span!("conn", peer = "x");
            let _entered = span.enter();
            tracing::info!(target: CALLBACK_TARGET, outcome = "delivered", "callback");
        };
        let standard = emit(false, other);
        let fast = emit(true, other);
        assert_eq!(standard.lines().count(), 2);
        for (s, f) in standard.lines().zip(fast.lines()) {
            assert_eq!(untimed(s), untimed(f));
        }
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut out = String::new();
            write_timestamp(
                &mut out,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
            )
            .unwrap();
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_477_109, 184_955), "2026-11-23T23:38:29.184955Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        // The cached second is replaced when the second changes.
        assert_eq!(at(1_795_477_110, 1), "2026-11-23T23:38:30.000001Z");
    }
}
