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
