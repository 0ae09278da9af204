/**
 * Write messages into an outbox-relay outbox in Postgres, with node-postgres.
 *
 * - {@link enqueue} inside the transaction that changes your business data, when that data is
 *   in the outbox's database: the message commits with it, atomically.
 * - The two-phase flow, when your local transaction runs in another database:
 *   {@link prepare} in the outbox, {@link inLocalTx} inside your local transaction (the
 *   check-back barrier row), then {@link confirm} or {@link cancel}. If your process dies
 *   before confirming, the relay asks your service, and {@link checkHandler} answers from the
 *   barrier (docs/check-back.md).
 *
 * Every function takes a {@link Queryable}: a `pg` Client, PoolClient or Pool.
 * @module
 */
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { timingSafeEqual } from "node:crypto";
import type { QueryResult, QueryResultRow } from "pg";

/** What a `pg` Client, PoolClient and Pool have in common. */
export interface Queryable {
  query<R extends QueryResultRow = QueryResultRow>(
    text: string,
    values?: unknown[],
  ): Promise<QueryResult<R>>;
}

/** What a writer publishes. */
export interface Message {
  /** The RabbitMQ exchange, Kafka topic, Redis stream or NSQ topic. */
  destination: string;
  /** A JSON value, or bytes (a Buffer or Uint8Array) together with `contentType`. */
  payload: unknown;
  /** Messages with the same key reach the broker in commit order. */
  key?: string;
  /** RabbitMQ's routing key (defaults to the key). */
  routingKey?: string;
  headers?: Record<string, string>;
  /** Marks `payload` as bytes of this type (Avro, Protobuf, ...). */
  contentType?: string;
  /** Published no earlier than this (for a prepared message, once committed). */
  deliverAt?: Date;
}

/** What became of a message (`outbox.status`). */
export interface Status {
  status: "prepared" | "committed" | "rolled_back" | "published" | "dead";
  attempts: number;
  lastError: string | null;
  publishedAt: Date | null;
}

/** Check-back's answer. */
export type Outcome = "committed" | "rolled_back" | "unknown";

/** Confirm or cancel found no prepared message with that id: decided already, or expired. */
export class NotPreparedError extends Error {
  constructor(readonly messageId: string) {
    super(`outbox: message ${messageId} is not prepared (decided already, or expired)`);
    this.name = "NotPreparedError";
  }
}

/** Check-back answered "rolled back" before this local transaction: roll it back. */
export class CheckedFirstError extends Error {
  constructor(readonly messageId: string) {
    super(`outbox: check-back answered rolled_back for ${messageId} before this local transaction`);
    this.name = "CheckedFirstError";
  }
}

/** Creates the check-back barrier table in the writer's own database (idempotent). */
export const BARRIER_SCHEMA: string = readFileSync(
  new URL("../src/barrier.sql", import.meta.url),
  "utf8",
);

function isBytes(payload: unknown): payload is Uint8Array {
  return payload instanceof Uint8Array;
}

async function one<T>(q: Queryable, text: string, values: unknown[]): Promise<T> {
  const result = await q.query<{ v: T }>(text, values);
  const row = result.rows[0];
  if (row === undefined) throw new Error("outbox: the statement returned no row");
  return row.v;
}

function common(m: Message): unknown[] {
  return [m.key ?? null, m.routingKey ?? null, JSON.stringify(m.headers ?? {})];
}

/**
 * Writes a committed message with `tx`, which should be in the transaction that changes your
 * business data: it is published if and only if that transaction commits. Returns its id.
 */
export async function enqueue(tx: Queryable, m: Message): Promise<string> {
  const deliverAt = m.deliverAt ?? null;
  if (isBytes(m.payload) || m.contentType !== undefined) {
    return one(
      tx,
      "SELECT outbox.enqueue_bytes($1, $2::bytea, $3, $4, $5, $6::jsonb, $7::timestamptz)::text AS v",
      [m.destination, bytes(m.payload), m.contentType ?? null, ...common(m), deliverAt],
    );
  }
  return one(
    tx,
    "SELECT outbox.enqueue($1, $2::jsonb, $3, $4, $5::jsonb, $6::timestamptz)::text AS v",
    [m.destination, json(m.payload), ...common(m), deliverAt],
  );
}

