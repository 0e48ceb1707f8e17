//! `run-microvm`: boot the image, run the image-build hooks, send `/run`, print the
//! RunMicrovm output, then play the actions (or wait), and always end with the
//! MicroVM terminated and nothing left running.

use crate::params::{self, CliError, Invocation, RunArgs};
use crate::session::{report, Host, IdleSettings};
use crate::vm::{Image, NetOpts, Vm, VmOpts};
use crate::{cli, console, credentials, host, signals};
use microvm_protocol::{connectors, PROTOCOL_VERSION};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The whole program: a command line in, an exit code out.
pub fn main<I, T>(argv: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    // Not an operation of the CLI: what QEMU runs per forwarded guest connection.
    if argv.get(1).is_some_and(|a| a == "bridge") {
        return match argv.get(2).and_then(|a| a.to_str()) {
            Some(addr) => crate::bridge::main(addr),
            None => 2,
        };
    }
    match cli::parse_from(argv) {
        Ok(Invocation::Skeleton(kind)) => {
            print_json(&params::skeleton(&kind));
            0
        }
        Ok(Invocation::Run(a)) => run(&a),
        Ok(Invocation::Snapshot(dir)) => snapshot_image(&dir),
        Ok(Invocation::Exec(a)) => crate::attach::main(&a),
        Ok(Invocation::Cp(a)) => crate::cp::main(&a),
        Ok(Invocation::Serve(a)) => crate::serve::main(*a),
        Err(e @ CliError::Info(_)) => {
            println!("{e}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `snapshot-image`: the image-build phase, then the snapshot beside the image.
fn snapshot_image(dir: &std::path::Path) -> i32 {
    signals::install_handlers();
    // Beside the image: the VM's overlay becomes the image's disk by a rename on the
    // same file system (a copy across them, e.g. from a tmpfs /tmp).
    let scratch = dir.join(".snapshot-scratch");
    let r = crate::vm::snapshot::build(dir, &scratch, None);
    let _ = std::fs::remove_dir_all(&scratch);
    match r {
        Ok(s) => {
            print_json(&json!({
                "imageIdentifier": dir.display().to_string(),
                "snapshot": s,
            }));
            0
        }
        Err(e) => {
            eprintln!("microvm-local: snapshot of {}: {e}", dir.display());
            255
        }
    }
}

fn run(a: &RunArgs) -> i32 {
    for w in &a.warnings {
        eprintln!("{w}");
    }
    signals::install_handlers();
    // Validation made it a string; a missing one would be found missing below.
    let image_path = a
        .request
        .get("imageIdentifier")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let image = match Image::open(std::path::Path::new(image_path)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("An error occurred (ResourceNotFoundException) when calling the RunMicrovm operation: {e}");
            return 254;
        }
    };
    if a.json_errors {
        crate::session::report_errors_as_json();
    }
    let microvm_id = match &a.microvm_id {
        // Chosen by `serve`; it names a directory, so it must be one name.
        Some(id) if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            eprintln!("microvm-local: --microvm-id {id:?}: letters, digits and '-' only");
            return 252;
        }
        Some(id) => id.clone(),
        None => host::microvm_id(),
    };
    let base = std::env::temp_dir().join("microvm-local");
    for gone in crate::vm::sweep_stale(&base) {
        eprintln!(
            "microvm-local: removed {}, left by a runner that is gone",
            gone.display()
        );
    }
    let dir = base.join(&microvm_id);
    // Hard timeout: whatever happens, the run ends.
    let timeout = Duration::from_secs(a.timeout_s);
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("microvm-local: --timeout of {}s reached", timeout.as_secs());
        signals::stop();
    });
    let mut opts = VmOpts {
        cold_boot: a.cold_boot,
        // Each MicroVM its own CID, as on the platform (the backend is per VM, so
        // nothing here needs it; the guest must cope with whatever it is given).
        cid: host::guest_cid(),
        ..VmOpts::default()
    };
    if image.arch == crate::vm::Arch::X86_64
        && image.initrd.is_some()
        && image.snapshot.is_none()
        && !a.cold_boot
    {
        eprintln!(
            "microvm-local: {image_path} has no snapshot (`microvm-local snapshot-image --image-identifier {image_path}` makes one): booting it cold, with its image-build hooks"
        );
    }
    match network(a) {
        Ok(net) => opts.net = net,
        Err(e) => {
            eprintln!("microvm-local: {e}");
            return 255;
        }
    }
    let vm = match Vm::boot(&image, &opts, &dir) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("microvm-local: boot failed: {e}");
            return 255;
        }
    };
    say_protocol(&vm, image.arch);
    if vm.from_snapshot {
        eprintln!(
            "microvm-local: restored from the image's snapshot of {} ({} ms to the agent's announcement)",
            image.snapshot.as_ref().map_or("", |s| s.created_at.as_str()),
            vm.boot_time.as_millis()
        );
    }
    let idle = a
        .request
        .get("idlePolicy")
        .map(IdleSettings::from_parameter);
    let role = a
        .request
        .get("executionRoleArn")
        .map(|_| credentials::Source::pick(|k| std::env::var(k).ok(), a.credentials_lifetime_s));
    let host = Arc::new(Host::new(vm, idle).with_role(role));
    let console_done = Arc::new(AtomicBool::new(false));
    let console = console::stream(dir.join("serial.log"), console_done.clone());
    let code = drive(&host, a, &microvm_id, &image, image_path);
    console_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = console.join();
    code
}

