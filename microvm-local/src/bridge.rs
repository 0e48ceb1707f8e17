//! `microvm-local bridge HOST:PORT`: what QEMU runs for each guest connection to a
//! forwarded endpoint (user-mode networking's `guestfwd=...-cmd:`). Its stdin and
//! stdout are the guest's connection; it copies both ways to a TCP connection on this
//! machine. (The `-tcp:` form of guestfwd opens one stream at QEMU start and serves a
//! single connection; there is no socat here.) It never writes to stderr: QEMU hands
//! it the guest's socket there too.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

/// Run the bridge; the exit code.
pub fn main(addr: &str) -> i32 {
    let Ok(upstream) = TcpStream::connect(addr) else {
        // The guest sees its connection closed: the forward's target is not there.
        return 1;
    };
    let Ok(down) = upstream.try_clone() else {
        return 1;
    };
    let to_host = std::thread::spawn(move || {
        let mut up = upstream;
        let _ = copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(Shutdown::Write);
    });
    let mut down = down;
    let _ = copy(&mut down, &mut std::io::stdout().lock());
    // The host side is done: the guest must see its end now (a client that waits for
    // EOF would otherwise wait for us while we wait for it), whatever is still to come
    // from the guest.
    // SAFETY: shutdown(2) on our own standard output, which QEMU made a socket.
    unsafe {
        libc::shutdown(1, libc::SHUT_WR);
    }
    drop(to_host);
    0
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return to.flush();
        }
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
