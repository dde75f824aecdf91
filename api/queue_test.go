package api_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// The admission queue's tests run the platform on real Redis and real
// containers with the one-node exam in testdata, so that five candidates'
// labs, at most two at a time, stay cheap.

// queueTimeout bounds a wait on the queue to move (a lab to end and the
// next to be admitted and provisioned).
const queueTimeout = 3 * time.Minute

// queueView is what the tests read of a candidate's status view.
type queueView struct {
	ID              string `json:"id"`
	Status          string `json:"status"`
	Error           string `json:"error"`
	QueuePosition   int    `json:"queue_position"`
	QueueAhead      *int   `json:"queue_ahead"`
	EstimateSeconds *int64 `json:"estimate_seconds"`
}

// queueEdit configures a test's stacks: the one-node exam, every sweep
// each second, and one instance name for all the stacks of the test (they
// act on the same labs).
func queueEdit(t *testing.T) func(*config.Config) {
	t.Helper()
	requireLabImage(t)
	examFile, err := filepath.Abs("testdata/one-node.yaml")
	if err != nil {
		t.Fatal(err)
	}
	instance := "t-" + strings.ToLower(store.NewSessionID())
	return func(c *config.Config) {
		c.ExamFile = examFile
		c.Instance = instance
		c.AdmitEvery, c.ExpireEvery, c.ReapEvery = time.Second, time.Second, time.Second
	}
}

// candidates puts n candidates on a new sitting of the given capacity and
// signs each in with their access code, as a person would.
func candidates(t *testing.T, st *testlab.Stack, sittingID string, capacity, n int) ([]*testlab.Client, []string) {
	t.Helper()
	ctx := context.Background()
	storetest.OpenSitting(t, st.Store, sittingID, "queue-test", capacity)
	var rows []sitting.Row
	for i := range n {
		rows = append(rows, sitting.Row{Line: i + 1, Email: fmt.Sprintf("%s-%d@example.com", sittingID, i+1), Name: fmt.Sprintf("Candidate %d", i+1)})
	}
	issued, err := st.Store.AddEntries(ctx, sittingID, rows, false)
	if err != nil {
		t.Fatal(err)
	}
	var cs []*testlab.Client
	var ids []string
	for _, ic := range issued {
		c := st.Client()
		var out struct {
			SessionID string `json:"session_id"`
			Token     string `json:"token"`
		}
		if code, err := c.Do("POST", "/api/login", map[string]string{"code": ic.Code}, &out); err != nil || code != 200 {
			t.Fatalf("sign in %s: %d %v", ic.Entry.Email, code, err)
		}
		c.Token = out.Token
		cs, ids = append(cs, c), append(ids, out.SessionID)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st.Runtime.Destroy(ctx, out.SessionID)
		})
	}
	return cs, ids
}

func viewOf(t *testing.T, c *testlab.Client, id string) queueView {
	t.Helper()
	var v queueView
	if code, err := c.Do("GET", "/api/session/"+id+"/status", nil, &v); err != nil || code != 200 {
		t.Fatalf("status %s: %d %v", id, code, err)
	}
	return v
}

// linePositions is each session's queue_position (0: not in line).
func linePositions(t *testing.T, cs []*testlab.Client, ids []string) []int {
	t.Helper()
	var out []int
	for i := range ids {
		out = append(out, viewOf(t, cs[i], ids[i]).QueuePosition)
	}
	return out
}

func queueOf(t *testing.T, admin *testlab.Client, sittingID string) (store.QueueState, store.SittingQueue) {
	t.Helper()
	var q store.QueueState
	if code, err := admin.Do("GET", "/api/admin/queue", nil, &q); err != nil || code != 200 {
		t.Fatalf("admin queue: %d %v", code, err)
	}
	for _, s := range q.Sittings {
		if s.SittingID == sittingID {
			return q, s
		}
	}
	t.Fatalf("admin queue has no sitting %s: %+v", sittingID, q)
	return q, store.SittingQueue{}
}

// labsUp counts the sessions with containers on the engine.
func labsUp(t *testing.T, eng *testlab.Engine, ids []string) int {
	t.Helper()
	n := 0
	for _, id := range ids {
		if len(eng.Containers(t, id)) > 0 {
			n++
		}
	}
	return n
}

