// The shared test vectors (clients/test-vectors.json), which every client library runs.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import type { DatabaseError } from "pg";

import { enqueue, prepare, type Message } from "../src/index.ts";
import { databases, type Dbs } from "./helpers.ts";

interface Vector {
  name: string;
  call: "enqueue" | "prepare";
  producer?: string;
  ttl_seconds?: number;
  message: {
    destination: string;
    payload?: unknown;
    payload_hex?: string;
    content_type?: string;
    key?: string;
    routing_key?: string;
    headers?: Record<string, string>;
  };
  expect: {
    row?: Record<string, unknown>;
    error?: { sqlstate: string; message_contains: string };
  };
}

const vectors = (
  JSON.parse(readFileSync(new URL("../../test-vectors.json", import.meta.url), "utf8")) as {
    cases: Vector[];
  }
).cases;

let dbs: Dbs;
before(async () => {
  dbs = await databases();
});
after(async () => {
  await dbs.close();
});

function message(v: Vector["message"]): Message {
  const m: Message = {
    destination: v.destination,
    payload: v.payload_hex === undefined ? v.payload : Buffer.from(v.payload_hex, "hex"),
  };
  if (v.key !== undefined) m.key = v.key;
  if (v.routing_key !== undefined) m.routingKey = v.routing_key;
  if (v.headers !== undefined) m.headers = v.headers;
  if (v.content_type !== undefined) m.contentType = v.content_type;
  return m;
}

for (const v of vectors) {
  void test(v.name, async () => {
    let id: string;
    try {
      id =
        v.call === "enqueue"
          ? await enqueue(dbs.writer, message(v.message))
          : await prepare(dbs.writer, message(v.message), {
              ...(v.producer === undefined ? {} : { producer: v.producer }),
              ttlMs: (v.ttl_seconds ?? 300) * 1000,
            });
    } catch (e) {
      const error = v.expect.error;
      assert.ok(error, `unexpected error: ${String(e)}`);
      assert.equal((e as DatabaseError).code, error.sqlstate);
      assert.match(
        (e as Error).message,
        new RegExp(error.message_contains.replace(/[()]/g, "\\$&")),
      );
      return;
    }
    assert.ok(v.expect.row, "expected an error");
    const r = await dbs.owner.query<Record<string, unknown>>(
      `SELECT status::text AS status, destination, message_key, routing_key, headers, content_type,
              payload, producer FROM outbox.messages WHERE message_id = $1`,
      [id],
    );
    const got = { ...r.rows[0] };
    const want = { ...v.expect.row };
    const payload = got["payload"] as Buffer;
    delete got["payload"];
    if ("payload_hex" in want) {
      assert.equal(payload.toString("hex"), want["payload_hex"]);
      delete want["payload_hex"];
    } else {
      assert.deepEqual(JSON.parse(payload.toString("utf8")), want["payload"]);
      delete want["payload"];
    }
    assert.deepEqual(got, want);
  });
}
