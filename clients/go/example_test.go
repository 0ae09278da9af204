package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/clients/go/outbox"
)

// The two-phase flow of a service whose own data is not in the outbox's database.
func Example() {
	ctx := context.Background()
	outboxDB, _ := pgxpool.New(ctx, "postgres://app@outbox-db/app")
	localDB, _ := pgxpool.New(ctx, "postgres://app@orders-db/orders")

	msg := outbox.Message{Destination: "orders", Key: "order-42", Payload: json.RawMessage(`{"order":42}`)}
	id, err := outbox.Prepare(ctx, outboxDB, msg, "orders", 5*time.Minute)
	if err != nil {
		return
	}
	err = pgx.BeginFunc(ctx, localDB, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO orders (id) VALUES (42)"); err != nil {
			return err
		}
		return outbox.InLocalTx(ctx, tx, id) // the barrier row, committed with the order
	})
	if err != nil {
		_ = outbox.Cancel(ctx, outboxDB, id)
		return
	}
	// If the process dies here, the relay asks the handler below, which answers "committed".
	if err := outbox.Confirm(ctx, outboxDB, id); err != nil && !errors.Is(err, outbox.ErrNotPrepared) {
		return
	}

	// Serve check-back at the url of [check_back.producers.orders] in the relay's config.
	http.Handle("/outbox/check", outbox.CheckHandler(localDB))
}
