//! `make run` without a VM: boot the agent as PID 1 in fresh namespaces with the
//! example application, run it with a payload, show what the application received
//! and the guest's console, then terminate it.

use microvm_tests::*;
use serde_json::json;
use std::time::Duration;

fn main() {
    if !is_root() {
        eprintln!("make run needs root (it creates PID/mount/UTS/net namespaces with unshare)");
        std::process::exit(1);
    }
    let payload = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "hello from the host".into());
    let dir = scratch("demo");
    let mut g = Guest::start_in(dir.clone(), &recorder_config(&dir, all_hooks(5), &[]));
    g.wait_app_started();
    let say = |what: &str, r: &Reply| println!("host: {what} -> {} {}", r.status, r.json());
    say("POST /ready", &g.hook("ready", ""));
    let body = json!({"microvmId": "mvm-demo-0001", "runHookPayload": payload}).to_string();
    say("POST /run", &g.hook("run", &body));
    say("POST /suspend", &g.hook("suspend", ""));
    say("POST /resume", &g.hook("resume", ""));
    for call in g.recorded() {
        println!("application received: {call}");
    }
    say("POST /terminate", &g.hook("terminate", ""));
    let st = g.wait_gone(Duration::from_secs(15));
    println!("guest powered off ({st})");
    println!("--- guest console ---\n{}", g.console());
}
