//! The one line per callback, formatted straight into the output buffer; every other
//! event goes through tracing-subscriber's JSON formatter, which it matches byte for byte.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::CALLBACK_TARGET;
use crate::util::json;

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
            json::write_string(line, meta.target());
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
pub(super) struct Fields<'a> {
    line: &'a mut String,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        json::write_string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json::write_string(self.line, value);
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
            json::write_string(self.line, text);
        });
    }
}

thread_local! {
    /// The second last formatted and its `YYYY-MM-DDTHH:MM:SS`: a callback
    /// line's timestamp then costs a copy and six digits.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-23T23:38:29.184955Z`, as tracing-subscriber's `SystemTime` timer
/// writes it (microseconds, UTC).
pub(super) fn write_timestamp(out: &mut String, now: SystemTime) -> fmt::Result {
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
pub(super) fn write_date_time(out: &mut String, secs: u64) -> fmt::Result {
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
