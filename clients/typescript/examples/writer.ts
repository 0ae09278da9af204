// Writes three messages with the library, as an application would, and prints their ids: a
// JSON message with enqueue, a bytes message with enqueue, and a two-phase message prepared,
// run through a local transaction and confirmed. The relay's end-to-end test
// (tests/clients_e2e.rs) runs it and checks what reaches RabbitMQ.
//
//   node --import tsx examples/writer.ts OUTBOX_URL LOCAL_URL DESTINATION
import pg from "pg";

import { BARRIER_SCHEMA, confirm, enqueue, inLocalTx, prepare } from "../src/index.ts";

const [outboxUrl, localUrl, destination] = process.argv.slice(2) as [string, string, string];
const outboxDb = new pg.Client({ connectionString: outboxUrl });
const localDb = new pg.Client({ connectionString: localUrl });
await outboxDb.connect();
await localDb.connect();
try {
  await outboxDb.query("BEGIN");
  const jsonId = await enqueue(outboxDb, {
    destination,
    payload: { lang: "typescript" },
    key: "k",
  });
  const bytesId = await enqueue(outboxDb, {
    destination,
    payload: Buffer.from([0, 255, 0x74, 0x73]),
    key: "k",
    contentType: "application/x-bytes",
  });
  await outboxDb.query("COMMIT");
  const prepared = await prepare(
    outboxDb,
    { destination, payload: { two_phase: true }, key: "k" },
    { producer: "writer" },
  );
  await localDb.query(BARRIER_SCHEMA);
  await localDb.query("BEGIN");
  await inLocalTx(localDb, prepared);
  await localDb.query("COMMIT");
  await confirm(outboxDb, prepared);
  console.log(jsonId, bytesId, prepared);
} finally {
  await outboxDb.end();
  await localDb.end();
}
