package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outbox-relay/outbox-relay/clients/go/outbox"
)

var order = outbox.Message{
	Destination: "orders",
	Payload:     json.RawMessage(`{"order": 42}`),
	Key:         "order-42",
	Headers:     map[string]string{"trace": "abc"},
}

func TestEnqueueCommitsWithTheCallersTransaction(t *testing.T) {
	ctx := context.Background()
	db, owner := outboxDB(t)
	for _, commit := range []bool{true, false} {
		tx, err := db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := outbox.Enqueue(ctx, tx, order)
		if err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			r := readRow(t, owner, id)
			if r.status != "committed" || r.destination != "orders" || *r.key != "order-42" || r.producer != nil {
				t.Fatalf("committed row: %+v", r)
			}
		} else {
			_ = tx.Rollback(ctx)
			var n int
			_ = owner.QueryRow(ctx, "SELECT count(*) FROM outbox.messages WHERE message_id = $1", id).Scan(&n)
			if n != 0 {
				t.Fatalf("a rolled-back transaction left its message")
			}
		}
	}
}

func TestDatabaseSQLHandlesWork(t *testing.T) {
	ctx := context.Background()
	db, owner := outboxDB(t)
	std := stdlib.OpenDBFromPool(db)
	defer std.Close()
	tx, err := std.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := outbox.Enqueue(ctx, outbox.Std(tx), order)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if r := readRow(t, owner, id); r.status != "committed" {
		t.Fatalf("%+v", r)
	}
	var _ outbox.StdQuerier = (*sql.Conn)(nil)
}

