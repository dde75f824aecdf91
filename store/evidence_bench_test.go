package store_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
)

// benchFolder gives a session the files of a finished lab: an answer, a
// history, and snapshot tars of snapMiB in all over eight nodes.
func benchFolder(b *testing.B, s *store.Store, email string, snapMiB int) string {
	b.Helper()
	ctx := context.Background()
	sess, _ := storetest.SignIn(b, s, email, "exam1", time.Hour, "docker")
	if _, err := s.AppendHistory(ctx, sess.ID, "tokyo", []store.HistoryEntry{{Command: "ip route", Source: "relay"}}); err != nil {
		b.Fatal(err)
	}
	tar := bytes.Repeat([]byte("0123456789abcdef"), snapMiB<<20/16/8)
	for _, node := range []string{"tokyo", "osaka", "kyoto", "g1", "g2", "g3", "g4", "phoenix"} {
		p, err := s.Path(sess.ID, store.SnapshotDir, "exam-"+sess.Short+"-"+node+".tar")
		if err != nil {
			b.Fatal(err)
		}
		if err := store.WriteFileAtomic(p, tar); err != nil {
			b.Fatal(err)
		}
	}
	return sess.ID
}

// BenchmarkEvidence measures what sealing costs the platform's writes and
// the admin listing. Baselines in the same run: an audit append by a store
// that seals nothing, and the listing without evidence states.
func BenchmarkEvidence(b *testing.B) {
	addr := redistest.Socket(b)
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: addr})
	b.Cleanup(func() { rdb.Close() })
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	ctx := context.Background()
	newStore := func(b *testing.B, k ed25519.PrivateKey) *store.Store {
		s, err := store.New(store.Options{Dir: b.TempDir(), Redis: rdb, Prefix: fmt.Sprintf("bench%d:", time.Now().UnixNano()), SigningKey: k})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	audit := func(b *testing.B, s *store.Store, id string) {
		for range b.N {
			if err := s.Audit(ctx, id, store.AuditEntry{Actor: "admin", Action: "note"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("audit/baseline-no-signing", func(b *testing.B) {
		s := newStore(b, nil)
		id := benchFolder(b, s, "a@example.com", 1)
		b.ResetTimer()
		audit(b, s, id)
	})
	b.Run("audit/not-sealed-yet", func(b *testing.B) {
		s := newStore(b, key)
		id := benchFolder(b, s, "a@example.com", 1)
		b.ResetTimer()
		audit(b, s, id)
	})
	for _, mib := range []int{1, 64} {
		b.Run(fmt.Sprintf("audit/sealed-%dMiB", mib), func(b *testing.B) {
			s := newStore(b, key)
			id := benchFolder(b, s, "a@example.com", mib)
			if _, err := s.Seal(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			audit(b, s, id)
		})
	}

	// A page of 50 sealed sessions, as the panel asks for it.
	s := newStore(b, key)
	var ids []string
	for i := range 50 {
		id := benchFolder(b, s, fmt.Sprintf("c%02d@example.com", i), 1)
		if _, err := s.Seal(ctx, id); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	q := store.ListQuery{Limit: 50}
	b.Run("list50/baseline-no-evidence", func(b *testing.B) {
		for range b.N {
			if _, err := s.List(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("list50/with-evidence-states", func(b *testing.B) {
		for range b.N {
			res, err := s.List(ctx, q)
			if err != nil {
				b.Fatal(err)
			}
			page := make([]string, len(res.Sessions))
			for i, x := range res.Sessions {
				page[i] = x.ID
			}
			st, err := s.EvidenceStates(ctx, page)
			if err != nil || st[ids[0]].State != store.EvidenceVerified {
				b.Fatalf("states: %v %v", st[ids[0]], err)
			}
		}
	})
	b.Run("verify-one-1MiB-session", func(b *testing.B) {
		for range b.N {
			if st, err := s.Evidence(ctx, ids[0], true); err != nil || st.State != store.EvidenceVerified {
				b.Fatalf("%v %v", st, err)
			}
		}
	})
}
