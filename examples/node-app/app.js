#!/usr/bin/env node
// An application for a Lambda MicroVMs image, with Node's http module only (Node 18,
// no npm packages).
//
// The hooks are plain HTTP (the Application Hook Interface): the agent POSTs to
// /aws/lambda-microvms/runtime/v1/{ready,validate,run,resume,suspend,terminate} on the
// hooks port (HOOKS_PORT, default 9000, all interfaces). /run carries
// {"microvmId", "runHookPayload"}; the payload is kept as received.
//
// The application's own server (PORT, default 8080), which ingress reaches:
//   GET  /         a greeting
//   GET  /payload  the run payload, byte-exact (404 before /run)
//   POST /echo     the request body
//
// stdout and stderr are the log: every hook writes a line.
'use strict';
const http = require('http');

const HOOKS_PORT = Number(process.env.HOOKS_PORT || 9000);
const PORT = Number(process.env.PORT || 8080);
const HOOK_PREFIX = '/aws/lambda-microvms/runtime/v1/';
const HOOKS = new Set(['ready', 'validate', 'run', 'resume', 'suspend', 'terminate']);

let payload = null; // the run payload's UTF-8 bytes, once /run came
let serving = false; // the application's server listens

function body(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function answer(res, status, data, type) {
  let bytes;
  if (Buffer.isBuffer(data)) bytes = data;
  else if (typeof data === 'string') bytes = Buffer.from(data, 'utf8');
  else bytes = Buffer.from(JSON.stringify(data), 'utf8');
  res.writeHead(status, {
    'Content-Type': type || 'application/json',
    'Content-Length': bytes.length,
  });
  res.end(bytes);
}

function access(name, req, status) {
  // The access log goes to stderr (the log pipeline captures both streams).
  console.error(`${name} ${req.method} ${req.url} ${status}`);
}

async function hooks(req, res) {
  const data = await body(req);
  const hook = req.url.startsWith(HOOK_PREFIX) ? req.url.slice(HOOK_PREFIX.length) : null;
  if (req.method !== 'POST') return answer(res, 405, { error: 'hooks are POST' });
  if (!HOOKS.has(hook)) return answer(res, 404, { error: `no such hook: ${req.url}` });
  if (hook === 'ready' && !serving) {
    console.log(`hook ready: not yet, port ${PORT} is not listening`);
    return answer(res, 503, { hook, status: 'starting' });
  }
  if (hook === 'run') {
    let run;
    try {
      run = JSON.parse(data.toString('utf8'));
      if (typeof run.runHookPayload !== 'string' || typeof run.microvmId !== 'string') {
        throw new Error('runHookPayload and microvmId are strings');
      }
    } catch (e) {
      console.log(`hook run: bad body: ${e.message}`);
      return answer(res, 400, { hook, error: e.message });
    }
    payload = Buffer.from(run.runHookPayload, 'utf8');
    console.log(`run microvmId=${run.microvmId} payloadBytes=${payload.length}`);
    return answer(res, 200, { hook, status: 'ok', payloadBytes: payload.length });
  }
  console.log(`hook ${hook}`);
  answer(res, 200, { hook, status: 'ok' });
}

async function app(req, res) {
  const data = await body(req);
  if (req.method === 'GET' && req.url === '/') {
    return answer(res, 200, 'hello from example-node\n', 'text/plain; charset=utf-8');
  }
  if (req.method === 'GET' && req.url === '/payload') {
    if (payload === null) return answer(res, 404, { error: 'no /run yet' });
    return answer(res, 200, payload, 'application/octet-stream');
  }
  if (req.method === 'POST' && req.url === '/echo') {
    return answer(res, 200, data, req.headers['content-type'] || 'application/octet-stream');
  }
  answer(res, 404, { error: `not found: ${req.url}` });
}

function server(name, handler) {
  return http.createServer((req, res) => {
    res.on('finish', () => access(name, req, res.statusCode));
    handler(req, res).catch((e) => {
      console.error(`${name}: ${e.stack || e}`);
      if (!res.headersSent) answer(res, 500, { error: String(e) });
    });
  });
}

const appServer = server('app', app);
const hooksServer = server('hooks', hooks);
// The hooks first, so that /ready can say "not yet" (503) while the application
// gets ready: STARTUP_SECONDS stands for whatever a real one loads before it serves.
hooksServer.listen(HOOKS_PORT, '0.0.0.0', () => {
  setTimeout(() => {
    appServer.listen(PORT, '0.0.0.0', () => {
      serving = true;
      console.log(`example-node: app on :${PORT}, hooks on :${HOOKS_PORT}, uid ${process.getuid()}`);
      console.error('example-node: stderr works too');
    });
  }, 1000 * Number(process.env.STARTUP_SECONDS || 0));
});

function stop(signal) {
  console.log(`example-node: ${signal}, stopping`);
  hooksServer.close();
  appServer.close();
  // Idle keep-alive connections would hold close() open: the process ends now.
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
