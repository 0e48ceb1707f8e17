//! The binary's command line as a script sees it: output streams, wording and exit
//! codes (no VM is booted here).

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microvm-local"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_unknown_flag_is_a_usage_error_252() {
    let o = run(&["run-microvm", "--image-identifier", "x", "--frobnicate"]);
    assert_eq!(o.status.code(), Some(252));
    assert_eq!(stderr(&o), "aws: error: Unknown options: --frobnicate\n");
    assert!(o.stdout.is_empty());
    let o = run(&["run-microvm", "--timeout"]);
    assert_eq!(o.status.code(), Some(252));
    assert_eq!(
        stderr(&o),
        "aws: error: argument --timeout: expected one argument\n"
    );
}

#[test]
fn an_unknown_operation_shows_the_usage_252() {
    for args in [&["start-microvm"][..], &[]] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(252), "{args:?}");
        let e = stderr(&o);
        assert!(e.starts_with("usage: microvm-local run-microvm"), "{e}");
        assert!(e.contains("\naws: error: "), "{e}");
    }
}

#[test]
fn a_constraint_failure_is_255_with_the_cli_wording() {
    let o = run(&[
        "run-microvm",
        "--image-identifier",
        "x",
        "--maximum-duration-in-seconds",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(255));
    assert_eq!(
        stderr(&o),
        "\nParameter validation failed:\nInvalid value for parameter maximumDurationInSeconds, value: 0, valid min value: 1\n"
    );
}

#[test]
fn a_missing_image_is_254() {
    let o = run(&["run-microvm", "--image-identifier", "/nonexistent/image"]);
    assert_eq!(o.status.code(), Some(254));
    assert!(
        stderr(&o).contains("(ResourceNotFoundException)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_version_and_skeleton_go_to_stdout_with_exit_0() {
    for args in [&["--help"][..], &["run-microvm", "--help"], &["--version"]] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(!o.stdout.is_empty() && o.stderr.is_empty(), "{args:?}");
    }
    let o = run(&["run-microvm", "--generate-cli-skeleton", "output"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "PENDING");
}

/// A fresh $TMPDIR for the binary: MicroVM directories live under it.
fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("microvm-local-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_in(tmp: &std::path::Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_microvm-local"))
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

#[test]
fn exec_shell_and_cp_without_such_a_microvm_are_254() {
    let tmp = tmpdir("missing");
    let want = format!(
        "microvm-local: no running MicroVM mvm-nope (its runner keeps {})\n",
        tmp.join("microvm-local/mvm-nope").display()
    );
    for args in [
        &["exec", "--microvm-identifier", "mvm-nope", "--", "true"][..],
        &["cp", "Cargo.toml", "mvm-nope:/tmp"],
        &["cp", "mvm-nope:/etc/hostname", "."],
    ] {
        let o = run_in(&tmp, args, b"");
        assert_eq!(o.status.code(), Some(254), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), want, "{args:?}");
        assert!(o.stdout.is_empty());
    }
    // A directory whose runner is gone names no running MicroVM either.
    let dir = tmp.join("microvm-local/mvm-gone");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("owner.pid"), "999999999").unwrap();
    let o = run_in(
        &tmp,
        &["exec", "--microvm-identifier", "mvm-gone", "true"],
        b"",
    );
    assert_eq!(o.status.code(), Some(254), "{}", stderr(&o));
    // shell wants a terminal before anything else.
    let o = run_in(&tmp, &["shell", "--microvm-identifier", "mvm-nope"], b"");
    assert_eq!(o.status.code(), Some(255));
    assert!(
        stderr(&o).contains("stdin is not a terminal"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A fake agent behind a fake hybrid vsock socket, enough of the contract for the
/// binary's exec and cp paths: exec echoes stdin to stdout until its end, then says
/// "bye" on stderr and exits 3 (or is refused for `missing`); HEAD says `/dst` is a
/// directory; PUT answers the count of the tar's entries; GET sends a one-file tar.
mod fake {
    use microvm_protocol::exec::{frame, parse_header, ExecRequest, Kind, HEADER_LEN};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    pub fn start(dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        let l = UnixListener::bind(dir.join("vm.vsock")).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let s = s.unwrap();
                std::thread::spawn(move || serve(s));
            }
        });
    }

    fn line(r: &mut impl BufRead) -> String {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    }

    fn serve(s: UnixStream) {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(line(&mut r), "CONNECT 9000\n");
        w.write_all(b"OK 1073741824\n").unwrap();
        let request = line(&mut r);
        let mut headers = Vec::new();
        loop {
            let l = line(&mut r);
            if l == "\r\n" {
                break;
            }
            headers.push(l.to_ascii_lowercase());
        }
        let (method, target) = request.split_once(' ').unwrap();
        let target = target.split(' ').next().unwrap().to_string();
        match method {
            "POST" => {
                let len: usize = headers
                    .iter()
                    .find_map(|h| h.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let req: ExecRequest = serde_json::from_slice(&body).unwrap();
                if req.command[0] == "missing" {
                    let b = r#"{"error":"NotFound","message":"command \"missing\" not found"}"#;
                    write!(
                        w,
                        "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n{b}",
                        b.len()
                    )
                    .unwrap();
                    return;
                }
                w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nx-microvm-exec-pid: 5\r\n\r\n")
                    .unwrap();
                loop {
                    let mut h = [0u8; HEADER_LEN];
                    r.read_exact(&mut h).unwrap();
                    let (kind, len) = parse_header(h).unwrap();
                    let mut p = vec![0; len];
                    r.read_exact(&mut p).unwrap();
                    match kind {
                        Kind::Stdin if p.is_empty() => break,
                        Kind::Stdin => w.write_all(&frame(Kind::Stdout, &p)).unwrap(),
                        _ => {}
                    }
                }
                w.write_all(&frame(Kind::Stderr, b"bye\n")).unwrap();
                w.write_all(&frame(Kind::Exit, br#"{"exitCode":3,"reason":"exited"}"#))
                    .unwrap();
            }
            "HEAD" => {
                let t = if target.ends_with("path=/dst") {
                    "directory"
                } else {
                    "file"
                };
                if target.contains("path=/nope") {
                    w.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                } else {
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nx-microvm-file-type: {t}\r\ncontent-length: 0\r\n\r\n"
                    )
                    .unwrap();
                }
            }
            "PUT" => {
                assert!(target.ends_with("path=/dst"), "{target}");
                // Chunked body, decoded by hand.
                let mut tar = Vec::new();
                loop {
                    let n = usize::from_str_radix(line(&mut r).trim(), 16).unwrap();
                    if n == 0 {
                        line(&mut r);
                        break;
                    }
                    let mut c = vec![0; n + 2];
                    r.read_exact(&mut c).unwrap();
                    tar.extend_from_slice(&c[..n]);
                }
                let mut names = Vec::new();
                for e in tar::Archive::new(&tar[..]).entries().unwrap() {
                    names.push(e.unwrap().path().unwrap().display().to_string());
                }
                let b = serde_json::json!({"files": names.len(), "directories": 0, "links": 0, "bytes": 0, "names": names}).to_string();
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{b}",
                    b.len()
                )
                .unwrap();
            }
            "GET" => {
                let mut b = tar::Builder::new(Vec::new());
                let mut h = tar::Header::new_gnu();
                h.set_size(5);
                h.set_mode(0o640);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_700_000_000);
                h.set_cksum();
                b.append_data(&mut h, "hostname", &b"guest"[..]).unwrap();
                let tar = b.into_inner().unwrap();
                w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .unwrap();
                write!(w, "{:x}\r\n", tar.len()).unwrap();
                w.write_all(&tar).unwrap();
                w.write_all(b"\r\n0\r\n\r\n").unwrap();
            }
            m => panic!("{m}"),
        }
    }
}

