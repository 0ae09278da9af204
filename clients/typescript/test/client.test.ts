// The classic and two-phase flows, status and extend, the barrier and the check handler.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import {
  cancel,
  check,
  checkHandler,
  CheckedFirstError,
  confirm,
  decide,
  enqueue,
  extend,
  inLocalTx,
  NotPreparedError,
  prepare,
  status,
  type Outcome,
} from "../src/index.ts";
import { databases, waitFor, type Dbs } from "./helpers.ts";

const order = { destination: "orders", payload: { order: 42 }, key: "order-42" };
let dbs: Dbs;
before(async () => {
  dbs = await databases();
});
after(async () => {
  await dbs.close();
});

void test("enqueue commits or rolls back with the caller's transaction", async () => {
  const client = await dbs.writer.connect();
  try {
    await client.query("BEGIN");
    const kept = await enqueue(client, order);
    await client.query("COMMIT");
    await client.query("BEGIN");
    await enqueue(client, order);
    await client.query("ROLLBACK");
    const r = await dbs.owner.query("SELECT message_id::text AS id FROM outbox.messages");
    assert.deepEqual(r.rows, [{ id: kept }]);
  } finally {
    client.release();
  }
});

void test("prepare, then confirm or cancel once; status and extend", async () => {
  for (const [decide, final] of [
    [confirm, "committed"],
    [cancel, "rolled_back"],
  ] as const) {
    const id = await prepare(dbs.writer, order, { producer: "orders", ttlMs: 60_000 });
    assert.deepEqual(await status(dbs.writer, id), {
      status: "prepared",
      attempts: 0,
      lastError: null,
      publishedAt: null,
    });
    assert.equal(await extend(dbs.writer, id, 7_200_000), true);
    await decide(dbs.writer, id);
    assert.equal((await status(dbs.writer, id))?.status, final);
    await assert.rejects(confirm(dbs.writer, id), NotPreparedError);
    assert.equal(await extend(dbs.writer, id, 60_000), false);
  }
  assert.equal(await status(dbs.writer, randomUUID()), null);
});

void test("a check during the local transaction waits and is right both ways", async () => {
  for (const commit of [true, false]) {
    const id = randomUUID();
    const tx = await dbs.local.connect();
    try {
      await tx.query("BEGIN");
      await inLocalTx(tx, id);
      let answer: Outcome | undefined;
      const asked = check(dbs.local, id).then((o) => (answer = o));
      await waitFor("the check to wait on the local transaction", async () => {
        const r = await dbs.local.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock'
              AND query LIKE '%outbox_barrier%'`,
        );
        return r.rows[0]?.n === 1;
      });
      assert.equal(answer, undefined, "answered while the local transaction was open");
      await tx.query(commit ? "COMMIT" : "ROLLBACK");
      await asked;
      assert.equal(answer, commit ? "committed" : "rolled_back");
    } finally {
      tx.release();
    }
  }
});

void test("a check before the local transaction makes it fail", async () => {
  const id = randomUUID();
  assert.equal(await check(dbs.local, id), "rolled_back");
  await assert.rejects(inLocalTx(dbs.local, id), CheckedFirstError);
});

void test("the check handler answers JSON and checks its token", async () => {
  const id = randomUUID();
  await inLocalTx(dbs.local, id);
  const server = createServer(checkHandler(dbs.local, { token: "t0ken" }));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  const post = async (body: string, token?: string) => {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (token !== undefined) headers["authorization"] = `Bearer ${token}`;
    const res = await fetch(`http://127.0.0.1:${String(port)}/`, { method: "POST", body, headers });
    return [res.status, await res.text()] as const;
  };
  try {
    const body = JSON.stringify({ message_id: id, destination: "orders", message_key: null });
    assert.equal((await post(body))[0], 401);
    assert.equal((await post(body, "wrong"))[0], 401);
    assert.equal((await post('{"message_id": "x"}', "t0ken"))[0], 400);
    assert.deepEqual(await post(body, "t0ken"), [200, '{"status":"committed"}']);
  } finally {
    server.close();
  }
});

void test("decide follows the local transaction whatever it returned", async () => {
  for (const commit of [true, false]) {
    const id = await prepare(dbs.writer, order, { producer: "orders" });
    const tx = await dbs.local.connect();
    try {
      await tx.query("BEGIN");
      await inLocalTx(tx, id);
      await tx.query(commit ? "COMMIT" : "ROLLBACK");
    } finally {
      tx.release();
    }
    const want = commit ? "committed" : "rolled_back";
    assert.equal(await decide(dbs.writer, dbs.local, id), want);
    assert.equal((await status(dbs.writer, id))?.status, want);
    assert.equal(await decide(dbs.writer, dbs.local, id), want, "deciding again changes nothing");
  }
});

void test("a check waits at most lockTimeoutMs, then answers unknown", async () => {
  const id = randomUUID();
  const tx = await dbs.local.connect();
  const server = createServer(checkHandler(dbs.local, { lockTimeoutMs: 100 }));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  const ask = async () => {
    const res = await fetch(`http://127.0.0.1:${String(port)}/`, {
      method: "POST",
      body: JSON.stringify({ message_id: id }),
    });
    return res.text();
  };
  try {
    await tx.query("BEGIN");
    await inLocalTx(tx, id);
    assert.equal(await ask(), '{"status":"unknown"}');
    await tx.query("COMMIT");
    assert.equal(await ask(), '{"status":"committed"}');
  } finally {
    tx.release();
    server.close();
  }
});
