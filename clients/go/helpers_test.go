package outbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/clients/go/outbox"
)

// The same server the relay's own tests use (scripts/services.sh up postgres).
func adminURL() string {
	if u := os.Getenv("OUTBOX_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:54329/postgres"
}

// The relay binary migrates each outbox database, as users do.
func relayBin(t *testing.T) string {
	if b := os.Getenv("OUTBOX_TEST_RELAY_BIN"); b != "" {
		return b
	}
	b, err := filepath.Abs("../../target/debug/outbox-relay")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b); err != nil {
		t.Fatalf("no relay binary at %s (cargo build, or set OUTBOX_TEST_RELAY_BIN): %v", b, err)
	}
	return b
}

// freshDB creates a database of its own for one test, dropped when the test ends.
func freshDB(t *testing.T, prefix string) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := fmt.Sprintf("go_%s_%s", prefix, hex.EncodeToString(b))
	admin, err := pgxpool.New(ctx, adminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(adminURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		admin, err := pgxpool.New(context.Background(), adminURL())
		if err == nil {
			_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			admin.Close()
		}
	})
	return pool, u.String()
}

// outboxDB is a migrated outbox database: a pool as a member of outbox_writer, as applications
// write, and one as the owner, to read rows back.
func outboxDB(t *testing.T) (writer, owner *pgxpool.Pool) {
	t.Helper()
	owner, dbURL := freshDB(t, "outbox")
	cmd := exec.Command(relayBin(t), "migrate")
	cmd.Env = append(os.Environ(), "OUTBOX_RELAY__DATABASE__URL="+dbURL, "OUTBOX_RELAY__LOG__FORMAT=text")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("outbox-relay migrate: %v\n%s", err, out)
	}
	ctx := context.Background()
	_, err := owner.Exec(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '`+writerLogin+`') THEN
			CREATE ROLE `+writerLogin+` LOGIN IN ROLE outbox_writer;
		END IF;
	EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
	END $$`)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(dbURL)
	u.User = url.User(writerLogin)
	writer, err = pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(writer.Close)
	return writer, owner
}

const writerLogin = "outbox_writer_test"

// localDB is the writer's own database, with the barrier table.
func localDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := freshDB(t, "local")
	if _, err := pool.Exec(context.Background(), outbox.BarrierSchema); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), "CREATE TABLE orders (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	return pool
}

// waitFor polls cond until it holds, failing the test at the deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type row struct {
	status, destination string
	key, producer       *string
}

func readRow(t *testing.T, db *pgxpool.Pool, id string) row {
	t.Helper()
	var r row
	err := db.QueryRow(context.Background(),
		"SELECT status::text, destination, message_key, producer FROM outbox.messages WHERE message_id = $1", id).
		Scan(&r.status, &r.destination, &r.key, &r.producer)
	if err != nil {
		t.Fatalf("row %s: %v", id, err)
	}
	return r
}