/**
 * Writes a prepared message, published only once confirmed. `producer` names your service in
 * the relay's `[check_back.producers]`; without it the message rolls back at `ttlMs`.
 */
export async function prepare(
  q: Queryable,
  m: Message,
  options: { producer?: string; ttlMs?: number } = {},
): Promise<string> {
  const tail = [options.ttlMs ?? 300_000, options.producer ?? null, m.deliverAt ?? null];
  if (isBytes(m.payload) || m.contentType !== undefined) {
    return one(
      q,
      "SELECT outbox.prepare_bytes($1, $2::bytea, $3, $4, $5, $6::jsonb, $7::bigint * interval '1 millisecond', $8, $9::timestamptz)::text AS v",
      [m.destination, bytes(m.payload), m.contentType ?? null, ...common(m), ...tail],
    );
  }
  return one(
    q,
    "SELECT outbox.prepare($1, $2::jsonb, $3, $4, $5::jsonb, $6::bigint * interval '1 millisecond', $7, $8::timestamptz)::text AS v",
    [m.destination, json(m.payload), ...common(m), ...tail],
  );
}

function json(payload: unknown): string | null {
  // undefined and null stay NULL, which the SQL API refuses with its own message.
  return payload === undefined || payload === null ? null : JSON.stringify(payload);
}

function bytes(payload: unknown): Buffer | null {
  if (payload === undefined || payload === null) return null;
  if (!isBytes(payload)) throw new TypeError("outbox: a payload with contentType must be bytes");
  return Buffer.from(payload);
}

/** Commits prepared message `id`: the relay publishes it. Throws {@link NotPreparedError}. */
export async function confirm(q: Queryable, id: string): Promise<void> {
  if (!(await one<boolean>(q, "SELECT outbox.commit($1::uuid) AS v", [id])))
    throw new NotPreparedError(id);
}

/** Rolls back prepared message `id`: never published. Throws {@link NotPreparedError}. */
export async function cancel(q: Queryable, id: string): Promise<void> {
  if (!(await one<boolean>(q, "SELECT outbox.rollback($1::uuid) AS v", [id])))
    throw new NotPreparedError(id);
}

/** Prepared message `id` now expires `ttlMs` from now; false if it is not prepared (any more). */
export async function extend(q: Queryable, id: string, ttlMs: number): Promise<boolean> {
  return one(q, "SELECT outbox.extend($1::uuid, $2::bigint * interval '1 millisecond') AS v", [
    id,
    ttlMs,
  ]);
}

/** What became of message `id`; null for an unknown id. */
export async function status(q: Queryable, id: string): Promise<Status | null> {
  const r = await q.query<{
    status: Status["status"];
    attempts: number;
    last_error: string | null;
    published_at: Date | null;
  }>(
    "SELECT status::text AS status, attempts, last_error, published_at FROM outbox.status($1::uuid)",
    [id],
  );
  const row = r.rows[0];
  return row === undefined
    ? null
    : {
        status: row.status,
        attempts: row.attempts,
        lastError: row.last_error,
        publishedAt: row.published_at,
      };
}

const BARRIER = (outcome: Outcome) => `
WITH inserted AS (
    INSERT INTO outbox_barrier (message_id, outcome) VALUES ($1::uuid, '${outcome}')
    ON CONFLICT (message_id) DO NOTHING
    RETURNING 1
)
SELECT count(*)::int AS v FROM inserted`;

/**
 * Writes the barrier row saying the local transaction `localTx` commits message `id`. Call it
 * inside that transaction, before its commit. Throws {@link CheckedFirstError} when check-back
 * answered first: roll the local transaction back then.
 */
export async function inLocalTx(localTx: Queryable, id: string): Promise<void> {
  if ((await one<number>(localTx, BARRIER("committed"), [id])) === 0)
    throw new CheckedFirstError(id);
}

/**
 * Check-back's answer for message `id` from the barrier in `localDb`, which must not be inside
 * a transaction (a Pool is right): each of the two statements commits on its own. Waits for a
 * local transaction still open; answers rolled_back only when the local transaction did not
 * commit and now never can.
 */