// TestCapacityQueue: a sitting of capacity 2 and five starts give two labs
// and three candidates waiting at 1, 2 and 3. The worker is killed while
// the line is full, in the middle of an admission: a lab ended and its
// slot went to the head of the line, but that admission was never
// recorded. A new worker loses no one: it finishes the admission, and the
// line moves up as labs end until all five have had a lab, never more
// than two at once.
func TestCapacityQueue(t *testing.T) {
	edit := queueEdit(t)
	rds, dir := testlab.Redis(t), t.TempDir()
	front := testlab.Start(t, testlab.Options{Roles: &platform.Roles{API: true, Relay: true}, Redis: rds, StateDir: dir, Config: edit})
	worker := testlab.Start(t, testlab.Options{Roles: &platform.Roles{Worker: true}, Redis: rds, StateDir: dir, Config: edit})
	ctx := context.Background()
	admin, eng := front.Admin(), testlab.NewEngine(t)
	cs, ids := candidates(t, front, "cap2", 2, 5)

	for i, c := range cs {
		var v queueView
		if code, err := c.Do("POST", "/api/session/"+ids[i]+"/start", nil, &v); err != nil || code != 202 {
			t.Fatalf("start %d: %d %v", i+1, code, err)
		}
		want := []queueView{{Status: "provisioning"}, {Status: "provisioning"},
			{Status: "queued", QueuePosition: 1}, {Status: "queued", QueuePosition: 2}, {Status: "queued", QueuePosition: 3}}[i]
		if v.Status != want.Status || v.QueuePosition != want.QueuePosition {
			t.Fatalf("start %d: %s at %d, want %s at %d", i+1, v.Status, v.QueuePosition, want.Status, want.QueuePosition)
		}
		if v.Status == "queued" && (v.QueueAhead == nil || *v.QueueAhead != v.QueuePosition-1) {
			t.Fatalf("start %d: queue_ahead %v at position %d", i+1, v.QueueAhead, v.QueuePosition)
		}
	}
	for i := range 2 {
		cs[i].WaitStatus(t, ids[i], testlab.ProvisionTimeout, "ready")
	}
	if got := linePositions(t, cs, ids); !slices.Equal(got, []int{0, 0, 1, 2, 3}) {
		t.Fatalf("positions %v, want [0 0 1 2 3]", got)
	}
	// A second press of start while waiting keeps the place.
	var again queueView
	if code, err := cs[3].Do("POST", "/api/session/"+ids[3]+"/start", nil, &again); err != nil || code != 202 || again.QueuePosition != 2 {
		t.Fatalf("duplicate start: %d %v %+v", code, err, again)
	}
	q, sq := queueOf(t, admin, "cap2")
	if sq.Capacity != 2 || sq.Running != 2 || len(sq.Queued) != 3 || q.MaxLabs != 1024 {
		t.Fatalf("admin queue: %+v", q)
	}
	for i, e := range sq.Queued {
		if e.Position != i+1 || e.SessionID != ids[2+i] || e.Email != fmt.Sprintf("cap2-%d@example.com", 3+i) || e.WaitedSeconds < 0 {
			t.Fatalf("admin queue entry %d: %+v", i, e)
		}
	}
	if code, _ := cs[0].Do("GET", "/api/admin/queue", nil, nil); code != 403 {
		t.Fatalf("a candidate read the admin queue: %d", code)
	}

	// The worker is killed while the line is full.
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := worker.Shutdown(sctx); err != nil {
		t.Fatalf("stop the worker: %v", err)
	}
	// Candidate 1 submits meanwhile: its archive waits for a worker. Then
	// what the killed worker left mid-way through cleaning up after it:
	// the lab removed and the session ended, the slot given to the head of
	// the line (candidate 3), the admission not recorded, no provision
	// queued.
	if code, err := cs[0].Do("POST", "/api/session/"+ids[0]+"/submit", nil, nil); err != nil || code != 202 {
		t.Fatalf("submit 1: %d %v", code, err)
	}
	if err := front.Runtime.Destroy(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := front.Store.Update(ctx, ids[0], func(x *session.Session) error { return x.WalkTo(session.StateCompleted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if _, err := front.Store.ReleaseSlot(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if adm, err := front.Store.AdmitNext(ctx); err != nil || len(adm) != 1 || adm[0].SessionID != ids[2] {
		t.Fatalf("admission: %+v %v", adm, err)
	}
	if v := viewOf(t, cs[2], ids[2]); v.Status != "queued" || v.QueuePosition != 0 {
		t.Fatalf("candidate 3 after the unrecorded admission: %+v", v)
	}
	if got := linePositions(t, cs, ids)[3:]; !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("positions of 4 and 5: %v, want [1 2]", got)
	}

	// A new worker: its admission sweep finishes candidate 3's admission.
	testlab.Start(t, testlab.Options{Roles: &platform.Roles{Worker: true}, Redis: rds, StateDir: dir, Config: edit})
	cs[2].WaitStatus(t, ids[2], queueTimeout, "ready")
	if n := labsUp(t, eng, ids); n != 2 {
		t.Fatalf("%d labs up, want 2", n)
	}

	// The line moves up as labs end: 2 ends → 4 gets a lab, 5 is next;
	// 3 ends → 5 gets a lab.
	for round, next := range []int{3, 4} {
		ending := []int{1, 2}[round]
		if code, err := cs[ending].Do("POST", "/api/session/"+ids[ending]+"/submit", nil, nil); err != nil || code != 202 {
			t.Fatalf("submit %d: %d %v", ending+1, code, err)
		}
		cs[next].WaitStatus(t, ids[next], queueTimeout, "ready")
		if n := labsUp(t, eng, ids); n > 2 {
			t.Fatalf("%d labs up at once, want at most 2", n)
		}
		if round == 0 {
			// Two labs have ended: the next in line gets an estimate.
			if v := viewOf(t, cs[4], ids[4]); v.QueuePosition != 1 || v.EstimateSeconds == nil || *v.EstimateSeconds < 0 {
				t.Fatalf("candidate 5: %+v, want next in line with an estimate", v)
			}
		}
		_, sq := queueOf(t, admin, "cap2")
		if sq.Running > 2 {
			t.Fatalf("round %d: %d running, want at most 2", round, sq.Running)
		}
	}
	for _, i := range []int{3, 4} {
		if code, err := cs[i].Do("POST", "/api/session/"+ids[i]+"/submit", nil, nil); err != nil || code != 202 {
			t.Fatalf("submit %d: %d %v", i+1, code, err)
		}
	}
	for i := range ids {
		cs[i].WaitStatus(t, ids[i], queueTimeout, "completed")
	}
	// A session reads completed a moment before its cleanup gives the
	// slot back (the release follows the status write, so a crash in
	// between is repaired by a rerun): wait for the slots to come back.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		q, sq := queueOf(t, admin, "cap2")
		if sq.Running == 0 && len(sq.Queued) == 0 && q.Running == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after everyone finished: %+v", q)
		}
	}
}

// TestQueueAdminActions: an admin admits the last in line beyond the
// capacity, and takes another out of the line with a reason the
// candidate then reads; both are audited, and a session that does not
// wait is refused.
func TestQueueAdminActions(t *testing.T) {
	st := testlab.Start(t, testlab.Options{Config: queueEdit(t)})
	admin := st.Admin()
	cs, ids := candidates(t, st, "cap1", 1, 3)
	for i, c := range cs {
		if code, err := c.Do("POST", "/api/session/"+ids[i]+"/start", nil, nil); err != nil || code != 202 {
			t.Fatalf("start %d: %d %v", i+1, code, err)
		}
	}
	if got := linePositions(t, cs, ids); !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("positions %v", got)
	}
	if code, err := admin.Do("POST", "/api/admin/queue/"+ids[2]+"/admit", nil, nil); err != nil || code != 202 {
		t.Fatalf("admit: %d %v", code, err)
	}
	cs[2].WaitStatus(t, ids[2], testlab.ProvisionTimeout, "ready")
	if code, err := admin.Do("DELETE", "/api/admin/queue/"+ids[1], map[string]string{"reason": "wrong sitting"}, nil); err != nil || code != 200 {
		t.Fatalf("remove: %d %v", code, err)
	}
	if v := viewOf(t, cs[1], ids[1]); v.Status != "failed" || v.Error != "removed from the queue by the exam staff: wrong sitting" {
		t.Fatalf("removed candidate sees %+v", v)
	}
	// The first in line holds the slot; once its lab is up it waits for
	// nothing (while it provisions, an admit of it is a no-op, not a 409).
	cs[0].WaitStatus(t, ids[0], testlab.ProvisionTimeout, "ready")
	for _, r := range []struct{ method, path string }{
		{"POST", "/api/admin/queue/" + ids[0] + "/admit"},
		{"DELETE", "/api/admin/queue/" + ids[0]},
		{"DELETE", "/api/admin/queue/" + ids[1]},
	} {
		if code, err := admin.Do(r.method, r.path, nil, nil); err != nil || code != 409 {
			t.Fatalf("%s %s on a session not waiting: %d %v, want 409", r.method, r.path, code, err)
		}
	}
	if code, _ := st.Client().Do("DELETE", "/api/admin/queue/"+ids[0], nil, nil); code != 401 {
		t.Fatalf("remove without credentials: %d", code)
	}
	q, sq := queueOf(t, admin, "cap1")
	if sq.Running != 2 || len(sq.Queued) != 0 || q.Queued != 0 {
		t.Fatalf("admin queue after the actions: %+v", q)
	}
	for i, action := range map[int]string{2: "queue-admit", 1: "queue-remove"} {
		if d := getDetails(t, admin, ids[i]); auditCount(d, "admin", action) != 1 {
			t.Fatalf("audit of %s: %+v, want one %s", ids[i], d.Audit, action)
		}
	}
}
