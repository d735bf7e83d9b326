//! Where log lines go: stdout, written at once from most threads, and gathered per thread on
//! the proxy's workers.
//!
//! A proxy worker writes one access-log line per request. Written one `write` each, the lines
//! cost a system call per request on the request's thread, and a log reader that falls behind
//! (a full pipe) stalls requests. So a worker thread keeps its lines in a buffer of its own and
//! writes them together: when [`FLUSH_BYTES`] have gathered, every [`FLUSH_EVERY`] (the worker
//! calls [`flush_thread`] on a timer), and when it stops. This is nginx's buffered access log:
//! a line reaches stdout at most [`FLUSH_EVERY`] late, and lines still gathered when the
//! process is killed are lost. Lines are written whole, in the order each thread wrote them.

use std::cell::RefCell;
use std::io::Write;
use std::time::Duration;

/// Bytes a worker gathers before it writes them.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// How often a worker writes what it has gathered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    /// This thread's gathered lines; `None` on threads that write at once.
    static GATHERED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// From now on, this thread's lines are gathered (a proxy worker calls it when it starts).
pub fn gather_on_this_thread() {
    GATHERED.with(|g| {
        g.borrow_mut()
            .get_or_insert_with(|| Vec::with_capacity(FLUSH_BYTES + 4096));
    });
}

/// Writes this thread's gathered lines, if any.
pub fn flush_thread() {
    GATHERED.with(|g| {
        if let Some(buf) = g.borrow_mut().as_mut() {
            write_out(buf);
        }
    });
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // A log line that cannot be written has nowhere else to go.
        let _ = std::io::stdout().lock().write_all(buf);
        buf.clear();
    }
}

/// Writes one line that `fill` appends to the buffer it is given: this thread's gathered
/// lines, or, on a thread that writes at once, a buffer of its own.
pub fn write_line(fill: impl FnOnce(&mut Vec<u8>)) {
    let fill = GATHERED.with(|g| match g.borrow_mut().as_mut() {
        Some(buf) => {
            fill(buf);
            if buf.len() >= FLUSH_BYTES {
                write_out(buf);
            }
            None
        }
        None => Some(fill),
    });
    if let Some(fill) = fill {
        let mut line = Vec::with_capacity(512);
        fill(&mut line);
        write_out(&mut line);
    }
}

/// The writer the log formatter is given for each line.
pub struct Stdout;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

/// One formatted line (the formatter writes it in one call).
pub struct Line;

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        write_line(|buf| buf.extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gathers_its_lines_until_flushed_or_full() {
        std::thread::spawn(|| {
            gather_on_this_thread();
            Line.write_all(b"one line\n").unwrap();
            let held = GATHERED.with(|g| g.borrow().as_ref().map(Vec::len));
            assert_eq!(held, Some(9), "gathered, not written");
            flush_thread();
            let held = GATHERED.with(|g| g.borrow().as_ref().map(Vec::len));
            assert_eq!(held, Some(0));
            let line = vec![b'x'; 1000];
            for _ in 0..(FLUSH_BYTES / 1000) {
                Line.write_all(&line).unwrap();
            }
            let held = GATHERED
                .with(|g| g.borrow().as_ref().map(Vec::len))
                .unwrap();
            assert!(held < FLUSH_BYTES, "written once full: {held}");
        })
        .join()
        .unwrap();
        // Other threads write at once.
        let held = GATHERED.with(|g| g.borrow().as_ref().map(Vec::len));
        assert_eq!(held, None);
    }
}
