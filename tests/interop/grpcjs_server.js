// A @grpc/grpc-js server over raw bytes, for tests/interop/test_grpcjs.py (run with
// NODE_PATH naming the node_modules scripts/install-grpcjs.sh fills). Binds 127.0.0.1 on
// a free port, plaintext, and prints "PORT <n>" once bound. Service interop.Js:
//   Unary         "<req>" -> "js|<req>"; a request header x-echo comes back as a trailer
//   ServerStream  "<n>"   -> n messages "js|0".."js|<n-1>"
//   ClientStream  requests joined with ',' after "js|"
//   Bidi          "js|<req>" for each request
//   Fail          "<code>" -> that status code (a number), details "asked to fail"
//   Deadline      the milliseconds left of the call's deadline when it came, or "none"
'use strict';
const grpc = require('@grpc/grpc-js');

const id = (x) => x;
const kinds = {Unary: [false, false], ServerStream: [false, true], ClientStream: [true, false],
               Bidi: [true, true], Fail: [false, false], Deadline: [false, false]};
const service = {};
for (const [name, [requestStream, responseStream]] of Object.entries(kinds)) {
  service[name] = {path: `/interop.Js/${name}`, requestStream, responseStream,
                   requestSerialize: id, requestDeserialize: id, responseSerialize: id,
                   responseDeserialize: id, originalName: name};
}
const text = (b) => b.toString('latin1');
const bytes = (s) => Buffer.from(s, 'latin1');

const server = new grpc.Server();
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
  Fail: (call, done) => done({code: parseInt(text(call.request), 10), details: 'asked to fail'}),
  Deadline: (call, done) => {
    const deadline = call.getDeadline();
    const left = deadline === Infinity ? 'none' : String(new Date(deadline).getTime() - Date.now());
    done(null, bytes(left));
  },
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.log('ERR ' + err); process.exit(2); }
  console.log('PORT ' + port);
});
