package store_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
)

// sealedSession is a completed session with answers, a history, results,
// an audit entry and a snapshot file, sealed by a store that holds key.
func sealedSession(t *testing.T) (*store.Store, ed25519.PrivateKey, string, string) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s, err := store.New(store.Options{Dir: dir, Redis: redistest.Client(t), SigningKey: key})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker")
	if _, err := s.SaveAnswer(ctx, sess.ID, "t1", json.RawMessage(`"ip route add 10.0.0.0/8 via 10.1.0.1"`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendHistory(ctx, sess.ID, "tokyo", []store.HistoryEntry{{Command: "ip route", Source: "relay"}}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Path(sess.ID, store.SnapshotDir, "exam-"+sess.Short+"-tokyo.tar")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.WriteFileAtomic(snap, bytes.Repeat([]byte("fs"), 10000)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateCompleted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveResults(ctx, sess.ID, &grading.Results{SessionID: sess.ID, ExamID: "exam1", Score: 5, MaxScore: 30,
		Tasks: []grading.TaskResult{{ID: "t2", Kind: "text", MaxPoints: 10, Manual: true}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "archive"}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Seal(ctx, sess.ID)
	if err != nil || st.State != store.EvidenceVerified || st.Files != 6 {
		t.Fatalf("seal = %+v, %v; want verified with metadata, answer, history, snapshot, results, audit", st, err)
	}
	sdir, _ := s.SessionDir(sess.ID)
	return s, key, sess.ID, sdir
}

func mustVerify(t *testing.T, dir string, key ed25519.PrivateKey) *evidence.Report {
	t.Helper()
	r, err := evidence.Verify(dir, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func manifestFiles(t *testing.T, dir string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m evidence.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range m.Files {
		out[f.Path] = true
	}
	return out
}

// Every write the platform makes to a sealed session renews the seal, so
// the folder keeps verifying and the new files are covered.
func TestWritesToASealedSessionRenewTheSeal(t *testing.T) {
	s, key, id, dir := sealedSession(t)
	ctx := context.Background()
	if _, err := s.SetMark(ctx, id, store.Mark{Task: "t2", Points: 7, By: "admin"}, 10); err != nil {
		t.Fatal(err)
	}
	if r := mustVerify(t, dir, key); !r.OK() {
		t.Fatalf("after an admin mark: %v", r.Problems)
	}
	if !manifestFiles(t, dir)["marks/t2.json"] {
		t.Fatal("the renewed seal does not list the mark")
	}
	if err := s.SaveResults(ctx, id, &grading.Results{SessionID: id, ExamID: "exam1", Score: 9, MaxScore: 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, id, func(x *session.Session) error { x.Name = "Ada L."; return nil }); err != nil {
		t.Fatal(err)
	}
	if r := mustVerify(t, dir, key); !r.OK() {
		t.Fatalf("after a regrade and a record update: %v", r.Problems)
	}
	if !manifestFiles(t, dir)["results.1.json"] {
		t.Fatal("the renewed seal does not list the earlier results")
	}
	st, err := s.Evidence(ctx, id, false)
	if err != nil || st.State != store.EvidenceVerified {
		t.Fatalf("evidence = %+v, %v", st, err)
	}

	// A refused transition writes nothing, and the seal is left as it is.
	before, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	if _, err := s.Update(ctx, id, func(x *session.Session) error { return x.Start(time.Now()) }); !errors.Is(err, session.ErrNotAllowed) {
		t.Fatalf("start of a completed session: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile)); !bytes.Equal(before, after) {
		t.Fatal("a refused transition renewed the seal")
	}
}

// A folder changed behind the platform's back is never signed again: an
// admin's later action must not launder the change.
func TestATamperedSessionIsNotResealed(t *testing.T) {
	s, key, id, dir := sealedSession(t)
	ctx := context.Background()
	answer := filepath.Join(dir, store.AnswersDir, "t1.json")
	info, _ := os.Stat(answer)
	b, _ := os.ReadFile(answer)
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(answer, b, 0o640); err != nil {
		t.Fatal(err)
	}
	// Same size, and the modification time set back: only the change time
	// (and the contents) tell.
	if err := os.Chtimes(answer, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	sealedManifest, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	sealedSig, _ := os.ReadFile(filepath.Join(dir, evidence.SignatureFile))

	// The mark is kept (nothing acknowledged is lost), the seal is not renewed.
	if _, err := s.SetMark(ctx, id, store.Mark{Task: "t2", Points: 7, By: "admin"}, 10); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Marks(ctx, id); err != nil || m["t2"].Points != 7 {
		t.Fatalf("marks = %v, %v", m, err)
	}
	nowManifest, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	nowSig, _ := os.ReadFile(filepath.Join(dir, evidence.SignatureFile))
	if !bytes.Equal(sealedManifest, nowManifest) || !bytes.Equal(sealedSig, nowSig) {
		t.Fatal("the tampered folder was sealed again")
	}
	r := mustVerify(t, dir, key)
	if r.OK() || !strings.Contains(fmt.Sprint(r.Problems), "changed answers/t1.json") {
		t.Fatalf("verify after the mark: %v; want the changed answer still named", r.Problems)
	}
	if _, err := s.Seal(ctx, id); !errors.Is(err, store.ErrEvidence) {
		t.Fatalf("Seal of a tampered folder = %v, want ErrEvidence", err)
	}
	audit, err := s.AuditLog(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var failures int
	for _, e := range audit {
		if e.Action == "evidence-failed" {
			failures++
			if e.Detail["during"] != "mark" && e.Detail["during"] != "seal" {
				t.Errorf("failure entry %+v", e)
			}
		}
	}
	if failures != 2 {
		t.Fatalf("%d evidence-failed audit entries, want one for the mark and one for the seal", failures)
	}
	for _, full := range []bool{false, true} {
		st, err := s.Evidence(ctx, id, full)
		if err != nil || st.State != store.EvidenceFailed || !strings.Contains(strings.Join(st.Problems, "\n"), "changed answers/t1.json") {
			t.Fatalf("evidence (full %v) = %+v, %v", full, st, err)
		}
	}
	states, err := s.EvidenceStates(ctx, []string{id})
	if err != nil || states[id].State != store.EvidenceFailed {
		t.Fatalf("listing state = %+v, %v", states[id], err)
	}
}

// Writers in several processes renew the seal one at a time: however they
// interleave, the last seal covers every write.
func TestConcurrentWritesKeepTheSealWhole(t *testing.T) {
	s, key, id, dir := sealedSession(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Audit(ctx, id, store.AuditEntry{Actor: "admin", Action: fmt.Sprintf("note-%d", i)})
		}()
	}
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.SetMark(ctx, id, store.Mark{Task: fmt.Sprintf("m%d", i), Points: i, By: "admin"}, 10)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if r := mustVerify(t, dir, key); !r.OK() {
		t.Fatalf("after concurrent writes: %v", r.Problems)
	}
	files := manifestFiles(t, dir)
	for i := range 4 {
		if !files[fmt.Sprintf("marks/m%d.json", i)] {
			t.Errorf("mark m%d not in the seal", i)
		}
	}
	audit, _ := s.AuditLog(ctx, id)
	for _, e := range audit {
		if e.Action == "evidence-failed" {
			t.Fatalf("a concurrent write was taken for tampering: %+v", e)
		}
	}
}

// The listing never hashes: it trusts the last verification while the
// files keep their stamps, and otherwise checks signature, names and sizes.
func TestEvidenceStatesForTheListing(t *testing.T) {
	s, _, id, dir := sealedSession(t)
	ctx := context.Background()
	fresh, _ := storetest.SignIn(t, s, "bob@example.com", "exam1", time.Hour, "docker")
	states, err := s.EvidenceStates(ctx, []string{id, fresh.ID})
	if err != nil {
		t.Fatal(err)
	}
	if states[id].State != store.EvidenceVerified || states[fresh.ID].State != store.EvidenceUnsealed {
		t.Fatalf("states = %+v", states)
	}

	// Same size, other content: the listing cannot tell, and says so.
	answer := filepath.Join(dir, store.AnswersDir, "t1.json")
	b, _ := os.ReadFile(answer)
	b[len(b)/2] ^= 0x01
	os.WriteFile(answer, b, 0o640)
	states, _ = s.EvidenceStates(ctx, []string{id})
	if states[id].State != store.EvidenceUnchecked {
		t.Fatalf("after a same-size change: %+v, want unchecked", states[id])
	}
	// The session page hashes, and the failure sticks in the listing.
	st, err := s.Evidence(ctx, id, false)
	if err != nil || st.State != store.EvidenceFailed {
		t.Fatalf("session page = %+v, %v", st, err)
	}
	states, _ = s.EvidenceStates(ctx, []string{id})
	if states[id].State != store.EvidenceFailed || len(states[id].Problems) != 1 {
		t.Fatalf("listing after the session page: %+v", states[id])
	}

	// A change of size shows in the listing at once, naming the file.
	s2, _, id2, dir2 := sealedSession(t)
	os.WriteFile(filepath.Join(dir2, store.AnswersDir, "t1.json"), []byte("{}"), 0o640)
	states, _ = s2.EvidenceStates(ctx, []string{id2})
	if states[id2].State != store.EvidenceFailed || !strings.HasPrefix(strings.Join(states[id2].Problems, ""), "changed answers/t1.json") {
		t.Fatalf("listing after a change of size: %+v", states[id2])
	}

	// A removed seal is a failure, not a session waiting for its seal.
	s3, _, id3, dir3 := sealedSession(t)
	os.Remove(filepath.Join(dir3, evidence.ManifestFile))
	states, _ = s3.EvidenceStates(ctx, []string{id3})
	if states[id3].State != store.EvidenceFailed {
		t.Fatalf("listing after the seal was removed: %+v", states[id3])
	}
	if st, _ := s3.Evidence(ctx, id3, true); st.State != store.EvidenceFailed || !strings.Contains(st.Problems[0], "seal is gone") {
		t.Fatalf("session page after the seal was removed: %+v", st)
	}
}

// A seal the platform could not renew after its own write (a full disk,
// here a folder in the way of the new signature) is renewed by the next
// write; the mark written meanwhile is kept and ends up sealed.
func TestAFailedRenewalResumes(t *testing.T) {
	s, key, id, dir := sealedSession(t)
	ctx := context.Background()
	obstacle := filepath.Join(dir, ".evidence.sig.next", "x")
	if err := os.MkdirAll(obstacle, 0o750); err != nil {
		t.Fatal(err)
	}
	sealed, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	if _, err := s.SetMark(ctx, id, store.Mark{Task: "t2", Points: 3, By: "admin"}, 10); err != nil {
		t.Fatalf("the mark is refused when its seal cannot be renewed: %v", err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile)); !bytes.Equal(sealed, now) {
		t.Fatal("the manifest changed though its signature could not be written")
	}
	for _, full := range []bool{false, true} {
		st, err := s.Evidence(ctx, id, full)
		if err != nil || st.State != store.EvidenceUnchecked || !strings.Contains(strings.Join(st.Problems, ""), "could not be renewed after mark") {
			t.Fatalf("evidence (full %v) while the renewal waits: %+v %v", full, st, err)
		}
	}
	os.RemoveAll(filepath.Dir(obstacle))
	if err := s.Audit(ctx, id, store.AuditEntry{Actor: "admin", Action: "note"}); err != nil {
		t.Fatal(err)
	}
	if r := mustVerify(t, dir, key); !r.OK() {
		t.Fatalf("after the next write: %v", r.Problems)
	}
	if !manifestFiles(t, dir)["marks/t2.json"] {
		t.Fatal("the mark written while the renewal failed is not sealed")
	}
	if st, err := s.Evidence(ctx, id, true); err != nil || st.State != store.EvidenceVerified {
		t.Fatalf("evidence after the renewal: %+v %v", st, err)
	}
}

// While a renewal waits, a change that is not the platform's is caught.
func TestAFailedRenewalDoesNotCoverTampering(t *testing.T) {
	s, _, id, dir := sealedSession(t)
	ctx := context.Background()
	obstacle := filepath.Join(dir, ".evidence.sig.next", "x")
	os.MkdirAll(obstacle, 0o750)
	if _, err := s.SetMark(ctx, id, store.Mark{Task: "t2", Points: 3, By: "admin"}, 10); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Dir(obstacle))
	os.WriteFile(filepath.Join(dir, store.AnswersDir, "t1.json"), []byte(`{"task_id":"t1","value":"other"}`), 0o640)
	sealed, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	if err := s.Audit(ctx, id, store.AuditEntry{Actor: "admin", Action: "note"}); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile)); !bytes.Equal(sealed, now) {
		t.Fatal("a folder changed while its renewal waited was sealed again")
	}
	if st, _ := s.Evidence(ctx, id, true); st.State != store.EvidenceFailed {
		t.Fatalf("evidence: %+v, want failed", st)
	}
}
