//! Structured logs: JSON lines by default, human-readable text on request.
//! The level comes from `RUST_LOG` (default `info`).
//!
//! The one line per callback is written on every request, so it is formatted
//! by [`JsonLines`] directly into the output buffer; every other event goes
//! through tracing-subscriber's JSON formatter, whose output the fast line
//! matches byte for byte (a test holds the two side by side).
//!
//! When stdout is a pipe or a file (a log collector, not a person), lines are
//! buffered per thread and written in batches, one `write` system call per
//! batch instead of one per line. A thread writes its batch when
//!
//! - a WARN or ERROR line arrives: problems are never delayed, and they stay
//!   in order behind the lines that led up to them;
//! - the batch reaches [`BATCH_BYTES`];
//! - a line arrives and the oldest line waiting is [`BATCH_AGE`] old;
//! - [`flush`] is called, which the runtime does when a worker thread goes
//!   idle and before the process exits, so at low load every line appears at
//!   once;
//! - the thread exits.
//!
//! A batch is written whole under the stdout lock, so lines from different
//! threads never interleave mid-line; they may appear out of timestamp order
//! by up to [`BATCH_AGE`]. A process killed outright (SIGKILL) loses the lines
//! still waiting. On a terminal, and on stderr, each line is written at once.
//!
//! Both parts are hand-written because `bench/run.sh` measured what the crates
//! cost on the callback path (docs/performance.md, items 2, 8 and 13): with
//! tracing-subscriber's formatter for the callback line and tracing-appender's
//! writer thread, 5 to 6 µs more CPU per callback (about a sixth) and 0.84x → 0.72x
//! of nginx's throughput at 32 connections; with the standard formatter and these
//! batches, still 4 µs more and 0.83x → 0.73x.

use std::io::{self, IsTerminal as _};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;

mod batch;
mod line;

use batch::{Batched, BatchedWriter, STDOUT_LINES, StdoutFd, write_out};
pub use line::JsonLines;

/// The target of the line logged for every callback.
pub const CALLBACK_TARGET: &str = "feishu_gate::callback";

/// A batch this large is written without waiting for more: some twenty
/// callback lines already share one system call, and the buffer is per thread.
pub const BATCH_BYTES: usize = 8 * 1024;

/// The longest a line waits for company while its thread keeps logging.
pub const BATCH_AGE: Duration = Duration::from_millis(200);

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init(format: LogFormat, sink: Sink) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: in a log collector they are noise.
    // A person at a terminal reads lines as they happen, so only a pipe or a
    // file gets batches.
    let (output, ansi) = match sink {
        Sink::Stdout if io::stdout().is_terminal() => (Output::Stdout, true),
        Sink::Stdout => (
            Output::Batched(Batched {
                buffer: &STDOUT_LINES,
            }),
            false,
        ),
        Sink::Stderr => (Output::Stderr, io::stderr().is_terminal()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output);
    let result = match format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::default())
            .try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
    // Already installed (a second call in tests): keep the first.
    drop(result);
}

/// Writes out the lines the calling thread holds back. Cheap when there are
/// none, so it can run every time a worker thread goes idle.
pub fn flush() {
    write_out(&STDOUT_LINES);
}

/// The subscriber's writer: one type for every sink, so `init` builds a
/// single subscriber type and no event pays for a boxed writer.
#[derive(Clone, Copy)]
enum Output {
    Batched(Batched<StdoutFd>),
    Stdout,
    Stderr,
}

enum OutputWriter {
    Batched(BatchedWriter<StdoutFd>),
    Stdout(io::Stdout),
    Stderr(io::Stderr),
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = OutputWriter;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Output::Batched(batched) => OutputWriter::Batched(batched.make_writer()),
            Output::Stdout => OutputWriter::Stdout(io::stdout()),
            Output::Stderr => OutputWriter::Stderr(io::stderr()),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        match self {
            Output::Batched(batched) => OutputWriter::Batched(batched.make_writer_for(meta)),
            Output::Stdout => OutputWriter::Stdout(io::stdout()),
            Output::Stderr => OutputWriter::Stderr(io::stderr()),
        }
    }
}

