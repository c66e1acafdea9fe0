// A ramraft client in another language: Node.js with @grpc/grpc-js, built
// from nothing but proto/kv.proto (no generated code, no Python).
//
//   node kv_client.js HOST:PORT KEY VALUE OTHER_KEY
//
// Puts KEY=VALUE with a session (client id, sequence 1, first_unacked 1),
// retries it once with the same session (must not be applied twice: same
// index), reads KEY and OTHER_KEY back with LINEARIZABLE reads, sends one bad
// request (empty key), and prints one JSON object with what it saw.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_DIR = path.resolve(__dirname, "..", "..", "proto");

function loadKV() {
  const definition = protoLoader.loadSync(path.join(PROTO_DIR, "kv.proto"), {
    keepCase: true,
    longs: String, // uint64 as decimal strings: no precision loss
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [PROTO_DIR],
  });
  return grpc.loadPackageDefinition(definition).ramraft.v1;
}

function call(client, method, request, seconds) {
  const deadline = new Date(Date.now() + seconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) => {
      if (error) reject(error);
      else resolve(response);
    });
  });
}

async function main() {
  const [address, key, value, otherKey] = process.argv.slice(2);
  if (!otherKey) {
    console.error("usage: node kv_client.js HOST:PORT KEY VALUE OTHER_KEY");
    process.exit(2);
  }
  const kv = loadKV();
  const client = new kv.KV(address, grpc.credentials.createInsecure());
  // A random non-zero 53-bit client id, sent as a decimal string (uint64).
  const clientId = String(1 + Math.floor(Math.random() * (Number.MAX_SAFE_INTEGER - 1)));
  const session = { client_id: clientId, sequence: "1", first_unacked: "1" };
  const put = { key, value: Buffer.from(value, "utf8"), session };
  const first = await call(client, "Put", put, 10);
  const retry = await call(client, "Put", put, 10);
  const mine = await call(client, "Get", { key, consistency: "LINEARIZABLE" }, 10);
  const other = await call(client, "Get", { key: otherKey, consistency: "LINEARIZABLE" }, 10);
  let badKey = null;
  try {
    await call(client, "Put", { key: "", value: Buffer.from("x") }, 10);
  } catch (error) {
    badKey = { code: error.code, name: grpc.status[error.code], details: error.details };
  }
  console.log(
    JSON.stringify({
      put_index: first.index,
      retry_index: retry.index,
      get: { found: mine.found, value: Buffer.from(mine.value).toString("utf8") },
      other: { found: other.found, value: Buffer.from(other.value).toString("utf8") },
      bad_key: badKey,
    }),
  );
  client.close();
}

main().catch((error) => {
  console.error(`ramraft node client failed: ${error.code ?? ""} ${error.details ?? error}`);
  process.exit(1);
});
