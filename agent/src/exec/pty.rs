//! Pseudo-terminals and pipes for exec sessions: the few system calls, wrapped.

use microvm_protocol::exec::TtySize;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn winsize(size: TtySize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A pseudo-terminal of `size`; both ends close on exec (the child gets duplicates).
pub fn open(size: TtySize) -> nix::Result<Pty> {
    let p = nix::pty::openpty(Some(&winsize(size)), None)?;
    for fd in [&p.master, &p.slave] {
        fcntl(
            fd.as_fd(),
            FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    Ok(Pty {
        master: p.master,
        slave: p.slave,
    })
}

/// A pipe, (read end, write end), both close-on-exec.
pub fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
}

/// The agent's ends are polled by tokio: never blocking.
pub fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

/// Tell the terminal its new size; the kernel sends SIGWINCH to its foreground group.
pub fn resize(master: &impl AsRawFd, size: TtySize) -> std::io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives on our
    // stack for the whole call; the descriptor is borrowed open.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_is_what_the_slave_reports() {
        let p = open(TtySize { rows: 24, cols: 80 }).unwrap();
        resize(
            &p.master,
            TtySize {
                rows: 40,
                cols: 132,
            },
        )
        .unwrap();
        let mut ws = winsize(TtySize { rows: 0, cols: 0 });
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`, on our stack.
        let r = unsafe { libc::ioctl(p.slave.as_raw_fd(), libc::TIOCGWINSZ as _, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (40, 132));
    }
}