func TestPrepareThenConfirmOrCancelOnce(t *testing.T) {
	ctx := context.Background()
	db, owner := outboxDB(t)
	for _, tc := range []struct {
		decide func(context.Context, outbox.Querier, string) error
		status string
	}{{outbox.Confirm, "committed"}, {outbox.Cancel, "rolled_back"}} {
		id, err := outbox.Prepare(ctx, db, order, "orders-service", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if r := readRow(t, owner, id); r.status != "prepared" || *r.producer != "orders-service" {
			t.Fatalf("prepared row: %+v", r)
		}
		if s, ok, err := outbox.MessageStatus(ctx, db, id); err != nil || !ok || s.Status != "prepared" || s.Attempts != 0 || s.LastError != nil || s.PublishedAt != nil {
			t.Fatalf("status of a prepared message: %+v %v %v", s, ok, err)
		}
		if extended, err := outbox.Extend(ctx, db, id, 2*time.Hour); err != nil || !extended {
			t.Fatalf("extend a prepared message: %v %v", extended, err)
		}
		if err := tc.decide(ctx, db, id); err != nil {
			t.Fatal(err)
		}
		if r := readRow(t, owner, id); r.status != tc.status {
			t.Fatalf("want %s, got %+v", tc.status, r)
		}
		if err := outbox.Confirm(ctx, db, id); !errors.Is(err, outbox.ErrNotPrepared) {
			t.Fatalf("a decided message confirmed again: %v", err)
		}
		if extended, err := outbox.Extend(ctx, db, id, time.Hour); err != nil || extended {
			t.Fatalf("a decided message was extended: %v %v", extended, err)
		}
	}
	if _, ok, err := outbox.MessageStatus(ctx, db, "0190a0a0-0000-7000-8000-0000000000ff"); err != nil || ok {
		t.Fatalf("an unknown id has a status: %v %v", ok, err)
	}
}

func TestBadInputFailsWithTheSQLAPIsErrorAndWritesNothing(t *testing.T) {
	ctx := context.Background()
	db, owner := outboxDB(t)
	bad := []struct {
		call       func() error
		code, want string
	}{
		{func() error { _, err := outbox.Enqueue(ctx, db, outbox.Message{Payload: []byte(`{}`)}); return err }, "22023", "destination"},
		{func() error { _, err := outbox.Enqueue(ctx, db, outbox.Message{Destination: "d"}); return err }, "22023", "payload"},
		{func() error {
			_, err := outbox.Enqueue(ctx, db, outbox.Message{Destination: "d", Payload: []byte(`{`)})
			return err
		}, "22P02", "json"},
		{func() error { _, err := outbox.Prepare(ctx, db, order, "", 0); return err }, "22023", "ttl"},
		{func() error { _, err := outbox.Prepare(ctx, db, order, "no spaces allowed", time.Minute); return err }, "22023", "producer"},
	}
	for i, b := range bad {
		var pgErr *pgconn.PgError
		if err := b.call(); !errors.As(err, &pgErr) || pgErr.Code != b.code || !strings.Contains(pgErr.Message, b.want) {
			t.Errorf("case %d: %v, want SQLSTATE %s naming %s", i, err, b.code, b.want)
		}
	}
	var n int
	_ = owner.QueryRow(ctx, "SELECT count(*) FROM outbox.messages").Scan(&n)
	if n != 0 {
		t.Fatalf("bad calls wrote %d rows", n)
	}
}

// checkAsync runs Check in the background, reporting on the returned channel.
func checkAsync(local *pgxpool.Pool, id string) chan outbox.Outcome {
	done := make(chan outbox.Outcome, 1)
	go func() {
		o, err := outbox.Check(context.Background(), local, id)
		if err != nil {
			o = outbox.Outcome("error: " + err.Error())
		}
		done <- o
	}()
	return done
}

// waitingOnALock is the positive signal that Check is blocked by the open local transaction.
func waitingOnALock(t *testing.T, local *pgxpool.Pool) {
	waitFor(t, "the check to wait on the local transaction's row lock", func() bool {
		var n int
		_ = local.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity
			  WHERE datname = current_database() AND wait_event_type = 'Lock'
			    AND query LIKE '%outbox_barrier%'`).Scan(&n)
		return n == 1
	})
}

func TestACheckDuringTheLocalTransactionWaitsAndIsRightBothWays(t *testing.T) {
	ctx := context.Background()
	local := localDB(t)
	for _, commit := range []bool{true, false} {
		id := "0190a0a0-0000-7000-8000-00000000000" + map[bool]string{true: "1", false: "2"}[commit]
		tx, err := local.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO orders VALUES (42)"); err != nil {
			t.Fatal(err)
		}
		if err := outbox.InLocalTx(ctx, tx, id); err != nil {
			t.Fatal(err)
		}
		answer := checkAsync(local, id)
		waitingOnALock(t, local)
		select {
		case o := <-answer:
			t.Fatalf("answered %q while the local transaction was open", o)
		default:
		}
		want := outbox.RolledBack
		if commit {
			want = outbox.Committed
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := <-answer; got != want {
			t.Fatalf("local commit %v: answered %q, want %q", commit, got, want)
		}
		_, _ = local.Exec(ctx, "DELETE FROM orders")
	}
}

func TestACheckBeforeTheLocalTransactionMakesItFail(t *testing.T) {
	ctx := context.Background()
	local := localDB(t)
	id := "0190a0a0-0000-7000-8000-000000000003"
	if got, err := outbox.Check(ctx, local, id); err != nil || got != outbox.RolledBack {
		t.Fatalf("check first: %q, %v", got, err)
	}
	err := pgx.BeginFunc(ctx, local, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO orders VALUES (43)"); err != nil {
			return err
		}
		return outbox.InLocalTx(ctx, tx, id)
	})
	if !errors.Is(err, outbox.ErrCheckedFirst) {
		t.Fatalf("the local transaction after a rolled_back answer: %v", err)
	}
	var n int
	_ = local.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n)
	if n != 0 {
		t.Fatal("the local transaction committed after check-back answered rolled_back")
	}
	// The answer stays the same when asked again.
	if got, _ := outbox.Check(ctx, local, id); got != outbox.RolledBack {
		t.Fatalf("asked again: %q", got)
	}
}

func TestTheHandlerAnswersJSONAndChecksItsToken(t *testing.T) {
	ctx := context.Background()
	local := localDB(t)
	id := "0190a0a0-0000-7000-8000-000000000004"
	if err := pgx.BeginFunc(ctx, local, func(tx pgx.Tx) error { return outbox.InLocalTx(ctx, tx, id) }); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(outbox.CheckHandler(local, outbox.WithBearerToken("t0ken")))
	defer srv.Close()
	post := func(body, token string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewBufferString(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, strings.TrimSpace(b.String())
	}
	check := `{"message_id":"` + id + `","destination":"orders","message_key":null,"prepared_at":"2026-12-05T10:00:00Z"}`
	if code, _ := post(check, ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := post(check, "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	if code, body := post(`{"message_id":"x"}`, "t0ken"); code != http.StatusBadRequest {
		t.Fatalf("bad id: %d %s", code, body)
	}
	if code, body := post(check, "t0ken"); code != http.StatusOK || body != `{"status":"committed"}` {
		t.Fatalf("check: %d %s", code, body)
	}
}

func TestPurgeBarrierKeepsRecentRows(t *testing.T) {
	ctx := context.Background()
	local := localDB(t)
	_, _ = local.Exec(ctx, `INSERT INTO outbox_barrier (message_id, outcome, created_at) VALUES
		('0190a0a0-0000-7000-8000-000000000005', 'committed', now() - interval '2 hours'),
		('0190a0a0-0000-7000-8000-000000000006', 'committed', now())`)
	n, err := outbox.PurgeBarrier(ctx, local, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("purged %d, %v", n, err)
	}
}

func TestDecideFollowsTheLocalTransactionWhateverItReturned(t *testing.T) {
	ctx := context.Background()
	db, owner := outboxDB(t)
	local := localDB(t)
	for _, commit := range []bool{true, false} {
		id, err := outbox.Prepare(ctx, db, order, "orders", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		tx, err := local.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.InLocalTx(ctx, tx, id); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		want := map[bool]outbox.Outcome{true: outbox.Committed, false: outbox.RolledBack}[commit]
		if got, err := outbox.Decide(ctx, db, local, id); err != nil || got != want {
			t.Fatalf("decide after commit=%v: %v %v", commit, got, err)
		}
		if r := readRow(t, owner, id); r.status != string(want) {
			t.Fatalf("row %+v, want %s", r, want)
		}
		// Deciding again (as after check-back decided) changes nothing and is no error.
		if got, err := outbox.Decide(ctx, db, local, id); err != nil || got != want {
			t.Fatalf("decide again: %v %v", got, err)
		}
	}
}
