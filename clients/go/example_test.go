package outbox_test

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/clients/go/outbox"
)

// placeOrder is the two-phase flow of a service whose own data is not in the outbox's
// database. The README shows its body; TestPlaceOrder runs it.
func placeOrder(ctx context.Context, outboxDB, localDB *pgxpool.Pool, msg outbox.Message) error {
	id, err := outbox.Prepare(ctx, outboxDB, msg, "orders", 5*time.Minute)
	if err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, localDB, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO orders (id) VALUES ($1)", 42); err != nil {
			return err
		}
		return outbox.InLocalTx(ctx, tx, id) // the barrier row
	})
	// Even a failed COMMIT may have committed: the barrier knows. A crash before this is what
	// check-back covers.
	if _, derr := outbox.Decide(ctx, outboxDB, localDB, id); derr != nil {
		return derr
	}
	return err
}

func Example() {
	ctx := context.Background()
	outboxDB, _ := pgxpool.New(ctx, "postgres://app@outbox-db/app")
	localDB, _ := pgxpool.New(ctx, "postgres://app@orders-db/orders")
	msg := outbox.Message{Destination: "orders", Key: "order-42", Payload: json.RawMessage(`{"order":42}`)}
	_ = placeOrder(ctx, outboxDB, localDB, msg)

	// The check-back endpoint, at the url of [check_back.producers.orders] in the relay's config:
	http.Handle("/outbox/check", outbox.CheckHandler(localDB))
}
