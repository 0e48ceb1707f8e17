//! The application's privileges, proven from inside it: the agent as PID 1 in fresh
//! namespaces starts a small Python program (the machine's python3) as the image's
//! command, which reports what the kernel says of it (`/proc/self/status`) and what
//! opening the protected files for writing does. Nothing is ever written: an open
//! that should fail and does not is closed untouched, so a broken confinement cannot
//! change this machine (the net namespace is the guest's own in any case).

use microvm_tests::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const PROBE: &str = r#"
import json, os, sys
out = {}
for line in open("/proc/self/status"):
    k, _, v = line.partition(":")
    if k in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
        out[k] = v.split()
def opens(path):
    try:
        os.close(os.open(path, os.O_WRONLY))
        return "ok"
    except OSError as e:
        return __import__("errno").errorcode[e.errno]
for p in ("/sys/fs/cgroup/cgroup.procs", "/sys/kernel/uevent_helper",
          "/proc/sys/net/ipv4/ip_forward", "/proc/sysrq-trigger"):
    out[p] = opens(p)
# Relative to the working directory (the image may set it under /proc/sys).
out["relative"] = opens("kernel/hostname") if os.getcwd() == "/proc/sys" else None
out["cwd"] = os.getcwd()
# PID 1 (the agent) is not in this /proc at all.
out["pid1Visible"] = os.path.exists("/proc/1/status")
import ctypes, resource
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return "ok" if r >= 0 else __import__("errno").errorcode[ctypes.get_errno()]
# x86_64 numbers: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, 0), a
# clone3 with no arguments (EINVAL if let through), prlimit64 reading PID 1's limit.
out["keyctl"] = call(250, 0, -2, 0)
out["clone3"] = call(435, 0, 0)
limits = ctypes.create_string_buffer(16)
out["prlimitOther"] = call(302, 1, 7, 0, ctypes.addressof(limits))
out["prlimitSelf"] = call(302, 0, 7, 0, ctypes.addressof(limits))
# A user namespace, tried in a child that exits at once either way.
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, call(272, 0x10000000).encode())
    os._exit(0)
os.waitpid(pid, 0)
out["unshareUser"] = os.read(r, 64).decode()
# Every mount the application sees under /sys and /proc: read-only or not.
# (A mount point listed again is covered by the later mount: the last one counts.)
top = {}
for l in open("/proc/self/mountinfo"):
    f = l.split()
    top[f[4]] = f[5].split(",")
# A mount hidden under the agent's /proc (binfmt_misc on a systemd host) is listed
# but unreachable: what a path reaches is what counts.
out["writableKernelMounts"] = sorted(
    m for m, opts in top.items()
    if (m + "/").startswith(("/sys/", "/proc/sys/", "/proc/bus/", "/proc/irq/", "/proc/fs/"))
    and not os.statvfs(m).f_flag & os.ST_RDONLY
)
# What the agent writes for the application (resolver, AWS config): read-only to it
# (a create asks the mount for write access before it looks at the directory's mode).
try:
    os.close(os.open("/run/microvm/planted", os.O_WRONLY | os.O_CREAT, 0o644))
    out["runMicrovm"] = "ok"
except OSError as e:
    out["runMicrovm"] = __import__("errno").errorcode[e.errno]
out["HOME"] = os.environ.get("HOME")
out["USER_ENV"] = os.environ.get("USER")
tmp = os.path.join(sys.argv[1], "probe.tmp")
with open(tmp, "w") as f:
    json.dump(out, f)
os.rename(tmp, os.path.join(sys.argv[1], "probe.json"))
sys.stdout.flush()
import time
while True:
    time.sleep(60)
"#;

/// The Docker/containerd default set as /proc shows it.
const DEFAULT_CAPS: &str = "00000000a80425fb";

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every capability of this kernel but the twelve withheld even under ["ALL"].
fn all_but_withheld() -> String {
    let all = (1u64 << (last_cap() + 1)) - 1;
    // NET_ADMIN 12, SYS_MODULE 16, SYS_RAWIO 17, SYS_PTRACE 19, SYS_ADMIN 21,
    // SYS_BOOT 22, PERFMON 38, BPF 39.
    let withheld = [12, 16, 17, 19, 21, 22, 23, 24, 30, 34, 38, 39]
        .iter()
        .fold(0u64, |m, c| m | 1 << c);
    // Never more than this process has (the agent inherits it).
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let prm = ours
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .unwrap();
    let prm = u64::from_str_radix(prm.trim(), 16).unwrap();
    format!("{:016x}", all & !withheld & prm)
}

