//! Structured logs: JSON lines by default, human-readable text on request.
//! The level comes from `RUST_LOG` (default `info`).
//!
//! Every line is formatted by tracing-subscriber: its JSON formatter with the
//! event's fields flattened into the line, `{"timestamp":..,"level":..,
//! <fields>..,"target":..}`, or its text formatter, coloured only on a
//! terminal.
//!
//! Lines reach their sink through tracing-appender's non-blocking writer: the
//! thread that logs queues the finished line, and a writer thread of its own
//! writes out whatever has queued up, so a callback never waits for a `write`
//! system call. The writer thread wakes for every line, WARN and ERROR
//! included: nothing waits for company, and the lines leave in the order they
//! were logged. What it writes in one go goes out in one system call.
//!
//! The queue is not lossy: when it is full (the sink has stopped taking lines,
//! a stuck log collector), the threads that log wait for room, as they waited
//! for a blocked `write` before there was a queue. The line per callback is
//! the record of who decided what; dropping it silently to keep answering
//! would leave decisions with no trace. [`finish`] writes out every queued
//! line before the process exits; a process killed outright (SIGKILL) loses
//! what was still queued.

use std::io::{self, BufWriter, IsTerminal as _};
use std::sync::{Mutex, PoisonError};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The target of the line logged for every callback.
pub const CALLBACK_TARGET: &str = "feishu_gate::callback";

/// Lines that may wait for the writer thread before a thread that logs
/// waits instead. The queue's slots are allocated up front, so it is sized for
/// a burst (tens of milliseconds of callbacks at full load) rather than left at
/// tracing-appender's 128,000, which alone would take megabytes of an idle
/// process's memory.
const QUEUED_LINES: usize = 4_096;

/// What the writer thread gathers before a `write`: a burst of lines that
/// queued up while it wrote the last goes out together.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

/// The writer thread's guard: dropping it writes out every queued line and ends the
/// thread. A static rather than a local of `main`, so that [`finish`] can be called on
/// any exit path, including `process::exit` from a runtime thread; nothing runs a
/// static's destructor, and thread-local destructors do not run at exit on musl (the
/// image's target), so every exit path calls [`finish`].
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init(format: LogFormat, sink: Sink) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: in a log collector they are noise.
    let builder = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("feishu-gate-log");
    let ((writer, guard), ansi) = match sink {
        Sink::Stdout => (
            builder.finish(BufWriter::with_capacity(WRITE_BUFFER_BYTES, io::stdout())),
            io::stdout().is_terminal(),
        ),
        Sink::Stderr => (
            builder.finish(BufWriter::with_capacity(WRITE_BUFFER_BYTES, io::stderr())),
            io::stderr().is_terminal(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
    // Already installed (a second call in tests): keep the first, and its
    // writer thread; this one's ends with its guard.
    if installed.is_ok() {
        *WRITER.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
    }
}

/// Writes out every line logged so far and ends the writer thread: the last
/// thing the process does before it exits, whichever way it exits. Lines logged
/// after it are lost.
pub fn finish() {
    let guard = WRITER.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Records every `write` separately, so a test sees each system call.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Writes {
        fn text(&self) -> String {
            let writes = self.0.lock().unwrap();
            String::from_utf8(writes.concat()).unwrap()
        }
    }

    impl io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A subscriber set up as [`init`] sets up JSON lines, writing to `out`
    /// through the same kind of writer thread.
    fn json_lines(out: &Writes) -> (impl tracing::Subscriber + Send + Sync, WorkerGuard) {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(QUEUED_LINES)
            .finish(BufWriter::with_capacity(WRITE_BUFFER_BYTES, out.clone()));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        (subscriber, guard)
    }

    #[test]
    fn a_callback_line_has_its_fields_at_the_top_level_in_order() {
        let out = Writes::default();
        let (subscriber, guard) = json_lines(&out);
        tracing::subscriber::with_default(subscriber, || {
            let missing: Option<&str> = None;
            tracing::info!(
                target: CALLBACK_TARGET,
                request_id = "b1f0e3c2",
                instance_id = missing,
                task_id = "a \"quoted\" \\ task\u{1}\n",
                action = "同意 ✓",
                status = 200u16,
                duration_ms = 0.352_125_f64,
                "callback"
            );
        });
        drop(guard);
        let text = out.text();
        let line = text.strip_suffix('\n').unwrap();
        assert!(!line.contains('\n'), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = parsed.as_object().unwrap().keys().map(|k| &k[..]).collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "message",
                "request_id",
                "task_id",
                "action",
                "status",
                "duration_ms",
                "target"
            ]
        );
        assert_eq!(parsed["level"], "INFO");
        assert_eq!(parsed["target"], CALLBACK_TARGET);
        assert_eq!(parsed["task_id"], "a \"quoted\" \\ task\u{1}\n");
        assert_eq!(parsed["action"], "同意 ✓");
        assert_eq!(parsed["status"], 200);
        assert_eq!(parsed["duration_ms"], 0.352_125);
        // `2026-11-23T23:38:29.184955Z`: UTC, microseconds.
        let timestamp = parsed["timestamp"].as_str().unwrap();
        assert_eq!(timestamp.len(), 27, "{timestamp}");
        assert!(timestamp.ends_with('Z'), "{timestamp}");
    }

    #[test]
    fn every_line_is_written_by_the_time_the_guard_is_dropped() {
        let out = Writes::default();
        let (subscriber, guard) = json_lines(&out);
        // More lines than the queue holds: the threads that log wait for
        // room rather than drop any.
        let threads = 4;
        let each = QUEUED_LINES;
        let subscriber = Arc::new(subscriber);
        let logging: Vec<_> = (0..threads)
            .map(|t| {
                let subscriber = subscriber.clone();
                std::thread::spawn(move || {
                    tracing::subscriber::with_default(subscriber, || {
                        for n in 0..each {
                            tracing::info!(thread = t, n, "line");
                        }
                    });
                })
            })
            .collect();
        for thread in logging {
            thread.join().unwrap();
        }
        drop(guard);
        let text = out.text();
        assert_eq!(text.lines().count(), threads * each);
        for line in text.lines() {
            let _: serde_json::Value = serde_json::from_str(line).unwrap();
        }
        let writes = out.0.lock().unwrap().len();
        assert!(
            writes < threads * each,
            "lines that queued up share a write"
        );
    }

    #[test]
    fn a_warning_is_written_without_waiting_for_more_lines() {
        let out = Writes::default();
        let (subscriber, guard) = json_lines(&out);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: CALLBACK_TARGET, outcome = "delivered", "callback");
            tracing::warn!("upstream slow");
            let deadline = Instant::now() + Duration::from_secs(5);
            while out.text().lines().count() < 2 {
                assert!(Instant::now() < deadline, "still queued: {}", out.text());
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let text = out.text();
        let levels: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["level"].to_string())
            .collect();
        assert_eq!(levels, ["\"INFO\"", "\"WARN\""]);
        drop(guard);
    }
}
