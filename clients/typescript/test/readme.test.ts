// The project README's TypeScript snippet is placeOrder's body, and it runs.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import type pg from "pg";

import { decide, inLocalTx, prepare, type Message } from "../src/index.ts";
import { databases, type Dbs } from "./helpers.ts";

async function placeOrder(outboxDb: pg.Pool, localDb: pg.Pool, msg: Message): Promise<void> {
  const id = await prepare(outboxDb, msg, { producer: "orders" });
  const local = await localDb.connect();
  try {
    await local.query("BEGIN");
    await local.query("INSERT INTO orders (id) VALUES (42)");
    await inLocalTx(local, id); // the barrier row
    await local.query("COMMIT");
  } catch (e) {
    await local.query("ROLLBACK");
    throw e;
  } finally {
    local.release();
    // Even a failed COMMIT may have committed: the barrier knows.
    await decide(outboxDb, localDb, id); // a crash before this is what check-back covers
  }
}

let dbs: Dbs;
before(async () => {
  dbs = await databases();
});
after(async () => {
  await dbs.close();
});

void test("the README's TypeScript snippet is placeOrder's body", () => {
  const readme = readFileSync(new URL("../../../README.md", import.meta.url), "utf8");
  const block = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(block, "README.md has no TypeScript snippet");
  const source = readFileSync(new URL(import.meta.url), "utf8");
  const body = source
    .split("async function placeOrder(")[1]
    ?.split("\n}\n")[0]
    ?.split("\n")
    .slice(1);
  assert.ok(body);
  assert.equal(
    block.trim(),
    body
      .map((l) => l.slice(2))
      .join("\n")
      .trim(),
  );
});

void test("placeOrder commits the message", async () => {
  await placeOrder(dbs.writer, dbs.local, { destination: "orders", payload: { order: 42 } });
  const r = await dbs.owner.query("SELECT status::text AS status, producer FROM outbox.messages");
  assert.deepEqual(r.rows, [{ status: "committed", producer: "orders" }]);
});
