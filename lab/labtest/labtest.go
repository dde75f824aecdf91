// Package labtest proves and stands in for lab.Runtime implementations:
// Run is the contract suite every runtime passes, Memory an in-memory
// runtime for logic tests, and Flaky a wrapper that fails chosen calls.
package labtest

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// Named timeouts for what the suite waits on.
const (
	// provisionTimeout bounds one provision, of a fresh lab or of a lab
	// being repaired; a Nomad cluster places slower than one engine.
	provisionTimeout = 3 * time.Minute
	// execTimeout bounds one command in a node and one terminal dialogue.
	execTimeout = 30 * time.Second
	// pollInterval is how often the suite looks again at something that
	// changes behind its back: an inventory, a terminal's screen.
	pollInterval = 20 * time.Millisecond
)

// The terminal dialogue of the suite's one TTY exec, for implementations
// that check what travelled: a shell in Main's kyoto node opened at
// TTYSize, resized once to TTYResize, typed "stty size" lines and then
// "exit 3".
var (
	TTYSize   = lab.Size{Rows: 33, Cols: 101}
	TTYResize = lab.Size{Rows: 41, Cols: 132}
)

// Harness is one implementation under test: the runtime, what the suite
// may ask of the service behind it, and what the implementation claims.
type Harness struct {
	// Runtime is the implementation under test. Required.
	Runtime lab.Runtime
	// Exam is the exam whose lab the suite runs; nil means exam.Default(),
	// whose lab has networks of its own. Flatten gives the same nodes on
	// one flat network.
	Exam *exam.Exam
	// Inventory lists what the service behind the runtime (the engine, the
	// cluster) holds of a session's lab. It must ask the service itself,
	// not Runtime, so that the suite can tell a lab that converged from a
	// runtime that only says so. Required.
	Inventory func(t testing.TB, sessionID string) Inventory
	// Crash stops a running node behind the runtime's back, the way a
	// crash would. Nil skips the crash subtest, saying so.
	Crash func(t testing.TB, sessionID, node string)
	// Inspect runs implementation-specific checks on the suite's labs
	// right after they first came up and before any subtest touched them:
	// Other has been provisioned exactly once, Main three times (once
	// cancelled halfway, then twice at once). It lets those checks share
	// the labs the suite pays for. Optional.
	Inspect func(t *testing.T, labs Labs)

	// What the implementation claims. A subtest whose claim is false is
	// skipped by name, with the reason.

	// Network: nodes sit on a private network of their lab, reach each
	// other by name, and reach nothing else — not the host's services, not
	// cloud metadata, not another lab — even when they rewrite their
	// routes. The nodes have the lab image's tools (ping, nc, ip).
	Network bool
	// Addresses: Status reports each running node's address.
	Addresses bool
	// Containers: nodes are Linux containers of the lab image, with
	// exactly the spec's capabilities, and an export holds the image's
	// whole filesystem.
	Containers bool
	// CrashKeepsFiles: a node that Provision brings back after a crash
	// keeps what was written in it (the one-host runtime restarts the same
	// container; Nomad starts a fresh one).
	CrashKeepsFiles bool
	// NotExported are directories, besides proc and sys, whose content an
	// export leaves out (the runtime's own mounts); the suite checks that
	// nothing below them is in one.
	NotExported []string
}

// Inventory is what the service behind a runtime holds of one lab.
type Inventory struct {
	// Nodes are the node instances (containers), running or not.
	Nodes []Instance
	// Others name everything else the lab owns (its network, its job), one
	// entry per resource, so that duplicates show.
	Others []string
}

// Instance is one node instance in an Inventory.
type Instance struct {
	// Node is the lab node it runs, by name.
	Node string
	// Name identifies it in failure messages (a container name or id).
	Name    string
	Running bool
}

// Labs are the two labs the suite provisions.
type Labs struct {
	// Main is the Harness.Exam's lab (the default exam's eight nodes);
	// most subtests use it.
	Main lab.Spec
	// Other is a second session's lab, the same exam's first node
	// alone: the lab Main must be kept apart from, and the one the crash
	// and spec-change subtests repair.
	Other lab.Spec
}

// Run is the contract suite of lab.Runtime. It provisions two labs (see
// Labs) and runs every subtest on them, the ones that change a lab last,
// and destroys them at the end. A runtime is done when Run passes on it.
func Run(t *testing.T, h Harness) {
	if h.Runtime == nil || h.Inventory == nil {
		t.Fatal("labtest: Harness.Runtime and Harness.Inventory are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := &suite{h: h, rt: h.Runtime, ctx: ctx}
	ex := h.Exam
	if ex == nil {
		ex = exam.Default()
	}
	s.main = newSpec(t, ex)
	small := *ex
	small.Topology.Nodes = ex.Topology.Nodes[:1]
	s.other = newSpec(t, &small)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
		defer cancel()
		for _, id := range []string{s.main.SessionID, s.other.SessionID} {
			if err := s.rt.Destroy(ctx, id); err != nil {
				t.Errorf("destroy %s: %v", id, err)
			}
		}
	})

	s.bringUp(t)
	t.Run("provision converges once after a cancel and concurrent runs", func(t *testing.T) {
		s.converged(t, s.main)
		s.converged(t, s.other)
	})
	if h.Inspect != nil {
		t.Run("implementation", func(t *testing.T) { h.Inspect(t, Labs{Main: s.main, Other: s.other}) })
	}
	t.Run("ping answers", s.testPing)
	t.Run("status reports every node running in spec order", s.testStatus)
	t.Run("status reports each node's address", s.testAddresses)
	t.Run("hostname is the node name", s.testHostname)
	t.Run("exec", s.testExec)
	t.Run("tty takes its initial size and follows resizes", s.testTTY)
	t.Run("unknown labs and nodes are not found", s.testNotFound)
	t.Run("export holds the filesystem and work written by exec", s.testExport)
	t.Run("logs hold the node's start and its output, whole", s.testLogs)
	t.Run("labs lists both sessions", s.testLabs)
	t.Run("network", s.testNetwork)
	t.Run("capabilities are limited to the spec", s.testCapabilities)
	// From here on subtests change the labs.
	t.Run("provision brings a crashed node back", s.testCrash)
	t.Run("provision replaces a node whose spec changed", s.testSpecChange)
	t.Run("reset node gives a fresh node and leaves the others", s.testReset)
	t.Run("destroy leaves nothing and can be repeated", s.testDestroy)
}

