//! The batching writer: lines held back per thread and written in batches, as the
//! module documentation describes.

use std::cell::RefCell;
use std::io;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use super::{BATCH_AGE, BATCH_BYTES};

pub(super) fn write_out<W: io::Write>(buffer: &'static LocalKey<RefCell<LineBuffer<W>>>) {
    // After the thread's buffer is gone there is nothing left to write; while
    // it is borrowed its owner writes it.
    let _ = buffer.try_with(|cell| {
        if let Ok(mut lines) = cell.try_borrow_mut() {
            lines.write_lines();
        }
    });
}

thread_local! {
    /// This thread's lines on their way to stdout.
    pub(super) static STDOUT_LINES: RefCell<LineBuffer<StdoutFd>> =
        const { RefCell::new(LineBuffer::new(StdoutFd, BATCH_BYTES, BATCH_AGE)) };
}

/// Lines held back until one of the moments in the module documentation.
/// Generic over the output so tests can watch every write it makes.
pub(super) struct LineBuffer<W: io::Write> {
    pub(super) out: W,
    pub(super) pending: Vec<u8>,
    /// When the oldest pending line arrived.
    pub(super) since: Option<Instant>,
    max_bytes: usize,
    max_age: Duration,
}

impl<W: io::Write> LineBuffer<W> {
    pub(super) const fn new(out: W, max_bytes: usize, max_age: Duration) -> Self {
        Self {
            out,
            pending: Vec::new(),
            since: None,
            max_bytes,
            max_age,
        }
    }

    /// Adds `bytes`; `urgent` (a warning or an error) and a full or old batch
    /// write everything out. `now` is a parameter so a test can move time.
    pub(super) fn append(&mut self, bytes: &[u8], urgent: bool, now: Instant) {
        let since = *self.since.get_or_insert(now);
        self.pending.extend_from_slice(bytes);
        if urgent
            || self.pending.len() >= self.max_bytes
            || now.saturating_duration_since(since) >= self.max_age
        {
            self.write_lines();
        }
    }

    /// Writes every complete line with one `write_all`; a partial line waits
    /// for its end, so another thread's batch can never land inside it.
    pub(super) fn write_lines(&mut self) {
        let Some(last) = memchr::memrchr(b'\n', &self.pending) else {
            return;
        };
        let end = last + 1;
        // A failed write loses the batch, as a failed write of each line
        // would have lost that line: kept, it would grow for as long as
        // stdout stays broken.
        let _ = self.out.write_all(&self.pending[..end]);
        self.pending.drain(..end);
        if self.pending.is_empty() {
            self.since = None;
        }
        // One huge line should not pin its size to the thread for good.
        if self.pending.capacity() > 8 * self.max_bytes {
            self.pending.shrink_to(2 * self.max_bytes);
        }
    }
}

impl<W: io::Write> Drop for LineBuffer<W> {
    fn drop(&mut self) {
        // The thread is ending: a partial line is better than none.
        if !self.pending.is_empty() {
            let _ = self.out.write_all(&self.pending);
            let _ = self.out.flush();
            self.pending.clear();
        }
    }
}

/// Stdout, locked for each write so a batch goes out whole.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StdoutFd;

impl io::Write for StdoutFd {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::stdout().lock().write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Makes writers that add events to a thread's [`LineBuffer`].
pub(super) struct Batched<W: 'static + io::Write> {
    pub(super) buffer: &'static LocalKey<RefCell<LineBuffer<W>>>,
}

impl<W: io::Write> Clone for Batched<W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W: io::Write> Copy for Batched<W> {}

impl<'a, W: io::Write + Default + 'static> MakeWriter<'a> for Batched<W> {
    type Writer = BatchedWriter<W>;

    /// Without the level, assume the event matters: never hold it back.
    fn make_writer(&'a self) -> Self::Writer {
        BatchedWriter {
            buffer: self.buffer,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        BatchedWriter {
            buffer: self.buffer,
            // `Level` orders by verbosity: ERROR < WARN < INFO.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// One event's way into the thread's buffer.
pub(super) struct BatchedWriter<W: 'static + io::Write> {
    pub(super) buffer: &'static LocalKey<RefCell<LineBuffer<W>>>,
    urgent: bool,
}

impl<W: io::Write + Default> io::Write for BatchedWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let urgent = self.urgent;
        let buffered = self.buffer.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut lines) => {
                lines.append(bytes, urgent, Instant::now());
                true
            }
            Err(_) => false,
        });
        if matches!(buffered, Ok(true)) {
            return Ok(bytes.len());
        }
        // Logged while this thread's buffer is busy (re-entrantly) or after
        // it was dropped at thread exit: the line goes out on its own rather
        // than being lost or panicking.
        W::default().write_all(bytes).map(|()| bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        write_out(self.buffer);
        Ok(())
    }
}