/// The guest's NIC: none without forwards or INTERNET_EGRESS; restricted to the
/// forwards unless INTERNET_EGRESS asks for full egress.
fn network(a: &RunArgs) -> Result<Option<NetOpts>, String> {
    let open_egress = a
        .request
        .get("egressNetworkConnectors")
        .and_then(Value::as_array)
        .is_some_and(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .any(|c| connectors::managed(c) == Some(connectors::Managed::InternetEgress))
        });
    if a.forwards.is_empty() && !open_egress {
        return Ok(None);
    }
    let bridge = std::env::current_exe().map_err(|e| format!("the runner's own path: {e}"))?;
    Ok(Some(NetOpts {
        forwards: a.forwards.clone(),
        bridge,
        open_egress,
    }))
}

/// Which contract the agent speaks, when it says (agents before the versioned
/// contract announce without it, and are driven all the same).
fn say_protocol(vm: &Vm, arch: crate::vm::Arch) {
    let Some(v) = vm.protocol_version() else {
        return;
    };
    let agent = vm.agent_version().unwrap_or("unknown");
    eprintln!(
        "microvm-local: {} guest announced in {} ms: agent {agent}, protocol version {v}",
        arch.model_name(),
        vm.boot_time.as_millis()
    );
    if v != u64::from(PROTOCOL_VERSION) {
        eprintln!("microvm-local: warning: this runner speaks protocol version {PROTOCOL_VERSION}");
    }
}

/// The image-build phase a platform runs before snapshotting: ready, then validate,
/// each polled while the application answers 503. A VM restored from the image's
/// snapshot has been through it.
fn image_build_hooks(host: &Arc<Host>, image: &Image) -> Result<(), i32> {
    if host.vm.from_snapshot {
        return Ok(());
    }
    let limits = crate::vm::snapshot::build_hook_timeouts(&image.dir);
    crate::vm::snapshot::image_build_hooks(&host.vm, limits, signals::stopping).map_err(|e| {
        eprintln!("microvm-local: {e}");
        if signals::stopping() {
            130
        } else {
            255
        }
    })
}

