// Package outbox writes messages into an outbox-relay outbox in Postgres, from Go.
//
// Two ways to write a message:
//
//   - [Enqueue], inside the transaction that changes your business data, when that data lives
//     in the outbox's database. The message is committed with your transaction, atomically;
//     nothing else is needed.
//   - The two-phase flow, when your local transaction runs in another database or service:
//     [Prepare] a message in the outbox, run your local transaction with [InLocalTx] inside
//     it, then [Confirm] (or [Cancel]). If your process dies between its local commit and
//     Confirm, the relay asks your service whether the message was committed ("check-back"),
//     and [CheckHandler] answers from the barrier table that InLocalTx wrote: the answer is
//     never "rolled back" for a local transaction that commits.
//
// Every function takes a [Querier]: pgx's *pgx.Conn, pgx.Tx and *pgxpool.Pool are one as they
// are; wrap database/sql's *sql.DB, *sql.Tx or *sql.Conn with [Std].
//
// The barrier table lives in the writer's own database; create it once with [BarrierSchema]
// and delete old rows with [PurgeBarrier].
package outbox
