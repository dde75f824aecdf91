package workers_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/workers"
)

// sealingEnv is newEnv with a store that seals with key.
func sealingEnv(t *testing.T) (*env, ed25519.PublicKey) {
	t.Helper()
	e := newEnv(t)
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e.store, err = store.New(store.Options{Dir: t.TempDir(), Redis: e.rdb, Now: e.clock, SigningKey: key})
	if err != nil {
		t.Fatal(err)
	}
	ex := exam.Default()
	e.h, err = workers.New(workers.Options{Store: e.store, Runtime: e.flaky, Enqueuer: e.enq,
		Exams: func(id string) (*exam.Exam, bool) { return ex, id == ex.ID }, RuntimeName: "memory", Observer: e.obs, Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	return e, key.Public().(ed25519.PublicKey)
}

// The session is sealed once its lab is archived and removed; a cleanup
// run again converges on a folder that still verifies, and one that finds
// the folder tampered with neither signs it nor retries for ever.
func TestCleanupSealsTheSession(t *testing.T) {
	e, pub := sealingEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	dir, _ := e.store.SessionDir(id)
	if ok, _ := evidence.IsSealed(dir); ok {
		t.Fatal("sealed before the lab was removed")
	}
	for i := range 2 {
		if err := e.h.Cleanup(ctx, cleanupTask(t, id, "candidate")); err != nil {
			t.Fatalf("cleanup #%d: %v", i+1, err)
		}
		r, err := evidence.Verify(dir, pub)
		if err != nil || !r.OK() {
			t.Fatalf("after cleanup #%d: %v %v", i+1, r.Problems, err)
		}
		listed := map[string]bool{}
		for _, f := range r.Manifest.Files {
			listed[f.Path] = true
		}
		m := e.checkSnapshot(t, id, "candidate")
		for _, f := range m.Files {
			if !listed[store.SnapshotDir+"/"+f.Name] {
				t.Errorf("snapshot file %s not in the seal", f.Name)
			}
		}
		for _, want := range []string{"metadata.json", store.SnapshotDir + "/" + store.ManifestName} {
			if !listed[want] {
				t.Errorf("%s not in the seal (sealed: %v)", want, listed)
			}
		}
	}

	tar := filepath.Join(dir, store.SnapshotDir, "exam-"+id[:8]+"-tokyo.tar")
	b, err := os.ReadFile(tar)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	os.WriteFile(tar, b, 0o640)
	sealed, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	if err := e.h.Cleanup(ctx, cleanupTask(t, id, "candidate")); err != nil {
		t.Fatalf("cleanup of a tampered folder: %v (it must not retry)", err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile)); !bytes.Equal(sealed, now) {
		t.Fatal("cleanup sealed a tampered folder again")
	}
	if r, _ := evidence.Verify(dir, pub); r.OK() {
		t.Fatal("the tampered snapshot verifies")
	}
}
