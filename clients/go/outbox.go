package outbox

import (
	"context"
	"database/sql"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Querier runs one statement and returns its one row. pgx's *pgx.Conn, pgx.Tx and
// *pgxpool.Pool satisfy it; [Std] adapts database/sql.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// StdQuerier is what database/sql's *sql.DB, *sql.Tx and *sql.Conn have in common.
type StdQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type std struct{ q StdQuerier }

func (s std) QueryRow(ctx context.Context, query string, args ...any) pgx.Row {
	return s.q.QueryRowContext(ctx, query, args...)
}

// Std makes a database/sql handle (a *sql.DB, *sql.Tx or *sql.Conn) a [Querier].
func Std(q StdQuerier) Querier { return std{q} }

// Message is what a writer publishes. The SQL API checks it: a bad one fails with the
// *pgconn.PgError it raised (SQLSTATE 22023, its message intact), and nothing is written.
type Message struct {
	// Destination is the RabbitMQ exchange, Kafka topic, Redis stream or NSQ topic.
	Destination string
	// Payload is the message body, a JSON document; or any bytes when ContentType is set
	// (Avro, Protobuf, ...).
	Payload []byte
	// ContentType marks Payload as bytes of this type; empty means JSON.
	ContentType string
	// Key orders messages: those with the same key reach the broker in commit order.
	Key string
	// RoutingKey is RabbitMQ's routing key (defaults to Key).
	RoutingKey string
	// Headers are sent as broker headers.
	Headers map[string]string
	// DeliverAt delays publication until then (for a prepared message, once it is committed).
	DeliverAt time.Time
}

// ErrNotPrepared: Confirm or Cancel found no prepared message with that id. It was decided
// already (by the writer or by check-back), or it expired.
var ErrNotPrepared = errors.New("outbox: the message is not prepared (decided already, or expired)")

// ErrCheckedFirst: the relay's check-back reached the barrier before the local transaction,
// and was answered "rolled back". The local transaction must roll back.
var ErrCheckedFirst = errors.New("outbox: check-back answered rolled_back before this local transaction; roll it back")

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func headers(m Message) (string, error) {
	if m.Headers == nil {
		return "{}", nil
	}
	b, err := json.Marshal(m.Headers)
	return string(b), err
}

func deliverAt(m Message) *time.Time {
	if m.DeliverAt.IsZero() {
		return nil
	}
	return &m.DeliverAt
}

// payload is the SQL argument of Payload: text for the jsonb forms (NULL when empty, which the
// SQL API refuses with its own message), the bytes for the binary forms.
func payload(m Message) any {
	if m.ContentType != "" {
		return m.Payload
	}
	if m.Payload == nil {
		return nil
	}
	return string(m.Payload)
}

// withContentType puts the content type third, where the binary forms of the SQL API take it
// (after destination and payload).
func withContentType(m Message, args []any) []any {
	return append([]any{args[0], args[1], m.ContentType}, args[2:]...)
}

//go:embed sql/enqueue.sql
var enqueueSQL string

//go:embed sql/enqueue_bytes.sql
var enqueueBytesSQL string

// Enqueue writes a committed message with q, which should be the transaction that changes
// your business data: the message is published if and only if that transaction commits.
// Returns the message id, which consumers de-duplicate on.
func Enqueue(ctx context.Context, q Querier, m Message) (string, error) {
	h, err := headers(m)
	if err != nil {
		return "", err
	}
	query, args := enqueueSQL, []any{m.Destination, payload(m), nullable(m.Key), nullable(m.RoutingKey), h, deliverAt(m)}
	if m.ContentType != "" {
		query, args = enqueueBytesSQL, withContentType(m, args)
	}
	var id string
	if err := q.QueryRow(ctx, query, args...).Scan(&id); err != nil {
		return "", fmt.Errorf("outbox: enqueue: %w", err)
	}
	return id, nil
}

//go:embed sql/prepare.sql
var prepareSQL string

//go:embed sql/prepare_bytes.sql
var prepareBytesSQL string

// Prepare writes a prepared message with outboxDB (not inside your local transaction: the
// message must exist before the local transaction commits). It is published only once
// confirmed. producer names your service in the relay's [check_back.producers] so that the
// relay can ask [CheckHandler] if the writer dies before Confirm; "" turns check-back off and
// the message then rolls back at its ttl. ttl bounds how long it may stay undecided.
func Prepare(ctx context.Context, outboxDB Querier, m Message, producer string, ttl time.Duration) (string, error) {
	h, err := headers(m)
	if err != nil {
		return "", err
	}
	query, args := prepareSQL, []any{m.Destination, payload(m), nullable(m.Key), nullable(m.RoutingKey), h,
		ttl.Milliseconds(), nullable(producer), deliverAt(m)}
	if m.ContentType != "" {
		query, args = prepareBytesSQL, withContentType(m, args)
	}
	var id string
	if err := outboxDB.QueryRow(ctx, query, args...).Scan(&id); err != nil {
		return "", fmt.Errorf("outbox: prepare: %w", err)
	}
	return id, nil
}

//go:embed sql/barrier_commit.sql
var barrierCommitSQL string

// InLocalTx writes the barrier row that says the local transaction localTx commits message
// id. Call it inside that transaction, before its commit. It returns [ErrCheckedFirst] when
// check-back answered first; roll localTx back then.
func InLocalTx(ctx context.Context, localTx Querier, id string) error {
	var inserted int
	err := localTx.QueryRow(ctx, barrierCommitSQL, id).Scan(&inserted)
	if err != nil {
		return fmt.Errorf("outbox: barrier: %w", err)
	}
	if inserted == 0 {
		return ErrCheckedFirst
	}
	return nil
}

//go:embed sql/confirm.sql
var confirmSQL string

//go:embed sql/cancel.sql
var cancelSQL string

// Confirm commits prepared message id after the local transaction committed: the relay
// publishes it. Returns [ErrNotPrepared] if it was decided already or expired.
func Confirm(ctx context.Context, outboxDB Querier, id string) error {
	return decide(ctx, outboxDB, confirmSQL, id, "confirm")
}

// Cancel rolls back prepared message id after the local transaction rolled back: it is never
// published. Returns [ErrNotPrepared] if it was decided already or expired.
func Cancel(ctx context.Context, outboxDB Querier, id string) error {
	return decide(ctx, outboxDB, cancelSQL, id, "cancel")
}

func decide(ctx context.Context, q Querier, query, id, what string) error {
	var changed bool
	if err := q.QueryRow(ctx, query, id).Scan(&changed); err != nil {
		return fmt.Errorf("outbox: %s: %w", what, err)
	}
	if !changed {
		return ErrNotPrepared
	}
	return nil
}

//go:embed sql/extend.sql
var extendSQL string

// Extend gives prepared message id ttl more time from now, for local work that takes longer
// than planned. It returns false if the message is not prepared (any more) or has expired.
func Extend(ctx context.Context, outboxDB Querier, id string, ttl time.Duration) (bool, error) {
	var extended bool
	if err := outboxDB.QueryRow(ctx, extendSQL, id, ttl.Milliseconds()).Scan(&extended); err != nil {
		return false, fmt.Errorf("outbox: extend: %w", err)
	}
	return extended, nil
}

// Status is what became of a message.
type Status struct {
	// Status is prepared, committed, rolled_back, published or dead.
	Status   string
	Attempts int
	// LastError is the last failure, if any.
	LastError *string
	// PublishedAt is when the broker confirmed it, if it did.
	PublishedAt *time.Time
}

//go:embed sql/status.sql
var statusSQL string

// MessageStatus reports what became of message id; ok is false for an unknown id.
func MessageStatus(ctx context.Context, q Querier, id string) (s Status, ok bool, err error) {
	err = q.QueryRow(ctx, statusSQL, id).Scan(&s.Status, &s.Attempts, &s.LastError, &s.PublishedAt)
	if errors.Is(err, pgx.ErrNoRows) || errors.Is(err, sql.ErrNoRows) {
		return Status{}, false, nil
	}
	if err != nil {
		return Status{}, false, fmt.Errorf("outbox: status: %w", err)
	}
	return s, true, nil
}