fn drive(host: &Arc<Host>, a: &RunArgs, microvm_id: &str, image: &Image, image_path: &str) -> i32 {
    let req = &a.request;
    let endpoint = match Endpoint::bind(a) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("microvm-local: endpoint: {e}");
            return finish(host, 255);
        }
    };
    if let Err(code) = image_build_hooks(host, image) {
        return finish(host, code);
    }
    let mut envelope = a.envelope.clone();
    envelope.microvm_id = Some(microvm_id.to_string());
    envelope.region = Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()));
    envelope.clock = Some(host::clock());
    envelope.entropy = Some(host::entropy_b64());
    // Test-only, in the envelope: a snapshot froze the kernel command line.
    envelope.test_min_idle_seconds = a.test_min_idle_seconds;
    if let Some(url) = &a.logs_endpoint {
        envelope.endpoints = Some(microvm_protocol::run::Endpoints {
            logs: Some(url.clone()),
        });
    }
    if let Some(c) = host.next_credentials() {
        eprintln!(
            "microvm-local: execution role: credentials {} ({}, expire {}); rotated when the agent warns of their expiry",
            host.role_source().map_or("", |s| s.describe()),
            c.access_key_id,
            c.expiration.as_deref().unwrap_or("never")
        );
        envelope.credentials = Some(c);
    }
    let started_at = host::now_rfc3339();
    let sent = serde_json::to_string(&envelope)
        .map_err(std::io::Error::other)
        .and_then(|body| host.vm.hook("run", &body));
    let r = match sent {
        Ok(r) => r,
        Err(e) => {
            eprintln!("microvm-local: /run: {e}");
            return finish(host, 255);
        }
    };
    let mut out = json!({
        "microvmId": microvm_id,
        "imageArn": image_path,
        "state": r.json()["state"].clone(),
        "endpoint": endpoint.url(),
        "startedAt": started_at,
    });
    for k in [
        "executionRoleArn",
        "idlePolicy",
        "maximumDurationInSeconds",
        "ingressNetworkConnectors",
        "egressNetworkConnectors",
        "clientToken",
    ] {
        if let Some(v) = req.get(k) {
            out[k] = v.clone();
        }
    }
    if r.status != 200 {
        out["state"] = json!("FAILED");
        out["stateReason"] = json!(format!("Hook.Run.{}", r.status));
        print_json(&out);
        return finish(host, 255);
    }
    print_json(&out);
    let _ = std::io::stdout().flush();
    if envelope.shell_ingress {
        eprintln!(
            "microvm-local: shell ingress: `microvm-local exec --microvm-identifier {microvm_id} -- COMMAND`, `shell`, `cp` reach this MicroVM"
        );
    }
    {
        let h = host.clone();
        std::thread::spawn(move || match endpoint {
            Endpoint::Tcp(l) => h.serve_endpoint(l.incoming()),
            Endpoint::Unix(l, _) => h.serve_endpoint(l.incoming()),
        });
        let h = host.clone();
        std::thread::spawn(move || h.poll_events());
    }
    if a.interactive {
        interactive(host);
    } else if !a.then.is_empty() {
        for action in &a.then {
            if signals::stopping() {
                break;
            }
            report(action, host.act(action));
        }
    } else {
        // wait_exit sleeps between polls: this loop is not a spin.
        while !signals::stopping() {
            if host.vm.wait_exit(Duration::from_millis(200)) {
                break;
            }
        }
    }
    finish(host, 0)
}

/// Where clients reach the MicroVM: a TCP port on 127.0.0.1, or (for `serve`) a
/// Unix socket behind the server's authenticating proxy.
enum Endpoint {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, std::path::PathBuf),
}

impl Endpoint {
    fn bind(a: &RunArgs) -> Result<Endpoint, String> {
        match &a.endpoint_socket {
            Some(p) => {
                let _ = std::fs::remove_file(p);
                std::os::unix::net::UnixListener::bind(p)
                    .map(|l| Endpoint::Unix(l, p.clone()))
                    .map_err(|e| format!("{}: {e}", p.display()))
            }
            None => std::net::TcpListener::bind(("127.0.0.1", a.endpoint_port))
                .map(Endpoint::Tcp)
                .map_err(|e| format!("port {}: {e}", a.endpoint_port)),
        }
    }

    fn url(&self) -> String {
        match self {
            Endpoint::Tcp(l) => format!(
                "http://127.0.0.1:{}",
                l.local_addr().map(|a| a.port()).unwrap_or(0)
            ),
            Endpoint::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

fn interactive(host: &Arc<Host>) {
    eprintln!("microvm-local: commands: suspend, resume, terminate, status, sleep=N, quit");
    // stdin is read on a thread of its own: a signal must end the session even while
    // nobody types (reads restart after the handler, so the loop would not notice).
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => line,
            // A guest gone by itself (powered off, QEMU crashed, terminated after its
            // suspended duration) ends the session: `serve` learns it by our exit.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                if host.terminated()
                    || (!host.suspended() && host.vm.wait_exit(Duration::ZERO)) =>
            {
                break
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !signals::stopping() => continue,
            Err(_) => break,
        };
        let cmd = line.trim();
        if cmd == "quit" || signals::stopping() {
            break;
        }
        if cmd.is_empty() {
            continue;
        }
        report(cmd, host.act(cmd));
        if cmd == "terminate" {
            break;
        }
    }
}

/// Terminate cleanly if the guest still runs, then make sure nothing outlives us.
fn finish(host: &Arc<Host>, code: i32) -> i32 {
    let code = finish_vm(host, code);
    if host.vm.lost() {
        eprintln!("microvm-local: the MicroVM was lost (see above)");
        return if code == 0 { 255 } else { code };
    }
    code
}

fn finish_vm(host: &Arc<Host>, code: i32) -> i32 {
    if host.suspended() || !host.vm.wait_exit(Duration::from_millis(10)) {
        if !host.terminated() {
            report("terminate", host.terminate());
        }
        if host.vm.saved() {
            // Nothing runs to wait for; the memory file goes with the VM's directory.
            eprintln!("microvm-local: the suspended MicroVM could not be restored to terminate it; discarding it");
        } else if !host.vm.wait_exit(Duration::from_secs(20)) {
            eprintln!("microvm-local: guest did not power off; killing QEMU");
        }
    }
    code
}
