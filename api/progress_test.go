package api_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// statusCounter counts the Status calls made of the runtime it wraps.
type statusCounter struct {
	lab.Runtime
	calls atomic.Int64
}

func (c *statusCounter) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	c.calls.Add(1)
	return c.Runtime.Status(ctx, spec)
}

// heldProvision brings labs up with the runtime it wraps, then holds each
// provision open until the test lets it end: the session stays
// provisioning with every node up, for as long as the test looks.
type heldProvision struct {
	lab.Runtime
	up      chan string
	release chan struct{}
}

func (h *heldProvision) Provision(ctx context.Context, spec lab.Spec) error {
	if err := h.Runtime.Provision(ctx, spec); err != nil {
		return err
	}
	select {
	case h.up <- spec.SessionID:
	default:
	}
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// nodeMix sums a view's nodes up as "state×count …", for the log.
func nodeMix(s testlab.Session) string {
	n := map[string]int{}
	for _, x := range s.Nodes {
		n[x.State]++
	}
	var parts []string
	for _, st := range []string{"pending", "creating", "running", "exited", "missing"} {
		if n[st] > 0 {
			parts = append(parts, st+"×"+strconv.Itoa(n[st]))
		}
	}
	return s.Status + " [" + strings.Join(parts, " ") + "]"
}

// TestStatusShowsProgressWithoutTheRuntime: an API process whose runtime
// counts Status calls answers a candidate's status, and the admin's
// details, with the node states a worker in another process pushes while
// it provisions a real Docker lab — every node, up, while the session is
// still provisioning — and never asks its runtime how the lab is.
func TestStatusShowsProgressWithoutTheRuntime(t *testing.T) {
	rds, dir := testlab.Redis(t), t.TempDir()
	counted := &statusCounter{Runtime: labtest.NewMemory(labtest.MemoryOptions{})}
	front := testlab.Start(t, testlab.Options{Roles: &platform.Roles{API: true}, Redis: rds, StateDir: dir,
		Platform: platform.Options{Runtime: counted}})

	instance := "t-" + strings.ToLower(store.NewSessionID())
	engine := newEngine(t, instance)
	held := &heldProvision{Runtime: engine, up: make(chan string, 1), release: make(chan struct{})}
	released := false
	release := func() {
		if !released {
			released = true
			close(held.release)
		}
	}
	t.Cleanup(release)
	testlab.Start(t, testlab.Options{Roles: &platform.Roles{Worker: true}, Redis: rds, StateDir: dir,
		Platform: platform.Options{Runtime: held}, Config: func(c *config.Config) { c.Instance = instance }})

	cand, admin := front.Client(), front.Admin()
	id := cand.Login(t, "progress@example.com")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := engine.Destroy(ctx, id); err != nil {
			t.Logf("destroy lab %s: %v", id, err)
		}
	})
	if code, err := cand.Do("POST", "/api/session/"+id+"/start", nil, nil); err != nil || code != 202 {
		t.Fatalf("start: %d %v", code, err)
	}

	// What the page sees while the lab comes up, each change once.
	var seen []string
	look := func() testlab.Session {
		s := cand.Status(t, id)
		if m := nodeMix(s); len(seen) == 0 || seen[len(seen)-1] != m {
			seen = append(seen, m)
		}
		return s
	}
	deadline := time.Now().Add(testlab.ProvisionTimeout)
	upSeen := false
	for !upSeen {
		s := look()
		if s.Status == "failed" {
			t.Fatalf("session failed: %s", s.Error)
		}
		select {
		case <-held.up:
			upSeen = true
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("lab not up after %s; the page saw %v", testlab.ProvisionTimeout, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Every node runs and the provision is held open: the worker's next
	// reading shows them all, while the session is still provisioning.
	total := len(front.Exam.Topology.Nodes)
	for {
		s := look()
		running := 0
		for _, n := range s.Nodes {
			if n.State == "running" && n.Container != "" {
				running++
			}
		}
		if s.Status != "provisioning" {
			t.Fatalf("session %s while its provision is held; the page saw %v", s.Status, seen)
		}
		if running == total && len(s.Nodes) == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page never showed %d running nodes while provisioning; it saw %v", total, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var det struct {
		Session testlab.Session  `json:"session"`
		Nodes   []lab.NodeStatus `json:"nodes"`
	}
	if code, err := admin.Do("GET", "/api/admin/session/"+id+"/details", nil, &det); err != nil || code != 200 {
		t.Fatalf("details: %d %v", code, err)
	}
	if det.Session.Status != "provisioning" || len(det.Nodes) != total || !lab.AllRunning(det.Nodes) {
		t.Errorf("admin details while provisioning: %s with %d nodes, want provisioning with %d running", det.Session.Status, len(det.Nodes), total)
	}

	release()
	s := cand.WaitStatus(t, id, testlab.ProvisionTimeout, "ready")
	look()
	if len(s.Nodes) != total {
		t.Errorf("ready with %d nodes, want %d", len(s.Nodes), total)
	}
	t.Logf("the page saw: %s", strings.Join(seen, " → "))
	if n := counted.calls.Load(); n != 0 {
		t.Errorf("the API asked its runtime for Status %d times; want never", n)
	}
}