impl io::Write for OutputWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            OutputWriter::Batched(w) => w.write(bytes),
            OutputWriter::Stdout(w) => w.write(bytes),
            OutputWriter::Stderr(w) => w.write(bytes),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            OutputWriter::Batched(w) => w.write_all(bytes),
            OutputWriter::Stdout(w) => w.write_all(bytes),
            OutputWriter::Stderr(w) => w.write_all(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            OutputWriter::Batched(w) => w.flush(),
            OutputWriter::Stdout(w) => w.flush(),
            OutputWriter::Stderr(w) => w.flush(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::{Instant, UNIX_EPOCH};

    use super::batch::*;
    use super::line::*;
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

    /// Records every `write_all` separately, so a test sees each batch.
    #[derive(Clone, Default)]
    struct Batches(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Batches {
        fn taken(&self) -> Vec<String> {
            let batches = std::mem::take(&mut *self.0.lock().unwrap());
            batches
                .into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        }
    }

    impl io::Write for Batches {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_all(buf)?;
            Ok(buf.len())
        }
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn buffer() -> (LineBuffer<Batches>, Batches, Instant) {
        let out = Batches::default();
        let lines = LineBuffer::new(out.clone(), BATCH_BYTES, BATCH_AGE);
        (lines, out, Instant::now())
    }

    #[test]
    fn info_lines_wait_for_flush_and_go_out_in_one_write() {
        let (mut lines, out, t0) = buffer();
        lines.append(b"one\n", false, t0);
        lines.append(b"two\n", false, t0);
        lines.append(b"three\n", false, t0);
        assert!(out.taken().is_empty());
        lines.write_lines();
        assert_eq!(out.taken(), ["one\ntwo\nthree\n"]);
        // Nothing left: flushing again writes nothing, not an empty batch.
        lines.write_lines();
        assert!(out.taken().is_empty());
    }

    #[test]
    fn a_warning_goes_out_at_once_behind_the_lines_before_it() {
        let (mut lines, out, t0) = buffer();
        lines.append(b"info 1\n", false, t0);
        lines.append(b"info 2\n", false, t0);
        lines.append(b"warn\n", true, t0);
        assert_eq!(out.taken(), ["info 1\ninfo 2\nwarn\n"]);
        lines.append(b"info 3\n", false, t0);
        assert!(out.taken().is_empty());
        lines.append(b"error\n", true, t0);
        assert_eq!(out.taken(), ["info 3\nerror\n"]);
    }

    #[test]
    fn a_batch_goes_out_when_it_reaches_8_kib() {
        let (mut lines, out, t0) = buffer();
        let line = format!("{}\n", "x".repeat(99));
        let mut sent = 0;
        while sent + line.len() < BATCH_BYTES {
            lines.append(line.as_bytes(), false, t0);
            sent += line.len();
        }
        assert!(out.taken().is_empty(), "held below {BATCH_BYTES} bytes");
        lines.append(line.as_bytes(), false, t0);
        let batches = out.taken();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), sent + line.len());
        assert!(batches[0].lines().all(|l| l == &line[..99]));
        assert!(lines.pending.is_empty() && lines.since.is_none());
    }

    #[test]
    fn a_line_arriving_200_ms_after_the_oldest_writes_the_batch() {
        let (mut lines, out, t0) = buffer();
        lines.append(b"a\n", false, t0);
        lines.append(b"b\n", false, t0 + Duration::from_millis(199));
        assert!(out.taken().is_empty());
        lines.append(b"c\n", false, t0 + Duration::from_millis(200));
        assert_eq!(out.taken(), ["a\nb\nc\n"]);
        // The age counts from the first line of the next batch.
        lines.append(b"d\n", false, t0 + Duration::from_millis(300));
        lines.append(b"e\n", false, t0 + Duration::from_millis(450));
        assert!(out.taken().is_empty());
        lines.append(b"f\n", false, t0 + Duration::from_millis(500));
        assert_eq!(out.taken(), ["d\ne\nf\n"]);
    }

    #[test]
    fn only_whole_lines_are_written() {
        let (mut lines, out, t0) = buffer();
        lines.append(b"first\n", false, t0);
        lines.append(b"par", true, t0);
        assert_eq!(out.taken(), ["first\n"]);
        lines.write_lines();
        assert!(out.taken().is_empty(), "a partial line waits for its end");
        lines.append(b"tial\nnext", true, t0);
        assert_eq!(out.taken(), ["partial\n"]);
        // Past 8 KiB as well: the batch ends at the last newline.
        let long = "y".repeat(BATCH_BYTES);
        lines.append(long.as_bytes(), false, t0);
        lines.append(b"\ntail", false, t0);
        assert_eq!(out.taken(), [format!("next{long}\n")]);
        assert_eq!(lines.pending, b"tail");
    }

    #[test]
    fn dropping_the_buffer_writes_what_is_left() {
        let (mut lines, out, t0) = buffer();
        lines.append(b"one\n", false, t0);
        lines.append(b"unfinished", false, t0);
        drop(lines);
        assert_eq!(out.taken(), ["one\nunfinished"]);
    }

    #[test]
    fn a_failed_write_drops_the_batch_instead_of_growing() {
        struct Broken(usize);
        impl io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                self.0 += 1;
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut lines = LineBuffer::new(Broken(0), BATCH_BYTES, BATCH_AGE);
        let t0 = Instant::now();
        let line = [b'z'; 1023];
        for _ in 0..100 {
            lines.append(&line, false, t0);
            lines.append(b"\n", false, t0);
        }
        assert!(lines.pending.len() < BATCH_BYTES, "{}", lines.pending.len());
        assert_eq!(lines.out.0, 12, "tried once per 8 KiB");
    }

    /// What the thread-local buffer below writes, batch by batch.
    static BATCHES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    #[derive(Default)]
    struct Recorded;

    impl io::Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            BATCHES.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    thread_local! {
        static RECORDED_LINES: RefCell<LineBuffer<Recorded>> =
            const { RefCell::new(LineBuffer::new(Recorded, BATCH_BYTES, BATCH_AGE)) };
    }

    fn recorded() -> Vec<Vec<String>> {
        std::mem::take(&mut *BATCHES.lock().unwrap())
            .into_iter()
            .map(|b| {
                let text = String::from_utf8(b).unwrap();
                let messages = text.lines().map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["message"].as_str().unwrap().to_owned()
                });
                messages.collect()
            })
            .collect()
    }

    #[test]
    fn the_subscriber_holds_info_back_and_writes_warnings_at_once() {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(Batched {
                buffer: &RECORDED_LINES,
            })
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::default())
            .finish();
        let subscriber = Arc::new(subscriber);
        let (held, after_warn, after_flush) = std::thread::spawn(move || {
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!("starting");
                tracing::info!(target: CALLBACK_TARGET, outcome = "delivered", "callback");
                let held = recorded();
                tracing::warn!("upstream slow");
                let after_warn = recorded();
                tracing::debug!("detail");
                write_out(&RECORDED_LINES);
                let after_flush = recorded();
                tracing::info!("left for thread exit");
                tracing::error!(target: CALLBACK_TARGET, outcome = "upstream_error", "callback");
                tracing::info!("last");
                (held, after_warn, after_flush)
            })
        })
        .join()
        .unwrap();
        assert!(held.is_empty(), "{held:?}");
        assert_eq!(after_warn, [["starting", "callback", "upstream slow"]]);
        assert_eq!(after_flush, [["detail"]]);
        assert_eq!(
            recorded(),
            [vec!["left for thread exit", "callback"], vec!["last"]]
        );
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