type suite struct {
	h           Harness
	rt          lab.Runtime
	ctx         context.Context
	main, other lab.Spec
}

// Flatten returns ex with its nodes on one flat network: no networks,
// interfaces, routes, files or setup.
func Flatten(ex *exam.Exam) *exam.Exam {
	out := *ex
	out.Topology.Networks = nil
	out.Topology.Nodes = make([]exam.Node, len(ex.Topology.Nodes))
	for i, n := range ex.Topology.Nodes {
		n.Interfaces, n.Routes, n.Address, n.Files, n.Setup = nil, nil, "", nil, ""
		n.SetupTimeout.Duration = 0
		out.Topology.Nodes[i] = n
	}
	return &out
}

// newSpec renders ex's lab for a new session.
func newSpec(t testing.TB, ex *exam.Exam) lab.Spec {
	t.Helper()
	spec, err := lab.NewSpec(ex, lab.Session{ID: NewSessionID(), Candidate: "labtest@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// NewSessionID returns a fresh session id: "lt" and ten random lower-case
// letters and digits.
func NewSessionID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	rand.Read(b)
	b[0], b[1] = 'l', 't'
	for i := 2; i < len(b); i++ {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// bringUp provisions both labs the hard way: Main's first provision is
// cancelled once a few of its nodes exist, then Main is provisioned twice
// at once while Other is provisioned beside them. The labs must end up
// complete, each node once.
func (s *suite) bringUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, provisionTimeout)
	defer cancel()
	halfway, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.rt.Provision(halfway, s.main) }()
	var first error
	finished := false
	for !finished && len(s.h.Inventory(t, s.main.SessionID).Nodes) < 3 {
		select {
		case first = <-done:
			finished = true
		case <-time.After(pollInterval):
		}
	}
	stop()
	if finished {
		t.Logf("the first provision ended (%v) before three nodes showed; the reruns still have to converge", first)
	} else if err := <-done; err == nil {
		t.Log("the first provision completed despite the cancel; the reruns still have to converge")
	}

	var wg sync.WaitGroup
	specs := []lab.Spec{s.main, s.main, s.other}
	errs := make([]error, len(specs))
	for i, spec := range specs {
		wg.Go(func() { errs[i] = s.rt.Provision(ctx, spec) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("provision: %v", err)
	}
}

// converged checks, with the service behind the runtime, that the lab of
// spec has exactly one running instance of each node and nothing twice.
func (s *suite) converged(t *testing.T, spec lab.Spec) {
	t.Helper()
	inv := s.h.Inventory(t, spec.SessionID)
	count := map[string]int{}
	for _, in := range inv.Nodes {
		count[in.Node]++
		if !in.Running {
			t.Errorf("session %s: instance %s of node %s is not running", spec.SessionID, in.Name, in.Node)
		}
	}
	for _, n := range spec.Nodes {
		if count[n.Name] != 1 {
			t.Errorf("session %s: node %s has %d instances, want 1", spec.SessionID, n.Name, count[n.Name])
		}
		delete(count, n.Name)
	}
	for node, c := range count {
		t.Errorf("session %s: %d instances of %q, which is not a node of the lab", spec.SessionID, c, node)
	}
	seen := map[string]bool{}
	for _, o := range inv.Others {
		if seen[o] {
			t.Errorf("session %s: %s exists twice", spec.SessionID, o)
		}
		seen[o] = true
	}
}

// run executes cmd without a TTY in a node and returns its output and exit
// code, failing the test if the exec itself fails.
func (s *suite) run(t testing.TB, sessionID, node string, cmd ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
	defer cancel()
	out, code, err := lab.Output(ctx, s.rt, sessionID, node, cmd...)
	if err != nil {
		t.Fatalf("exec %q in %s: %v", cmd, node, err)
	}
	return out, code
}

func (s *suite) status(t testing.TB, spec lab.Spec) []lab.NodeStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
	defer cancel()
	st, err := s.rt.Status(ctx, spec)
	if err != nil {
		t.Fatalf("status of %s: %v", spec.SessionID, err)
	}
	if len(st) != len(spec.Nodes) {
		t.Fatalf("status of %s has %d nodes, want %d", spec.SessionID, len(st), len(spec.Nodes))
	}
	return st
}