/// Start the probe as the image's command with `extra` config fields; its report.
fn probe(name: &str, extra: Value) -> (Guest, Value) {
    let dir = scratch(name);
    // The probe may run as an unprivileged user: its report directory is open to all.
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cfg = json!({
        "imageName": "privileges",
        "command": ["/usr/bin/python3", "-c", PROBE, out.display().to_string()],
        "logs": {"mirrorToConsole": true},
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let g = Guest::start_in(dir, &cfg);
    wait_marker(&out, "probe.json");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("probe.json")).unwrap()).unwrap();
    (g, report)
}

fn passwd_field(user: &str, i: usize) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .unwrap_or_else(|| panic!("{user} in /etc/passwd"))
        .split(':')
        .nth(i)
        .unwrap()
        .to_string()
}

/// What the seccomp filter and the application's own /proc do, whoever it runs as.
fn assert_seccomp_and_proc(r: &Value) {
    assert_eq!(r["pid1Visible"], false, "{r:#}");
    assert_eq!(r["keyctl"], "EPERM");
    assert_eq!(r["clone3"], "ENOSYS");
    assert_eq!(r["prlimitOther"], "EPERM");
    assert_eq!(r["prlimitSelf"], "ok");
    assert_eq!(r["unshareUser"], "EPERM");
    assert_eq!(r["writableKernelMounts"], json!([]));
    assert_eq!(r["runMicrovm"], "EROFS");
}

fn assert_read_only(r: &Value, denied: &str) {
    for p in [
        "/sys/fs/cgroup/cgroup.procs",
        "/sys/kernel/uevent_helper",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sysrq-trigger",
    ] {
        if Path::new(p).exists() {
            assert_eq!(r[p], denied, "{p}: {r:#}");
        }
    }
}

#[test]
fn by_default_root_keeps_the_container_default_set_and_sees_the_kernel_read_only() {
    require_root!();
    let (g, r) = probe("priv-default", json!({}));
    assert_eq!(r["Uid"], json!(["0", "0", "0", "0"]), "{r:#}");
    assert_eq!(r["Gid"], json!(["0", "0", "0", "0"]));
    assert_eq!(r["Groups"], json!([]));
    assert_eq!(r["CapEff"], json!([DEFAULT_CAPS]));
    assert_eq!(r["CapPrm"], json!([DEFAULT_CAPS]));
    assert_eq!(r["CapBnd"], json!([DEFAULT_CAPS]));
    assert_eq!(r["CapInh"], json!(["0000000000000000"]));
    assert_eq!(r["CapAmb"], json!(["0000000000000000"]));
    assert_eq!(r["NoNewPrivs"], json!(["1"]));
    // Root passes file modes: only the read-only mounts stop it.
    assert_read_only(&r, "EROFS");
    assert_eq!(r["HOME"], passwd_field("root", 5));
    assert_seccomp_and_proc(&r);
    let p = &g.status()["application"]["privileges"];
    assert_eq!(p["uid"], 0);
    assert_eq!(p["noNewPrivs"], true);
    assert_eq!(p["capabilities"].as_array().unwrap().len(), 14, "{p:#}");
    assert!(p["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("CAP_NET_BIND_SERVICE")));
    assert_eq!(p["capabilities"], p["boundingSet"]);
    assert_eq!(p["readOnly"][0], "/sys");
    // The agent itself keeps everything: the confinement is the application's.
    let agent = std::fs::read_to_string(format!("/proc/{}/status", g.agent_pid())).unwrap();
    let eff = agent.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(!eff.ends_with(DEFAULT_CAPS), "{eff}");
}

#[test]
fn a_configured_user_runs_with_no_capabilities_its_groups_and_its_home() {
    require_root!();
    let uid = passwd_field("nobody", 2);
    let gid = passwd_field("nobody", 3);
    let (g, r) = probe("priv-user", json!({"user": "nobody"}));
    assert_eq!(r["Uid"], json!([uid, uid, uid, uid]), "{r:#}");
    assert_eq!(r["Gid"], json!([gid, gid, gid, gid]));
    assert_eq!(r["Groups"], json!([gid]));
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(r[set], json!(["0000000000000000"]), "{set}");
    }
    assert_eq!(r["CapBnd"], json!([DEFAULT_CAPS]));
    assert_eq!(r["NoNewPrivs"], json!(["1"]));
    // File modes stop a user before the read-only mounts do.
    assert_read_only(&r, "EACCES");
    assert_eq!(r["HOME"], passwd_field("nobody", 5));
    assert_seccomp_and_proc(&r);
    let p = &g.status()["application"]["privileges"];
    assert_eq!(p["uid"].to_string(), uid);
    assert_eq!(p["capabilities"], json!([]));
}

#[test]
fn all_grants_every_capability_but_those_that_would_hand_over_the_guest() {
    require_root!();
    let want = all_but_withheld();
    let (_g, r) = probe("priv-all", json!({"additionalOsCapabilities": ["ALL"]}));
    assert_eq!(r["CapEff"], json!([want]), "{r:#}");
    assert_eq!(r["CapBnd"], json!([want]));
    assert_eq!(r["NoNewPrivs"], json!(["1"]));
    // Remounting needs CAP_SYS_ADMIN, which ALL withholds: still read-only.
    assert_read_only(&r, "EROFS");
    assert_seccomp_and_proc(&r);

    // Another user gets them as ambient capabilities, kept across its exec.
    let (_g, r) = probe(
        "priv-all-user",
        json!({"additionalOsCapabilities": ["ALL"], "user": "nobody:nogroup"}),
    );
    assert_eq!(r["Uid"][0], passwd_field("nobody", 2), "{r:#}");
    for set in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        assert_eq!(r[set], json!([want]), "{set}: {r:#}");
    }
}

