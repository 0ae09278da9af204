package outbox

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"
)

// BarrierSchema creates the barrier table in the writer's own database (idempotent): run it
// with your migrations, or at start with db.Exec(ctx, outbox.BarrierSchema).
//
//go:embed barrier.sql
var BarrierSchema string

//go:embed sql/barrier_check.sql
var barrierCheckSQL string

//go:embed sql/barrier_read.sql
var barrierReadSQL string

//go:embed sql/barrier_purge.sql
var barrierPurgeSQL string

// PurgeBarrier deletes barrier rows older than olderThan, which must exceed the longest ttl
// your messages are prepared with; returns how many.
func PurgeBarrier(ctx context.Context, localDB Querier, olderThan time.Duration) (int64, error) {
	var n int64
	err := localDB.QueryRow(ctx, barrierPurgeSQL, olderThan.Milliseconds()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("outbox: purge barrier: %w", err)
	}
	return n, nil
}

// Outcome is check-back's answer.
type Outcome string

const (
	Committed  Outcome = "committed"
	RolledBack Outcome = "rolled_back"
	Unknown    Outcome = "unknown"
)

// Check answers check-back for message id from the barrier in localDB (a pool, not a
// transaction: each of its two statements must commit on its own). If the local transaction
// is still open it waits for its end, bounded by ctx. It answers [RolledBack] only for a
// message whose local transaction did not commit and now never can.
func Check(ctx context.Context, localDB Querier, id string) (Outcome, error) {
	var inserted int
	if err := localDB.QueryRow(ctx, barrierCheckSQL, id).Scan(&inserted); err != nil {
		return Unknown, fmt.Errorf("outbox: check: %w", err)
	}
	var outcome string
	if err := localDB.QueryRow(ctx, barrierReadSQL, id).Scan(&outcome); err != nil {
		return Unknown, fmt.Errorf("outbox: check: %w", err)
	}
	return Outcome(outcome), nil
}

// HandlerOption configures [CheckHandler].
type HandlerOption func(*handler)

// WithBearerToken makes the handler refuse requests without "Authorization: Bearer token",
// the token_file of the producer in the relay's configuration.
func WithBearerToken(token string) HandlerOption {
	return func(h *handler) { h.token = token }
}

// WithErrorLog receives the errors the handler answers "unknown" for (a database outage).
func WithErrorLog(log func(error)) HandlerOption {
	return func(h *handler) { h.log = log }
}

type handler struct {
	db    Querier
	token string
	log   func(error)
}

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// CheckHandler serves the relay's check-back calls (POST, JSON) from the barrier in localDB.
// Mount it at the url of this service's [check_back.producers.<name>] in the relay's config.
func CheckHandler(localDB Querier, opts ...HandlerOption) http.Handler {
	h := &handler{db: localDB, log: func(error) {}}
	for _, o := range opts {
		o(h)
	}
	return h
}

type checkRequest struct {
	MessageID   string    `json:"message_id"`
	Destination string    `json:"destination"`
	MessageKey  *string   `json:"message_key"`
	PreparedAt  time.Time `json:"prepared_at"`
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if h.token != "" {
		want := "Bearer " + h.token
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) != 1 {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	var req checkRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !uuidPattern.MatchString(req.MessageID) {
		http.Error(w, "message_id is not a uuid", http.StatusBadRequest)
		return
	}
	outcome, err := Check(r.Context(), h.db, req.MessageID)
	if err != nil {
		h.log(err)
		outcome = Unknown
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]Outcome{"status": outcome})
}

// Decide confirms or cancels prepared message id by what its local transaction did, as the
// barrier in localDB records it, and returns that. Call it once the local transaction is over,
// whatever it returned: a COMMIT that failed on a lost connection may still have committed,
// and only the barrier knows. A message check-back has decided already is left as it is; one
// that ended otherwise than its local transaction (it expired first) is an error wrapping
// [ErrNotPrepared]. If the barrier cannot be read, nothing is decided: check-back will ask.
func Decide(ctx context.Context, outboxDB, localDB Querier, id string) (Outcome, error) {
	outcome, err := Check(ctx, localDB, id)
	if err != nil {
		return Unknown, err
	}
	if outcome == Committed {
		err = Confirm(ctx, outboxDB, id)
	} else {
		err = Cancel(ctx, outboxDB, id)
	}
	if !errors.Is(err, ErrNotPrepared) {
		return outcome, err
	}
	s, ok, serr := MessageStatus(ctx, outboxDB, id)
	if serr != nil {
		return outcome, serr
	}
	same := ok && (s.Status == string(outcome) || (outcome == Committed && s.Status == "published"))
	if same {
		return outcome, nil
	}
	return outcome, fmt.Errorf("outbox: message %s is %s though its local transaction %s: %w",
		id, s.Status, outcome, ErrNotPrepared)
}
