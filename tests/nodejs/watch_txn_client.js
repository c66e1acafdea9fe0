// Watch and Txn from Node.js with @grpc/grpc-js, built from nothing but
// proto/kv.proto (no generated code, no Python).
//
//   node watch_txn_client.js HOST:PORT PREFIX
//
// Opens a Watch stream on PREFIX (from now), runs a transaction that
// creates PREFIX+"a" and PREFIX+"b" only if "a" is absent (it is), runs it
// again (now the failure branch: it reads "a"), waits for the watch to
// deliver the first transaction's changes, cancels the watch and prints one
// JSON object with what it saw.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_DIR = path.resolve(__dirname, "..", "..", "proto");

function loadKV() {
  const definition = protoLoader.loadSync(path.join(PROTO_DIR, "kv.proto"), {
    keepCase: true,
    longs: String, // int64 and uint64 as decimal strings: no precision loss
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
  const [address, prefix] = process.argv.slice(2);
  if (!prefix) {
    console.error("usage: node watch_txn_client.js HOST:PORT PREFIX");
    process.exit(2);
  }
  const kv = loadKV();
  const client = new kv.KV(address, grpc.credentials.createInsecure());
  const watch = client.Watch();
  const responses = [];
  let wake = null;
  watch.on("data", (response) => {
    responses.push(response);
    if (wake) wake();
  });
  watch.on("error", () => {}); // the cancel below ends it with CANCELLED
  const next = async (seconds) => {
    const deadline = Date.now() + seconds * 1000;
    while (responses.length === 0) {
      if (Date.now() > deadline) throw new Error("no watch response in time");
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    return responses.shift();
  };
  watch.write({ create: { key: prefix, prefix: true, start_revision: "0" } });
  const created = await next(20);

  const a = prefix + "a";
  const txn = {
    compare: [{ key: a, result: "COMPARE_RESULT_EQUAL", version: "0" }],
    success: [
      { put: { key: a, value: Buffer.from("1") } },
      { put: { key: prefix + "b", value: Buffer.from("2") } },
    ],
    failure: [{ get: { key: a } }],
  };
  const first = await call(client, "Txn", txn, 10);
  const second = await call(client, "Txn", txn, 10);

  const events = [];
  while (events.length < 2) {
    const response = await next(20);
    for (const event of response.events) {
      events.push({
        type: event.type,
        key: event.kv.key,
        value: Buffer.from(event.kv.value).toString("utf8"),
        revision: event.kv.mod_revision,
        response_revision: response.header.revision,
      });
    }
  }
  watch.write({ cancel: { watch_id: created.watch_id } });
  const canceled = await next(20);
  watch.end();
  console.log(
    JSON.stringify({
      created: { created: created.created, watch_id: created.watch_id },
      first: { succeeded: first.succeeded, revision: first.header.revision },
      second: {
        succeeded: second.succeeded,
        value: Buffer.from(second.responses[0].get.value).toString("utf8"),
        version: second.responses[0].get.version,
      },
      events,
      canceled: canceled.canceled,
    }),
  );
  client.close();
}

main().catch((error) => {
  console.error(`ramraft node client failed: ${error.code ?? ""} ${error.details ?? error}`);
  process.exit(1);
});