#[test]
fn exec_and_cp_through_a_hybrid_socket() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tmpdir("fake");
    fake::start(&tmp.join("microvm-local/mvm-fake"));
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let o = run_in(
        &tmp,
        &["exec", "--microvm-identifier", "mvm-fake", "--", "cat"],
        &data,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(o.stdout == data, "stdout is stdin, byte for byte");
    assert_eq!(stderr(&o), "bye\n");
    let o = run_in(
        &tmp,
        &["exec", "--microvm-identifier", "mvm-fake", "missing"],
        b"",
    );
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(
        stderr(&o),
        "microvm-local: exec: command \"missing\" not found\n"
    );
    // In: a directory into the existing guest /dst.
    let src = tmp.join("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/f"), "x").unwrap();
    let o = run_in(&tmp, &["cp", src.to_str().unwrap(), "mvm-fake:/dst"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run_in(
        &tmp,
        &["cp", src.to_str().unwrap(), "mvm-fake:/nope/x"],
        b"",
    );
    assert_eq!(o.status.code(), Some(255));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // Out: a file under a new local name.
    let dst = tmp.join("copied");
    let o = run_in(
        &tmp,
        &["cp", "mvm-fake:/etc/hostname", dst.to_str().unwrap()],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dst).unwrap(), b"guest");
    let m = std::fs::metadata(&dst).unwrap();
    assert_eq!(
        (m.permissions().mode() & 0o7777, m.mtime()),
        (0o640, 1_700_000_000)
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
