package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
)

// TestReviewSlots: a review lab takes one of the deployment's lab slots
// (refused in plain words when none is free), a session has one live
// review lab at a time, the admission sweep leaves its slot alone though
// it has no session record, and its end gives the slot back.
func TestReviewSlots(t *testing.T) {
	ctx := context.Background()
	s, _ := queueStore(t, 2)
	openSitting(t, s, "s1", 0)
	a, b, c := signedIn(t, s, "s1", "a"), signedIn(t, s, "s1", "b"), signedIn(t, s, "s1", "c")

	// One candidate lab holds a slot.
	running(t, s, a.ID)
	r1, created, err := s.StartReview(ctx, b, "admin", time.Hour)
	if err != nil || !created || r1.Status != store.ReviewStarting || !lab.ValidSessionID(r1.ID) || r1.ID == b.ID {
		t.Fatalf("first review lab: %+v %v %v", r1, created, err)
	}
	again, created, err := s.StartReview(ctx, b, "admin", time.Hour)
	if err != nil || created || again.ID != r1.ID {
		t.Fatalf("second ask for the same session: %+v %v %v, want the live one", again, created, err)
	}
	_, _, err = s.StartReview(ctx, c, "admin", time.Hour)
	if !errors.Is(err, store.ErrNoCapacity) || !strings.Contains(err.Error(), "all 2 lab slots") {
		t.Fatalf("a review lab beyond the limit: %v, want ErrNoCapacity in words", err)
	}
	q, err := s.Queue(ctx)
	if err != nil || q.Running != 2 {
		t.Fatalf("queue: %+v %v, want the candidate's lab and the review lab running", q, err)
	}
	rep, err := s.RepairQueue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range rep.Fixed {
		if id == r1.ID {
			t.Fatalf("the admission sweep took the review lab's slot: %+v", rep)
		}
	}
	if q, _ := s.Queue(ctx); q.Running != 2 {
		t.Fatalf("after the sweep %d running, want 2", q.Running)
	}
	live, err := s.LiveReviews(ctx)
	if err != nil || len(live) != 1 || live[0].ID != r1.ID {
		t.Fatalf("live review labs: %+v %v", live, err)
	}

	ended, err := s.UpdateReview(ctx, r1.ID, func(r *store.Review) error {
		r.Status, r.Detail = store.ReviewEnded, "test"
		return nil
	})
	if err != nil || ended.Status != store.ReviewEnded {
		t.Fatalf("end: %+v %v", ended, err)
	}
	if q, _ := s.Queue(ctx); q.Running != 1 {
		t.Fatalf("after the end %d running, want 1", q.Running)
	}
	if live, _ := s.LiveReviews(ctx); len(live) != 0 {
		t.Fatalf("an ended review lab is still live: %+v", live)
	}
	if got, err := s.Review(ctx, r1.ID); err != nil || got.Status != store.ReviewEnded {
		t.Fatalf("the ended record: %+v %v", got, err)
	}
	if _, err := s.UpdateReview(ctx, r1.ID, func(r *store.Review) error { r.Status = store.ReviewReady; return nil }); err == nil {
		t.Fatal("an ended review lab came back to life")
	}
	if _, _, err := s.StartReview(ctx, c, "admin", time.Hour); err != nil {
		t.Fatalf("a review lab once a slot is free: %v", err)
	}
}

// TestCheckArchive: a review lab needs the whole archive; each thing
// missing or wrong is named in plain words.
func TestCheckArchive(t *testing.T) {
	ctx := context.Background()
	s, _ := queueStore(t, 0)
	openSitting(t, s, "s1", 0)
	sess := signedIn(t, s, "s1", "a")
	nodes := []lab.Node{{Name: "tokyo", Container: lab.ContainerName(sess.ID, "tokyo")}, {Name: "osaka", Container: lab.ContainerName(sess.ID, "osaka")}}
	dir, _ := s.Path(sess.ID, store.SnapshotDir)
	os.MkdirAll(dir, 0o750)
	write := func(name, body string) store.File {
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o640)
		sum := sha256.Sum256([]byte(body))
		return store.File{Name: name, Size: int64(len(body)), SHA256: hex.EncodeToString(sum[:])}
	}
	manifest := func(files ...store.File) {
		b, _ := json.Marshal(store.Manifest{SessionID: sess.ID, Files: files})
		os.WriteFile(filepath.Join(dir, store.ManifestName), b, 0o640)
	}
	tokyo := write(nodes[0].Container+".tar", "tokyo's snapshot")
	osaka := write(nodes[1].Container+".tar", "osaka's snapshot")

	check := func(want string) {
		t.Helper()
		_, err := s.CheckArchive(ctx, sess.ID, nodes, true)
		if want == "" {
			if err != nil {
				t.Fatalf("a whole archive: %v", err)
			}
			return
		}
		if !errors.Is(err, store.ErrArchiveIncomplete) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want ErrArchiveIncomplete naming %q", err, want)
		}
	}
	check("no snapshot manifest")
	manifest(tokyo)
	check("lists no " + nodes[1].Container + ".tar for node osaka")
	manifest(tokyo, osaka)
	check("")
	write(nodes[1].Container+".tar", "osaka's snapshoT")
	check(nodes[1].Container + ".tar of node osaka has sha256")
	write(nodes[1].Container+".tar", "osaka's snapshot!")
	check("is 17 bytes where the manifest says 16")
	os.Remove(filepath.Join(dir, nodes[0].Container+".tar"))
	check(nodes[0].Container + ".tar of node tokyo is missing")
}
