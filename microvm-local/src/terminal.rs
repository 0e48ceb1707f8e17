//! The local terminal for `shell` and `exec --tty`: raw mode (every key, Ctrl-C
//! included, goes to the remote program as a byte), restored when the guard drops,
//! and the window size.

use microvm_protocol::exec::TtySize;
use nix::sys::termios::{self, SetArg, Termios};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Raw mode on stdin's terminal while this lives; the saved settings come back on
/// drop (every return and unwinding path; signals are turned into returns by the
/// caller, see `attach`).
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(&stdin).map_err(io::Error::from)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: output already written is shown under the raw settings it was
        // meant for before the terminal goes back to cooked.
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The window size of the terminal on `fd`, if it is one (and reports a size).
fn size_of(fd: RawFd) -> Option<TtySize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a
    // live, properly aligned one; a descriptor that is no terminal fails with ENOTTY.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(TtySize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The local terminal's size: stdin's, else stdout's, else stderr's.
pub fn size() -> Option<TtySize> {
    size_of(io::stdin().as_raw_fd())
        .or_else(|| size_of(io::stdout().as_raw_fd()))
        .or_else(|| size_of(io::stderr().as_raw_fd()))
}

/// The size asked for when no local terminal reports one.
pub const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };
