// A @grpc/grpc-js server for tests/interop/test_hunt44_interop_grpcjs_services.py (run with
// NODE_PATH naming the node_modules scripts/install-grpcjs.sh fills). Binds 127.0.0.1 on a
// free port, plaintext, and prints "PORT <n>" once bound. Service interop.Details:
//   Fail  request: UTF-8 text -> status FAILED_PRECONDITION (9) with that text as its
//         details (grpc-js percent-encodes it into grpc-message)
'use strict';
const grpc = require('@grpc/grpc-js');

const id = (x) => x;
const server = new grpc.Server();
server.addService({
  Fail: {path: '/interop.Details/Fail', requestStream: false, responseStream: false,
         requestSerialize: id, requestDeserialize: id, responseSerialize: id,
         responseDeserialize: id, originalName: 'Fail'},
}, {
  Fail: (call, done) => done({code: grpc.status.FAILED_PRECONDITION,
                              details: call.request.toString('utf8')}),
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.log('ERR ' + err); process.exit(2); }
  console.log('PORT ' + port);
});
