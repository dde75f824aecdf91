package workers_test

import (
	"context"
	"slices"
	"testing"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
)

func auditActions(t *testing.T, e *env, id string) []string {
	t.Helper()
	log, err := e.store.AuditLog(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range log {
		out = append(out, a.Action)
	}
	return out
}

func (o *observer) leftovers() (added, cleared int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.leftoversAdded, o.leftoversCleared
}

// TestRuntimeKeepingAPartHoldsNoSession: the runtime removes a lab's
// nodes but keeps its job (as Nomad servers that will not purge do).
// Cleanup completes the session all the same and records the job; a
// rerun and the reaper count attempts on the one record; the reaper
// drops it once the runtime lets go; a live lab with a record is never
// destroyed by the reaper.
func TestRuntimeKeepingAPartHoldsNoSession(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	keep := true
	e.flaky.FailWhen(func(c labtest.Call) error {
		if c.Method != "Destroy" || c.SessionID != id || !keep {
			return nil
		}
		if err := e.mem.Destroy(ctx, id); err != nil {
			return err
		}
		return &lab.LeftoverError{SessionID: id, Leftovers: []lab.Leftover{{Kind: lab.LeftoverJob, Name: jobspecs.JobName(id), Err: "500 purge refused"}}}
	})

	for i := range 2 {
		if err := e.h.Cleanup(ctx, cleanupTask(t, id, "candidate")); err != nil {
			t.Fatalf("cleanup #%d with the job kept: %v", i+1, err)
		}
	}
	if s := e.get(t, id); s.Status != stateCompleted {
		t.Fatalf("status %s with the nodes gone and the job kept, want completed", s.Status)
	}
	recs, err := e.store.SessionLeftovers(ctx, id)
	if err != nil || len(recs) != 1 {
		t.Fatalf("leftovers %+v %v, want the job", recs, err)
	}
	if r := recs[0]; r.Kind != lab.LeftoverJob || r.Name != jobspecs.JobName(id) || r.Runtime != "memory" || r.Attempts != 2 || r.LastError != "500 purge refused" {
		t.Fatalf("record %+v, want the job refused twice", r)
	}
	if acts := auditActions(t, e, id); !slices.Contains(acts, "lab-leftover") {
		t.Fatalf("audit %v lacks lab-leftover", acts)
	}
	if added, cleared := e.obs.leftovers(); added != 1 || cleared != 0 {
		t.Fatalf("observed %d added %d cleared, want 1 0", added, cleared)
	}

	// A live lab that has a record (a stale one) is left alone.
	live := e.readyLab(t, "live@example.com")
	if _, _, err := e.store.NoteLeftovers(ctx, "memory", live, []lab.Leftover{{Kind: lab.LeftoverNetwork, Name: "stale"}}); err != nil {
		t.Fatal(err)
	}
	removed, err := e.h.ReapOnce(ctx)
	if err != nil || slices.Contains(removed, id) || slices.Contains(removed, live) {
		t.Fatalf("reap while the job is kept: removed %v, %v; want neither lab", removed, err)
	}
	if recs, _ := e.store.SessionLeftovers(ctx, id); len(recs) != 1 || recs[0].Attempts != 3 {
		t.Fatalf("leftovers after a reap %+v, want the job at three attempts", recs)
	}
	if inv := e.mem.Inventory(live); len(inv.Nodes) == 0 || e.get(t, live).Status != stateReady {
		t.Fatal("the reaper destroyed a live lab because of a record")
	}

	keep = false
	removed, err = e.h.ReapOnce(ctx)
	if err != nil || !slices.Contains(removed, id) {
		t.Fatalf("reap once the runtime lets go: removed %v, %v; want %s", removed, err, id)
	}
	if recs, _ := e.store.SessionLeftovers(ctx, id); len(recs) != 0 {
		t.Fatalf("leftovers %+v after they were removed, want none", recs)
	}
	if acts := auditActions(t, e, id); !slices.Contains(acts, "lab-leftover-cleared") {
		t.Fatalf("audit %v lacks lab-leftover-cleared", acts)
	}
	if added, cleared := e.obs.leftovers(); added != 1 || cleared != 1 {
		t.Fatalf("observed %d added %d cleared, want 1 and 1", added, cleared)
	}
	all, err := e.store.Leftovers(ctx)
	if err != nil || len(all) != 1 || all[0].SessionID != live {
		t.Fatalf("leftovers %+v %v, want only the live lab's stale one", all, err)
	}
}
