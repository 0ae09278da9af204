// Fresh databases on the Postgres the relay's tests use (scripts/services.sh up postgres), the
// outbox migrated by the relay binary, writes as a member of outbox_writer.
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import pg from "pg";

import { BARRIER_SCHEMA } from "../src/index.ts";

const ADMIN_URL =
  process.env["OUTBOX_TEST_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:54329/postgres";
const WRITER_LOGIN = "outbox_writer_test";

function urlOf(database: string, user?: string): string {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${database}`;
  if (user !== undefined) u.username = user;
  return u.toString();
}

async function admin<T>(f: (c: pg.Client) => Promise<T>, url = ADMIN_URL): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await f(c);
  } finally {
    await c.end();
  }
}

// pool.end() resolves once it has asked its clients to end, not when they have: a DROP ... WITH
// (FORCE) right after it can terminate a session that is still closing, and the pool then throws
// that error where no test can catch it. Each client's "remove" comes after its socket closed.
async function endPool(pool: pg.Pool): Promise<void> {
  const open = pool.totalCount;
  let removed = 0;
  const closed = new Promise<void>((resolve) => {
    if (open === 0) resolve();
    pool.on("remove", () => {
      removed += 1;
      if (removed === open) resolve();
    });
  });
  await pool.end();
  await closed;
}

/** Pools and a clean-up for one test. */
export interface Dbs {
  writer: pg.Pool;
  owner: pg.Pool;
  local: pg.Pool;
  close(): Promise<void>;
}

export async function databases(): Promise<Dbs> {
  const id = randomUUID().replaceAll("-", "");
  const outboxName = `ts_${id}`;
  const localName = `ts_local_${id}`;
  await admin(async (c) => {
    await c.query(`CREATE DATABASE ${outboxName}`);
    await c.query(`CREATE DATABASE ${localName}`);
  });
  const bin =
    process.env["OUTBOX_TEST_RELAY_BIN"] ??
    fileURLToPath(new URL("../../../target/debug/outbox-relay", import.meta.url));
  if (!existsSync(bin)) throw new Error(`no relay binary at ${bin} (cargo build)`);
  execFileSync(bin, ["migrate"], {
    env: {
      ...process.env,
      OUTBOX_RELAY__DATABASE__URL: urlOf(outboxName),
      OUTBOX_RELAY__LOG__FORMAT: "text",
    },
    stdio: "pipe",
  });
  await admin(async (c) => {
    await c.query(`DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${WRITER_LOGIN}') THEN
          CREATE ROLE ${WRITER_LOGIN} LOGIN IN ROLE outbox_writer;
        END IF;
      EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
      END $$`);
  }, urlOf(outboxName));
  await admin(async (c) => {
    await c.query(BARRIER_SCHEMA);
    await c.query("CREATE TABLE orders (id bigint PRIMARY KEY)");
  }, urlOf(localName));
  const writer = new pg.Pool({ connectionString: urlOf(outboxName, WRITER_LOGIN) });
  const owner = new pg.Pool({ connectionString: urlOf(outboxName) });
  const local = new pg.Pool({ connectionString: urlOf(localName) });
  return {
    writer,
    owner,
    local,
    async close() {
      await Promise.all([writer, owner, local].map(endPool));
      await admin(async (c) => {
        await c.query(`DROP DATABASE IF EXISTS ${outboxName} WITH (FORCE)`);
        await c.query(`DROP DATABASE IF EXISTS ${localName} WITH (FORCE)`);
      });
    },
  };
}

/** Polls `cond` until it holds, failing at the deadline. */
export async function waitFor(what: string, cond: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