#[test]
fn an_unknown_user_fails_the_start_saying_what_to_do() {
    require_root!();
    let dir = scratch("priv-unknown");
    let g = Guest::start_in(
        dir,
        &json!({
            "imageName": "privileges",
            "command": ["/bin/sleep", "100"],
            "user": "no-such-user",
            // Kept up to be asked: the start fails again and again.
            "onApplicationExit": "restart",
        }),
    );
    let s = g.wait_status(Duration::from_secs(10), |s| {
        s["application"]["spawnError"].is_string()
    });
    let err = s["application"]["spawnError"].as_str().unwrap();
    assert!(
        err.contains(r#"user "no-such-user" is not in the image's /etc/passwd"#),
        "{err}"
    );
    assert_eq!(s["application"]["running"], false);
    assert_eq!(s["application"]["stateReason"], "Application.ExitCode.127");
}

/// A working directory under a read-only view is entered after the views are in
/// place: a path relative to it reaches the read-only copy, not the agent's.
#[test]
fn a_working_directory_under_proc_sys_is_the_read_only_one() {
    require_root!();
    let (_g, r) = probe("priv-cwd", json!({"workingDir": "/proc/sys"}));
    assert_eq!(r["cwd"], "/proc/sys", "{r:#}");
    assert_eq!(r["relative"], "EROFS");
}

/// A restart is confined the same way.
#[test]
fn a_restarted_application_is_confined_again() {
    require_root!();
    let dir = scratch("priv-restart");
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        "n=$(ls {o} | wc -l); grep CapEff /proc/self/status > {o}/tmp-$n; \
         mv {o}/tmp-$n {o}/start-$n; [ $n -ge 1 ] && exec sleep 100; exit 3",
        o = out.display()
    );
    let g = Guest::start_in(
        dir,
        &json!({
            "imageName": "privileges",
            "command": ["/bin/sh", "-c", script],
            "user": "nobody",
            "onApplicationExit": "restart",
        }),
    );
    wait_marker(&out, "start-1");
    for n in 0..2 {
        let line = std::fs::read_to_string(out.join(format!("start-{n}"))).unwrap();
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("0000000000000000"),
            "start {n}"
        );
    }
    let s = g.status();
    assert_eq!(s["application"]["starts"], 2);
    assert_eq!(s["application"]["privileges"]["uid"], 65534);
}
