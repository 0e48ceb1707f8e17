//! The guest's serial console, streamed to stderr as it grows (`guest| ...`).

use std::io::{Read, Seek};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Copy new console lines to stderr until `done`, then once more for the last ones.
pub fn stream(path: PathBuf, done: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut partial = String::new();
        loop {
            let last_round = done.load(Ordering::SeqCst);
            if let Ok(mut f) = std::fs::File::open(&path) {
                if f.seek(std::io::SeekFrom::Start(pos)).is_ok() {
                    let mut buf = Vec::new();
                    if let Ok(n) = f.read_to_end(&mut buf) {
                        pos += n as u64;
                        partial.push_str(&String::from_utf8_lossy(&buf));
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            eprint!("guest| {}", line.replace('\r', ""));
                        }
                    }
                }
            }
            if last_round {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}
