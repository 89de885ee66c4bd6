// A @grpc/grpc-js client over raw bytes, for tests/interop/test_grpcjs.py (run with
// NODE_PATH naming the node_modules scripts/install-grpcjs.sh fills).
//
// argv[2]: JSON {target, options {channel arg: value}, tls {ca, key, cert} (file paths;
// key and cert optional), ops [...]}. Each op: {kind: unary|sstream|cstream|bidi, method,
// req (unary, sstream) | reqs [...] (cstream, bidi), reqBytes (instead of req: that many
// 'a's), timeoutMs, metadata {key: value} (a key ending -bin: the value's latin1 bytes),
// cancelAfterMs, delayMs (wait that long before starting), holdOpen (cstream, bidi: write
// reqs but do not half-close)}. The ops run one after the other, or all at once with
// spec.concurrent; one JSON line per op, in op order: {code, details, trailers {key:
// value}, headers {key: value} (the response headers, when sent), responses [...],
// elapsedMs} (messages and binary values as latin1 strings). Exits 0 when every op ended,
// 2 on a crash.
'use strict';
const grpc = require('@grpc/grpc-js');
const fs = require('fs');

const spec = JSON.parse(process.argv[2]);
const creds = !spec.tls ? grpc.credentials.createInsecure() : grpc.credentials.createSsl(
  fs.readFileSync(spec.tls.ca),
  spec.tls.key ? fs.readFileSync(spec.tls.key) : null,
  spec.tls.cert ? fs.readFileSync(spec.tls.cert) : null);
const client = new grpc.Client(spec.target, creds, spec.options || {});
const id = (x) => x;
const bytes = (s) => Buffer.from(s, 'latin1');

function metadataOut(md) {
  const out = {};
  for (const [k, v] of Object.entries(md ? md.getMap() : {}))
    out[k] = Buffer.isBuffer(v) ? v.toString('latin1') : v;
  return out;
}

function run(op) {
  return new Promise((resolve) => {
    const out = {responses: []};
    const opts = {};
    if (op.timeoutMs !== undefined) opts.deadline = Date.now() + op.timeoutMs;
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(op.metadata || {}))
      md.add(k, k.endsWith('-bin') ? bytes(v) : v);
    const req = op.reqBytes !== undefined ? Buffer.alloc(op.reqBytes, 'a') : bytes(op.req || '');
    const got = (err, resp) => { if (resp) out.responses.push(resp.toString('latin1')); };
    let call;
    const started = Date.now();
    if (op.kind === 'unary') {
      call = client.makeUnaryRequest(op.method, id, id, req, md, opts, got);
    } else if (op.kind === 'sstream') {
      call = client.makeServerStreamRequest(op.method, id, id, req, md, opts);
    } else if (op.kind === 'cstream') {
      call = client.makeClientStreamRequest(op.method, id, id, md, opts, got);
    } else {
      call = client.makeBidiStreamRequest(op.method, id, id, md, opts);
    }
    if (op.kind === 'sstream' || op.kind === 'bidi') {
      call.on('data', (d) => out.responses.push(d.toString('latin1')));
      call.on('error', () => {});  // the status says it
    }
    if (op.kind === 'cstream' || op.kind === 'bidi') {
      for (const r of op.reqs || []) call.write(bytes(r));
      if (!op.holdOpen) call.end();
    }
    call.on('metadata', (m) => { out.headers = metadataOut(m); });
    call.on('status', (st) => {
      out.code = st.code;
      out.details = st.details;
      out.trailers = metadataOut(st.metadata);
      out.elapsedMs = Date.now() - started;
      out.startedAt = started;
      setImmediate(() => resolve(out));  // after the last 'data' and the callback
    });
    if (op.cancelAfterMs !== undefined) setTimeout(() => call.cancel(), op.cancelAfterMs);
  });
}

(async () => {
  const later = (op) => new Promise((r) => setTimeout(r, op.delayMs || 0)).then(() => run(op));
  const results = [];
  if (spec.concurrent) results.push(...await Promise.all(spec.ops.map(later)));
  else for (const op of spec.ops) results.push(await later(op));
  const lines = results.map((r) => JSON.stringify(r) + '\n');
  client.close();
  // exit once stdout (a pipe: written asynchronously) has taken every line
  process.stdout.write(lines.join(''), () => process.exit(0));
})().catch((e) => {
  process.stdout.write(JSON.stringify({fatal: String(e)}) + '\n', () => process.exit(2));
});
