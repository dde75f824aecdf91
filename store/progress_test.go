package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
)

// TestProgress: a lab's node progress is kept with a TTL, read back as
// written, and gone once cleared; a malformed lab id is refused.
func TestProgress(t *testing.T) {
	s, rdb, _ := newStore(t)
	ctx := context.Background()
	const id = "abcdefgh1234"
	if p, err := s.ReadProgress(ctx, id); err != nil || p != nil {
		t.Fatalf("progress of a lab no worker touched: %+v, %v; want none", p, err)
	}
	nodes := []lab.NodeStatus{{Name: "tokyo", State: lab.StateRunning}, {Name: "osaka", State: lab.StatePending}}
	if err := s.PutProgress(ctx, id, nodes); err != nil {
		t.Fatal(err)
	}
	p, err := s.ReadProgress(ctx, id)
	if err != nil || p == nil || len(p.Nodes) != 2 || p.Nodes[1].State != lab.StatePending || p.At.IsZero() {
		t.Fatalf("progress read back: %+v, %v", p, err)
	}
	ttl, err := rdb.TTL(ctx, "examlab:progress:"+id).Result()
	if err != nil || ttl <= 0 || ttl > store.ProgressTTL {
		t.Fatalf("progress TTL %s (%v), want within (0, %s]", ttl, err, store.ProgressTTL)
	}
	if err := s.ClearProgress(ctx, id); err != nil {
		t.Fatal(err)
	}
	if p, err := s.ReadProgress(ctx, id); err != nil || p != nil {
		t.Fatalf("progress after clear: %+v, %v; want none", p, err)
	}
	for _, bad := range []string{"", "../x", "ABC"} {
		if err := s.PutProgress(ctx, bad, nodes); !errors.Is(err, store.ErrBadID) {
			t.Errorf("PutProgress(%q) = %v, want ErrBadID", bad, err)
		}
	}
}