export async function check(localDb: Queryable, id: string): Promise<Outcome> {
  await one(localDb, BARRIER("rolled_back"), [id]);
  return one(localDb, "SELECT outcome AS v FROM outbox_barrier WHERE message_id = $1::uuid", [id]);
}

/**
 * Confirms or cancels prepared message `id` by what its local transaction did, as the barrier
 * in `localDb` records it, and returns that. Call it once the local transaction is over,
 * whatever happened: a COMMIT that failed on a lost connection may still have committed, and
 * only the barrier knows. A message check-back decided already is left as it is; one that ended
 * otherwise (it expired first) throws {@link NotPreparedError}.
 */
export async function decide(
  outboxDb: Queryable,
  localDb: Queryable,
  id: string,
): Promise<Outcome> {
  const outcome = await check(localDb, id);
  try {
    await (outcome === "committed" ? confirm : cancel)(outboxDb, id);
  } catch (e) {
    if (!(e instanceof NotPreparedError)) throw e;
    const s = await status(outboxDb, id);
    const same =
      outcome === "committed"
        ? s?.status === "committed" || s?.status === "published"
        : s?.status === "rolled_back";
    if (!same) throw e;
  }
  return outcome;
}

/** Deletes barrier rows older than `olderThanMs` (more than your longest ttl); returns how many. */
export async function purgeBarrier(localDb: Queryable, olderThanMs: number): Promise<number> {
  const r = await localDb.query(
    "DELETE FROM outbox_barrier WHERE created_at < now() - $1::bigint * interval '1 millisecond'",
    [olderThanMs],
  );
  return r.rowCount ?? 0;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_BODY = 64 * 1024;

/** Hands out connections: a `pg` Pool. */
export interface Connections {
  connect(): Promise<Queryable & { release(): void }>;
}

/**
 * A Node `http` request handler answering the relay's check-back POST from the barrier in
 * `localDb` (a Pool). Mount it at the url of your `[check_back.producers.<name>]`. A check waits
 * for a local transaction still open at most `lockTimeoutMs` (keep it below the relay's
 * `timeout` for this producer), then answers `unknown` and the relay asks again later.
 */
export function checkHandler(
  localDb: Connections,
  options: { token?: string; lockTimeoutMs?: number; onError?: (e: unknown) => void } = {},
): (req: IncomingMessage, res: ServerResponse) => void {
  const lockTimeout = Math.max(1, Math.floor(options.lockTimeoutMs ?? 4000));
  const bounded = async (id: string): Promise<Outcome> => {
    const c = await localDb.connect();
    try {
      await c.query(`SET lock_timeout = ${String(lockTimeout)}`);
      try {
        return await check(c, id);
      } finally {
        await c.query("RESET lock_timeout");
      }
    } finally {
      c.release();
    }
  };
  const reply = (res: ServerResponse, code: number, body: object) => {
    res.writeHead(code, { "content-type": "application/json" }).end(JSON.stringify(body));
  };
  const authorized = (header: string | undefined) => {
    if (options.token === undefined) return true;
    const got = Buffer.from(header ?? "");
    const want = Buffer.from(`Bearer ${options.token}`);
    return got.length === want.length && timingSafeEqual(got, want);
  };
  return (req, res) => {
    if (req.method !== "POST") {
      reply(res, 405, { error: "POST only" });
      return;
    }
    if (!authorized(req.headers.authorization)) {
      reply(res, 401, { error: "unauthorized" });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY) chunks.push(chunk);
    });
    req.on("end", () => {
      let id: unknown;
      try {
        id = (JSON.parse(Buffer.concat(chunks).toString("utf8")) as { message_id?: unknown })
          .message_id;
      } catch {
        id = undefined;
      }
      if (typeof id !== "string" || !UUID.test(id)) {
        reply(res, 400, { error: "message_id is not a uuid" });
        return;
      }
      bounded(id).then(
        (outcome) => {
          reply(res, 200, { status: outcome });
        },
        (e: unknown) => {
          options.onError?.(e);
          reply(res, 200, { status: "unknown" });
        },
      );
    });
  };
}
