#!/usr/bin/env python3
"""An application for a Lambda MicroVMs image, with Python's standard library only.

The hooks are plain HTTP (the Application Hook Interface): the agent POSTs to
/aws/lambda-microvms/runtime/v1/{ready,validate,run,resume,suspend,terminate} on the
hooks port (HOOKS_PORT, default 9000, all interfaces). /run carries
{"microvmId", "runHookPayload"}; the payload is kept as received.

The application's own server (PORT, default 8080), which ingress reaches:
  GET  /          a greeting
  GET  /payload   the run payload, byte-exact (404 before /run)
  POST /echo      the request body
  GET  /privileges  (only with EXAMPLE_PROBES=1, for tests) what this process may do,
                  proven by trying

stdout and stderr are the log: every hook writes a line.
"""

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOOKS_PORT = int(os.environ.get("HOOKS_PORT", "9000"))
PORT = int(os.environ.get("PORT", "8080"))
PROBES = os.environ.get("EXAMPLE_PROBES") == "1"
HOOK_PREFIX = "/aws/lambda-microvms/runtime/v1/"
HOOKS = ("ready", "validate", "run", "resume", "suspend", "terminate")

state = {"payload": None, "microvmId": None}
lock = threading.Lock()
serving = threading.Event()  # the application's server listens


def log(msg):
    print(msg, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "example-python"

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def answer(self, status, body, ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, fmt, *args):
        # The access log goes to stderr (the log pipeline captures both streams).
        sys.stderr.write("%s %s\n" % (self.server.name, fmt % args))
        sys.stderr.flush()


class HooksHandler(Handler):
    def do_POST(self):
        body = self.body()
        hook = self.path[len(HOOK_PREFIX):] if self.path.startswith(HOOK_PREFIX) else None
        if hook not in HOOKS:
            return self.answer(404, {"error": "no such hook: " + self.path})
        if hook == "ready" and not serving.is_set():
            log("hook ready: not yet, port %d is not listening" % PORT)
            return self.answer(503, {"hook": "ready", "status": "starting"})
        if hook == "run":
            try:
                # strict=False: a control character the sender left unescaped is kept.
                run = json.loads(body.decode("utf-8"), strict=False)
                payload = run.get("runHookPayload", "")
                microvm_id = run.get("microvmId", "")
                if not isinstance(payload, str) or not isinstance(microvm_id, str):
                    raise ValueError("runHookPayload and microvmId are strings")
            except (ValueError, AttributeError) as e:
                log("hook run: bad body: %s" % e)
                return self.answer(400, {"hook": "run", "error": str(e)})
            raw = payload.encode("utf-8", "surrogatepass")
            with lock:
                state["payload"] = raw
                state["microvmId"] = microvm_id
            log("run microvmId=%s payloadBytes=%d" % (microvm_id, len(raw)))
            return self.answer(200, {"hook": "run", "status": "ok", "payloadBytes": len(raw)})
        log("hook %s" % hook)
        self.answer(200, {"hook": hook, "status": "ok"})

    def do_GET(self):
        self.answer(405, {"error": "hooks are POST"})


def outcome(fn):
    """"ok", or the errno's name (EPERM, EROFS, ...) of what fn raised."""
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def write_file(path, data):
    # O_WRONLY alone (no O_TRUNC, no O_CREAT): the permission check comes first, as
    # for any writer, then the mount's read-only flag.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def privileges():
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()

    def sysctl():
        with open("/proc/sys/net/ipv4/ip_forward", "rb") as f:
            current = f.read()
        write_file("/proc/sys/net/ipv4/ip_forward", current)

    def mtu():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            fcntl.ioctl(s.fileno(), 0x8922, struct.pack("16si", b"lo", 65536))  # SIOCSIFMTU
        finally:
            s.close()

    def tmp():
        with tempfile.NamedTemporaryFile(dir="/tmp") as f:
            f.write(b"x")
            f.flush()

    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "home": os.environ.get("HOME"),
        "cwd": os.getcwd(),
        "capEff": status.get("CapEff"),
        "capPrm": status.get("CapPrm"),
        "capBnd": status.get("CapBnd"),
        "capAmb": status.get("CapAmb"),
        "noNewPrivs": int(status.get("NoNewPrivs", "0")),
        "settimeofday": outcome(lambda: time.clock_settime(time.CLOCK_REALTIME, time.time())),
        "cgroupWrite": outcome(lambda: write_file("/sys/fs/cgroup/app/memory.max", b"max")),
        "sysctlWrite": outcome(sysctl),
        "netAdmin": outcome(mtu),
        "tmpWritable": outcome(tmp) == "ok",
        # What the agent writes for this process (resolver, AWS config) it may only read.
        "runMicrovmWrite": outcome(lambda: os.close(os.open("/run/microvm/planted", os.O_WRONLY | os.O_CREAT, 0o644))),
        # The agent's own process is hidden from this /proc; module autoload is off.
        "pid1Visible": os.path.exists("/proc/1/status"),
        "modprobe": open("/proc/sys/kernel/modprobe").read() if os.path.exists("/proc/sys/kernel/modprobe") else None,
    }


class AppHandler(Handler):
    def do_GET(self):
        self.body()
        if self.path == "/":
            return self.answer(200, "hello from example-python\n", "text/plain; charset=utf-8")
        if self.path == "/payload":
            with lock:
                payload = state["payload"]
            if payload is None:
                return self.answer(404, {"error": "no /run yet"})
            return self.answer(200, payload, "application/octet-stream")
        if self.path == "/privileges" and PROBES:
            return self.answer(200, privileges())
        self.answer(404, {"error": "not found: " + self.path})

    do_HEAD = do_GET

    def do_POST(self):
        body = self.body()
        if self.path == "/echo":
            return self.answer(200, body, self.headers.get("Content-Type") or "application/octet-stream")
        self.answer(404, {"error": "not found: " + self.path})


def serve(name, port, handler):
    server = ThreadingHTTPServer(("", port), handler)  # listens once constructed
    server.name = name
    threading.Thread(target=server.serve_forever, args=(0.1,), name=name, daemon=True).start()
    return server


def main():
    # SIGTERM (the agent stopping the application) and SIGINT are blocked in every
    # thread (the servers' threads inherit the mask) and taken by the main thread
    # with sigwait: a process-directed signal would otherwise land in any thread,
    # and Python runs its handlers only when the main thread next wakes.
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    # The hooks first, so that /ready can say "not yet" (503) while the application
    # gets ready: STARTUP_SECONDS stands for whatever a real one loads before it
    # serves (a model, a cache); the host polls /ready meanwhile.
    hooks = serve("hooks", HOOKS_PORT, HooksHandler)
    time.sleep(float(os.environ.get("STARTUP_SECONDS", "0")))
    app = serve("app", PORT, AppHandler)
    serving.set()
    log("example-python: app on :%d, hooks on :%d, uid %d" % (PORT, HOOKS_PORT, os.getuid()))
    print("example-python: stderr works too", file=sys.stderr, flush=True)
    sig = signal.sigwait(stopping)
    log("example-python: %s, stopping" % signal.Signals(sig).name)
    hooks.shutdown()
    app.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
