// A @grpc/grpc-js server over raw bytes, for tests/interop/test_grpcjs.py (run with
// NODE_PATH naming the node_modules scripts/install-grpcjs.sh fills). Binds 127.0.0.1 on
// a free port, plaintext, and prints "PORT <n>" once bound; argv[2], when given, is JSON
// of the server's options (channel arguments such as grpc.max_connection_age_ms).
// Service interop.Js:
//   Unary         "<req>" -> "js|<req>"; a request header x-echo comes back as a trailer
//   ServerStream  "<n>"   -> n messages "js|0".."js|<n-1>"
//   ClientStream  requests joined with ',' after "js|"
//   Bidi          "js|<req>" for each request
//   Fail          "<code>" -> that status code (a number), details "asked to fail", and the
//                 same as a google.rpc.Status in the trailer grpc-status-details-bin
//   Deadline      the milliseconds left of the call's deadline when it came, or "none"
//   Flaky         "<key>:<n>:<code>[:<pushback>]" -> the first n calls of <key> end with that
//                 status code (details "flaky", trailer grpc-retry-pushback-ms: <pushback>
//                 when given), the next "js|<calls of key so far>"
//   Sleep         "<ms>"  -> "js|slept" that many milliseconds later
//   FlakyStream   as Flaky, server-streaming: a failure before any message, then the two
//                 messages "js|<calls of key so far>", "js|end"
//   Headers       the request's metadata as JSON {key: [value...]} (-bin values as latin1)
// A line "SHUTDOWN" on stdin starts a graceful shutdown (GOAWAY; calls in flight finish),
// a line "FORCE" a forced one (forceShutdown: every connection destroyed, calls in flight
// ended); either prints "STOPPED" once done.
'use strict';
const grpc = require('@grpc/grpc-js');

const id = (x) => x;
const kinds = {Unary: [false, false], ServerStream: [false, true], ClientStream: [true, false],
               Bidi: [true, true], Fail: [false, false], Deadline: [false, false],
               Flaky: [false, false], Sleep: [false, false],
               Headers: [false, false],
               FlakyStream: [false, true]};
const service = {};
for (const [name, [requestStream, responseStream]] of Object.entries(kinds)) {
  service[name] = {path: `/interop.Js/${name}`, requestStream, responseStream,
                   requestSerialize: id, requestDeserialize: id, responseSerialize: id,
                   responseDeserialize: id, originalName: name};
}
const text = (b) => b.toString('latin1');
const bytes = (s) => Buffer.from(s, 'latin1');

const flaky = new Map();
const server = new grpc.Server(process.argv[2] ? JSON.parse(process.argv[2]) : {});
server.addService(service, {
  Unary: (call, done) => {
    const trailers = new grpc.Metadata();
    for (const v of call.metadata.get('x-echo')) trailers.add('x-echo', v);
    done(null, bytes('js|' + text(call.request)), trailers);
  },
  ServerStream: (call) => {
    for (let i = 0; i < parseInt(text(call.request) || '0', 10); i++) call.write(bytes('js|' + i));
    call.end();
  },
  ClientStream: (call, done) => {
    const parts = [];
    call.on('data', (d) => parts.push(text(d)));
    call.on('end', () => done(null, bytes('js|' + parts.join(','))));
  },
  Bidi: (call) => {
    call.on('data', (d) => call.write(bytes('js|' + text(d))));
    call.on('end', () => call.end());
  },
  Fail: (call, done) => {
    const code = parseInt(text(call.request), 10);
    // a google.rpc.Status (code 1, message 2) as grpc-status-details-bin, as rich errors send it
    const message = bytes('asked to fail');
    const status = Buffer.concat([Buffer.from([0x08, code, 0x12, message.length]), message]);
    const metadata = new grpc.Metadata();
    metadata.add('grpc-status-details-bin', status);
    done({code, details: 'asked to fail', metadata});
  },
  Deadline: (call, done) => {
    const deadline = call.getDeadline();
    const left = deadline === Infinity ? 'none' : String(new Date(deadline).getTime() - Date.now());
    done(null, bytes(left));
  },
  Sleep: (call, done) => {
    setTimeout(() => done(null, bytes('js|slept')), parseInt(text(call.request), 10));
  },
  Headers: (call, done) => {
    const out = {};
    for (const [k, v] of Object.entries(call.metadata.toJSON()))
      out[k] = v.map((x) => (Buffer.isBuffer(x) ? x.toString('latin1') : x));
    done(null, bytes(JSON.stringify(out)));
  },
  FlakyStream: (call) => {
    const [key, n, code, pushback] = text(call.request).split(':');
    const calls = (flaky.get(key) || 0) + 1;
    flaky.set(key, calls);
    if (calls > parseInt(n, 10)) {
      call.write(bytes('js|' + calls));
      call.write(bytes('js|end'));
      return call.end();
    }
    const metadata = new grpc.Metadata();
    if (pushback !== undefined) metadata.add('grpc-retry-pushback-ms', pushback);
    call.emit('error', {code: parseInt(code, 10), details: 'flaky', metadata});
  },
  Flaky: (call, done) => {
    const [key, n, code, pushback] = text(call.request).split(':');
    const calls = (flaky.get(key) || 0) + 1;
    flaky.set(key, calls);
    if (calls > parseInt(n, 10)) return done(null, bytes('js|' + calls));
    const metadata = new grpc.Metadata();
    if (pushback !== undefined) metadata.add('grpc-retry-pushback-ms', pushback);
    done({code: parseInt(code, 10), details: 'flaky', metadata});
  },
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.log('ERR ' + err); process.exit(2); }
  console.log('PORT ' + port);
});
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  if (d.includes('SHUTDOWN')) server.tryShutdown(() => console.log('STOPPED'));
  if (d.includes('FORCE')) { server.forceShutdown(); console.log('STOPPED'); }
});
