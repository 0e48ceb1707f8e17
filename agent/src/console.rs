//! The console (the agent's stderr: a serial port in a real guest, a file or a pipe
//! elsewhere). Nothing on the runtime thread ever waits for it: lines go into a
//! bounded queue that a thread of its own writes out; when the queue is full a line is
//! dropped and counted, and the writer says how many when it catches up. Only the
//! lines that explain a panic or a power-off bypass the queue ([`critical`]), and
//! even they wait for the console no longer than [`CRITICAL_PATIENCE`].
//!
//! Writes go to descriptor 2 with `write(2)`, not through `std::io::stderr`, whose
//! lock a blocked writer would hold and whose `eprintln!` panics on EIO or EPIPE.

use microvm_protocol::status::ConsoleStatus;
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Bytes the queue may hold: seconds of a 115200-baud serial port, a moment of a pipe.
pub const QUEUE_BYTES: usize = 256 * 1024;

/// How long a critical line may wait for a console nobody drains.
pub const CRITICAL_PATIENCE: Duration = Duration::from_secs(2);

/// Where lines end up; descriptor 2 in the agent, something else in unit tests.
pub trait Out: Send + Sync + 'static {
    fn write(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

/// Descriptor 2, unbuffered.
pub struct Stderr;

impl Out for Stderr {
    fn write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        // SAFETY: descriptor 2 is open for the life of the process (the kernel or
        // boot::ensure_console gave it; nothing in the agent closes it).
        let fd = unsafe { BorrowedFd::borrow_raw(2) };
        nix::unistd::write(fd, bytes).map_err(std::io::Error::from)
    }
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Dropped since the writer last reported it.
    unreported: u64,
}

pub struct Console {
    out: Box<dyn Out>,
    capacity: usize,
    queue: Mutex<Queue>,
    ready: Condvar,
    written: AtomicU64,
    /// Lines queued or being written.
    pending: AtomicU64,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl Console {
    pub fn new(out: impl Out, capacity: usize) -> Console {
        Console {
            out: Box::new(out),
            capacity,
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            written: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            dropped_lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Queue `line`, or drop and count it when the queue is full. Never blocks.
    pub fn push(&self, line: &[u8]) {
        let Ok(mut q) = self.queue.lock() else {
            return self.count_drop(line.len());
        };
        if q.bytes + line.len() > self.capacity {
            q.unreported += 1;
            drop(q);
            return self.count_drop(line.len());
        }
        q.bytes += line.len();
        q.lines.push_back(line.to_vec());
        self.pending.fetch_add(1, Ordering::SeqCst);
        drop(q);
        self.ready.notify_one();
    }

    fn count_drop(&self, bytes: usize) {
        self.dropped_lines.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The writer's loop: take what is queued, write it, forever.
    fn drain(&self) {
        loop {
            let (batch, unreported) = {
                let Ok(mut q) = self.queue.lock() else { return };
                while q.lines.is_empty() && q.unreported == 0 {
                    q = match self.ready.wait(q) {
                        Ok(q) => q,
                        Err(_) => return,
                    };
                }
                q.bytes = 0;
                (
                    std::mem::take(&mut q.lines),
                    std::mem::take(&mut q.unreported),
                )
            };
            if unreported > 0 {
                let note = format!("microvm-agent: console too slow, {unreported} lines dropped\n");
                self.write_all(note.as_bytes());
            }
            for line in batch {
                if self.write_all(&line) {
                    self.written.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.count_drop(line.len());
                }
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Wait until everything queued is written (or dropped), at most `patience`.
    fn flush(&self, patience: Duration) {
        let deadline = std::time::Instant::now() + patience;
        while self.pending.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Write everything unless the console fails; false if it did.
    fn write_all(&self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.out.write(bytes) {
                Ok(0) => return false,
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO on a hung-up serial port, EPIPE on a closed pipe: the line is
                // lost, the agent is not.
                Err(_) => return false,
            }
        }
        true
    }

    pub fn status(&self) -> ConsoleStatus {
        ConsoleStatus {
            written_lines: self.written.load(Ordering::Relaxed),
            dropped_lines: self.dropped_lines.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
        }
    }
}

static CONSOLE: OnceLock<&'static Console> = OnceLock::new();

/// The agent's console, its writer thread started on first use.
fn console() -> &'static Console {
    CONSOLE.get_or_init(|| {
        let c: &'static Console = Box::leak(Box::new(Console::new(Stderr, QUEUE_BYTES)));
        let started = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || c.drain());
        if started.is_err() {
            // Without its writer the queue fills and everything after is counted
            // as dropped: lost lines, never a blocked agent.
            c.count_drop(0);
        }
        c
    })
}

/// Queue a line for the console; never blocks.
pub fn write(line: &[u8]) {
    console().push(line)
}

/// Give what is queued a moment to reach the console (before leaving the process).
pub fn flush(patience: Duration) {
    console().flush(patience)
}

/// A line that explains a panic or a power-off: written now, past the queue, waiting
/// for the console at most [`CRITICAL_PATIENCE`].
pub fn critical(line: &str) {
    let mut line = line.to_string();
    if !line.ends_with('\n') {
        line.push('\n');
    }
    let c = console();
    crate::sys::power::within(CRITICAL_PATIENCE, move || {
        c.write_all(line.as_bytes());
    });
}

pub fn status() -> ConsoleStatus {
    console().status()
}

/// The agent's log goes through the queue too (see `crate::log`).
#[derive(Clone, Copy)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A console that takes `accept` bytes, then blocks until released.
    #[derive(Clone, Default)]
    struct Slow {
        got: Arc<Mutex<Vec<u8>>>,
        open: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Out for Slow {
        fn write(&self, bytes: &[u8]) -> std::io::Result<usize> {
            let (m, cv) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
    }

    impl Slow {
        fn release(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    struct Broken;
    impl Out for Broken {
        fn write(&self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        }
    }

    fn start(c: Console) -> &'static Console {
        let c: &'static Console = Box::leak(Box::new(c));
        std::thread::spawn(move || c.drain());
        c
    }

    #[test]
    fn a_stuck_console_never_blocks_a_writer_and_every_line_is_written_or_counted() {
        let out = Slow::default();
        let c = start(Console::new(out.clone(), 1000));
        let t0 = std::time::Instant::now();
        for i in 0..10_000 {
            c.push(format!("line {i:05}\n").as_bytes());
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "a writer waited");
        out.release();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = c.status();
            if s.written_lines + s.dropped_lines == 10_000 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = c.status();
        // Memory is bounded by the queue (90 lines of 11 bytes) plus the batch the
        // writer took before it blocked (as much again).
        assert!(s.written_lines <= 180, "{s:?}");
        assert_eq!(s.dropped_bytes, s.dropped_lines * 11);
        let got = String::from_utf8(out.got.lock().unwrap().clone()).unwrap();
        assert!(got.contains("lines dropped"), "{got}");
        // What was written is whole lines in order.
        let lines: Vec<&str> = got.lines().filter(|l| l.starts_with("line ")).collect();
        assert_eq!(lines.len() as u64, s.written_lines);
        assert!(lines.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_failing_console_counts_instead_of_panicking() {
        let c = start(Console::new(Broken, 1000));
        c.push(b"lost\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while c.status().dropped_lines == 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.status().dropped_bytes, 5);
        assert_eq!(c.status().written_lines, 0);
    }
}
