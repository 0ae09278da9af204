package outbox_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/clients/go/outbox"
)

func TestPlaceOrder(t *testing.T) {
	ctx := context.Background()
	outboxDB, owner := outboxDB(t)
	local := localDB(t)
	if err := placeOrder(ctx, outboxDB, local, order); err != nil {
		t.Fatal(err)
	}
	var id, status string
	err := owner.QueryRow(ctx, "SELECT message_id::text, status::text FROM outbox.messages WHERE producer = 'orders'").
		Scan(&id, &status)
	if err != nil || status != "committed" {
		t.Fatalf("status %q, %v", status, err)
	}
	if got, _ := outbox.Check(ctx, local, id); got != outbox.Committed {
		t.Fatalf("check-back would answer %q", got)
	}
}

// The README's Go snippet is placeOrder's body, line for line, so what users copy is what
// TestPlaceOrder runs.
func TestTheReadmeSnippetIsPlaceOrder(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	normalize := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			l = strings.ReplaceAll(l, "\t", "    ")
			if strings.TrimSpace(l) != "" {
				out = append(out, strings.TrimRight(l, " "))
			}
		}
		return out
	}
	_, after, ok := strings.Cut(string(readme), "```go\n")
	if !ok {
		t.Fatal("README.md has no Go snippet")
	}
	snippet, _, _ := strings.Cut(after, "```")
	want := normalize(strings.Split(snippet, "\n"))
	body := string(example)
	start := strings.Index(body, "func placeOrder(")
	end := strings.Index(body[start:], "\n}\n")
	lines := normalize(strings.Split(body[start:start+end], "\n")[1:])
	for i := range lines {
		lines[i] = strings.TrimPrefix(lines[i], "    ")
	}
	if strings.Join(want, "\n") != strings.Join(lines, "\n") {
		t.Fatalf("README.md's Go snippet is not placeOrder's body:\n--- README\n%s\n--- placeOrder\n%s",
			strings.Join(want, "\n"), strings.Join(lines, "\n"))
	}
}
