// Command writer is a small order service that writes two-phase messages with the outbox
// package, driven line by line from stdin so that a test (or a curious reader) can stop it
// at any step. The relay's end-to-end tests run it.
//
//	writer serve -local URL [-addr 127.0.0.1:0] [-token T]
//	    serves check-back at http://ADDR/check from the barrier in the local database and
//	    prints "listening http://ADDR/check".
//	writer write -outbox URL -local URL -producer NAME -destination D -key K -order N [-ttl 1m]
//	    prepares a message and prints "prepared ID", then runs the steps read from stdin:
//	    begin (local transaction: insert the order, write the barrier row), commit, abort,
//	    confirm, cancel, die (SIGKILL itself: a crash). Each step prints what it did.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/clients/go/outbox"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: writer serve|write [flags]"))
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "write":
		write(os.Args[2:])
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "writer:", err)
	os.Exit(2)
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	local := fs.String("local", "", "the service's own database")
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	token := fs.String("token", "", "bearer token the relay sends")
	_ = fs.Parse(args)
	ctx := context.Background()
	db, err := pgxpool.New(ctx, *local)
	if err != nil {
		fail(err)
	}
	if _, err := db.Exec(ctx, outbox.BarrierSchema); err != nil {
		fail(err)
	}
	var opts []outbox.HandlerOption
	if *token != "" {
		opts = append(opts, outbox.WithBearerToken(*token))
	}
	opts = append(opts, outbox.WithErrorLog(func(err error) { fmt.Fprintln(os.Stderr, "check:", err) }))
	mux := http.NewServeMux()
	mux.Handle("/check", outbox.CheckHandler(db, opts...))
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fail(err)
	}
	fmt.Printf("listening http://%s/check\n", ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	fail(srv.Serve(ln))
}

func write(args []string) {
	fs := flag.NewFlagSet("write", flag.ExitOnError)
	outboxURL := fs.String("outbox", "", "the outbox's database")
	localURL := fs.String("local", "", "the service's own database")
	producer := fs.String("producer", "", "this service's name in the relay's check_back.producers")
	destination := fs.String("destination", "orders", "where the message goes")
	key := fs.String("key", "", "message key")
	order := fs.Int64("order", 1, "the order's id")
	ttl := fs.Duration("ttl", time.Minute, "how long the message may stay undecided")
	_ = fs.Parse(args)
	ctx := context.Background()
	outboxDB, err := pgxpool.New(ctx, *outboxURL)
	if err != nil {
		fail(err)
	}
	localDB, err := pgxpool.New(ctx, *localURL)
	if err != nil {
		fail(err)
	}
	for _, ddl := range []string{outbox.BarrierSchema, "CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY)"} {
		if _, err := localDB.Exec(ctx, ddl); err != nil {
			fail(err)
		}
	}
	payload, _ := json.Marshal(map[string]int64{"order": *order})
	id, err := outbox.Prepare(ctx, outboxDB, outbox.Message{
		Destination: *destination, Key: *key, Payload: payload,
	}, *producer, *ttl)
	if err != nil {
		fail(err)
	}
	fmt.Println("prepared", id)

	var tx pgx.Tx
	steps := bufio.NewScanner(os.Stdin)
	for steps.Scan() {
		switch step := steps.Text(); step {
		case "begin":
			if tx, err = localDB.Begin(ctx); err != nil {
				fail(err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO orders (id) VALUES ($1)", *order); err != nil {
				fail(err)
			}
			err := outbox.InLocalTx(ctx, tx, id)
			if errors.Is(err, outbox.ErrCheckedFirst) {
				_ = tx.Rollback(ctx)
				fmt.Println("checked-first")
				os.Exit(3)
			} else if err != nil {
				fail(err)
			}
			fmt.Println("in-local-tx")
		case "commit":
			if err := tx.Commit(ctx); err != nil {
				fail(err)
			}
			fmt.Println("committed-local")
		case "abort":
			if err := tx.Rollback(ctx); err != nil {
				fail(err)
			}
			fmt.Println("aborted-local")
		case "confirm":
			if err := outbox.Confirm(ctx, outboxDB, id); err != nil {
				fail(err)
			}
			fmt.Println("confirmed")
		case "cancel":
			if err := outbox.Cancel(ctx, outboxDB, id); err != nil {
				fail(err)
			}
			fmt.Println("cancelled")
		case "die":
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		default:
			fail(fmt.Errorf("unknown step %q", step))
		}
	}
}
