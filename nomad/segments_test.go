package nomad_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/testlab"
)

// threeSegments is the segmented exam these tests run (testdata/).
const threeSegments = "three-segments.yaml"

// segmentedLab renders the three-segment exam, edited, for a new test
// session and destroys it through rt when the test ends.
func segmentedLab(t testing.TB, rt *nomad.Runtime, edit func(*exam.Exam)) lab.Spec {
	t.Helper()
	return testLab(t, rt, filepath.Join("testdata", threeSegments), edit)
}

// testLab renders the exam at path, edited when edit is set, for a new
// test session and destroys it through rt when the test ends.
func testLab(t testing.TB, rt *nomad.Runtime, path string, edit func(*exam.Exam)) lab.Spec {
	t.Helper()
	ex, err := exam.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(ex)
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: newSessionID(t), Candidate: "test@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
		defer cancel()
		if err := rt.Destroy(ctx, spec.SessionID); err != nil {
			t.Errorf("destroy %s: %v", spec.SessionID, err)
		}
	})
	return spec
}

// failingSetup makes osaka's setup fail, saying why on stderr.
func failingSetup(ex *exam.Exam) {
	for i := range ex.Topology.Nodes {
		if ex.Topology.Nodes[i].Name == "osaka" {
			ex.Topology.Nodes[i].Setup = "echo 'the licence server is unreachable' >&2\nexit 3\n"
		}
	}
}

// checkSegmentedLab checks a provisioned three-segment lab from inside its
// nodes: each node is where the exam puts it, with exactly its declared
// routes, its files and setup applied; tokyo reaches osaka only once the
// candidate has routed between the gateways.
func checkSegmentedLab(t *testing.T, rt lab.Runtime, spec lab.Spec) {
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	run := func(t *testing.T, node string, cmd ...string) (string, int) {
		t.Helper()
		out, code, err := lab.Output(ctx, rt, spec.SessionID, node, cmd...)
		if err != nil {
			t.Fatalf("exec %q in %s: %v", cmd, node, err)
		}
		return out, code
	}
	t.Run("status shows each node at its address", func(t *testing.T) {
		st, err := rt.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range st {
			if n.State != lab.StateRunning || n.IP != spec.Nodes[i].Address {
				t.Errorf("node %s is %s at %q (%s), want running at %s", n.Name, n.State, n.IP, n.Detail, spec.Nodes[i].Address)
			}
		}
	})
	t.Run("tokyo has exactly its declared route and its own network's", func(t *testing.T) {
		out, code := run(t, "tokyo", "ip", "-4", "route", "show")
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			got = append(got, strings.Join(strings.Fields(l), " "))
		}
		want := []string{
			"default via 192.168.10.1 dev eth0",
			"192.168.10.0/24 dev eth0 proto kernel scope link src 192.168.10.10",
		}
		if code != 0 || !slices.Equal(got, want) {
			t.Errorf("ip route on tokyo (exit %d):\n%s\nwant:\n%s", code, out, strings.Join(want, "\n"))
		}
	})
	t.Run("nodes speak IPv4 only", func(t *testing.T) {
		if out, code := run(t, "osaka", "ip", "-6", "addr", "show"); code != 0 || strings.TrimSpace(out) != "" {
			t.Errorf("osaka has IPv6 addresses (exit %d):\n%s", code, out)
		}
	})
	t.Run("files and setup are in place", func(t *testing.T) {
		out, code := run(t, "tokyo", "stat", "-c", "%a", "/etc/examlab/welcome.txt")
		if code != 0 || strings.TrimSpace(out) != "600" {
			t.Errorf("tokyo's file mode: %q (exit %d), want 600", out, code)
		}
		out, _ = run(t, "tokyo", "cat", "/etc/examlab/welcome.txt")
		if want := "Welcome to {{ .Office }}: ${HOME} %{ stays } <as it is>\n"; out != want {
			t.Errorf("tokyo's file holds %q, want %q", out, want)
		}
		out, code = run(t, "osaka", "cat", "/root/setup-ran", lab.PreparedMarker)
		if code != 0 || out != "{{ set up }}\n" {
			t.Errorf("osaka's setup left %q (exit %d), want its file and the prepared marker", out, code)
		}
	})
	t.Run("tokyo reaches osaka once the gateways route", func(t *testing.T) {
		if out, code := run(t, "tokyo", "ping", "-c1", "-W2", "osaka"); code == 0 {
			t.Fatalf("tokyo pings osaka before any route between the gateways:\n%s", out)
		}
		for _, r := range []struct{ node, to, via string }{
			{"g1", "192.168.20.0/24", "10.0.12.2"},
			{"g2", "192.168.10.0/24", "10.0.12.1"},
		} {
			if out, code := run(t, r.node, "ip", "route", "add", r.to, "via", r.via); code != 0 {
				t.Fatalf("ip route add %s via %s on %s: exit %d\n%s", r.to, r.via, r.node, code, out)
			}
		}
		if out, code := run(t, "tokyo", "ping", "-c1", "-W3", "osaka"); code != 0 {
			t.Errorf("tokyo cannot ping osaka (192.168.20.10) through g1 and g2: exit %d\n%s", code, out)
		}
	})
}

// checkSegmentedReset resets osaka in a lab checkSegmentedLab has routed:
// the fresh node has lost the candidate's work but is wired and prepared
// again, so tokyo reaches it as before.
func checkSegmentedReset(t *testing.T, rt lab.Runtime, spec lab.Spec) {
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if out, code, err := lab.Output(ctx, rt, spec.SessionID, "osaka", "sh", "-c", "echo work > /root/work && rm /root/setup-ran"); err != nil || code != 0 {
		t.Fatalf("write in osaka: exit %d %v\n%s", code, err, out)
	}
	start := time.Now()
	if err := rt.ResetNode(ctx, spec, "osaka"); err != nil {
		t.Fatalf("reset osaka: %v", err)
	}
	t.Logf("osaka reset and rewired in %s", time.Since(start).Round(time.Millisecond))
	out, code, err := lab.Output(ctx, rt, spec.SessionID, "osaka", "sh", "-c", "ls /root; ip -4 -o addr show dev eth0")
	if err != nil || code != 0 || strings.Contains(out, "work") || !strings.Contains(out, "setup-ran") || !strings.Contains(out, "192.168.20.10/24") {
		t.Errorf("osaka after its reset (exit %d %v):\n%s\nwant no work, its setup run again and its address", code, err, out)
	}
	if out, code, err := lab.Output(ctx, rt, spec.SessionID, "tokyo", "ping", "-c1", "-W3", "osaka"); err != nil || code != 0 {
		t.Errorf("tokyo cannot ping osaka after its reset: exit %d %v\n%s", code, err, out)
	}
}

// TestSegmentedLabThroughNomad runs the three-segment lab through the Nomad
// runtime and the fake, whose client wires it on real containers: the job
// registered is the segmented one, the lab is ready only once labnet-up has
// wired it, and destroy removes the switch with the nodes.
func TestSegmentedLabThroughNomad(t *testing.T) {
	env := newFakeEnv(t)
	env.fake.SlowLabnet(time.Second)
	eng := testlab.NewEngine(t)
	spec := segmentedLab(t, env.rt, nil)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- env.rt.Provision(ctx, spec) }()
	// While labnet-up works the nodes run, but the lab is not ready.
	sawWiring := false
	for provisioned := false; !provisioned; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("provision: %v", err)
			}
			provisioned = true
		case <-time.After(50 * time.Millisecond):
			st, err := env.rt.Status(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			wiring := true
			for _, n := range st {
				wiring = wiring && n.State == lab.StateCreating && strings.Contains(n.Detail, "labnet-up") && n.IP == ""
			}
			sawWiring = sawWiring || wiring
		}
	}
	if !sawWiring {
		t.Error("status never showed the nodes waiting for labnet-up")
	}
	regs := env.fake.Registers()
	if len(regs) != 1 || len(regs[0].Problems) > 0 || regs[0].Err != "" {
		t.Fatalf("registers %+v, want one accepted", regs)
	}
	stubs, err := allocations(env, spec)
	if err != nil || len(stubs) != 1 {
		t.Fatalf("allocations %v %v, want one", stubs, err)
	}
	// Ready once the lab's agent has left its state: labnet-up exits on
	// the same file a moment later, so it may or may not have yet.
	if up := stubs[0].TaskStates[jobspecs.NomadLabnetUp]; up == nil || up.Failed {
		t.Errorf("provision returned with labnet-up %+v, want it started and not failed", up)
	}
	checkSegmentedLab(t, env.rt, spec)
	t.Run("a reset node is wired and prepared again", func(t *testing.T) { checkSegmentedReset(t, env.rt, spec) })

	if err := env.rt.Destroy(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	if left := eng.Containers(t, spec.SessionID); len(left) > 0 {
		t.Errorf("destroy left %s", testlab.Summary(left))
	}
}

// TestSegmentedSetupFailureNamesTheNode makes a node's setup fail: the
// provision fails with the node and the setup's own words, read from
// labnet-up's stderr, and the status says so too.
func TestSegmentedSetupFailureNamesTheNode(t *testing.T) {
	env := newFakeEnv(t)
	spec := segmentedLab(t, env.rt, failingSetup)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	err := env.rt.Provision(ctx, spec)
	checkSetupFailure(t, err)
	st, serr := env.rt.Status(ctx, spec)
	if serr != nil {
		t.Fatal(serr)
	}
	for _, n := range st {
		if n.State != lab.StateFailed || !strings.Contains(n.Detail, "node osaka: setup exited 3") {
			t.Errorf("node %s is %s (%s), want failed for osaka's setup", n.Name, n.State, n.Detail)
		}
	}
	read := false
	for _, r := range env.fake.Requests() {
		read = read || strings.HasPrefix(r.Path, "/v1/client/fs/logs/")
	}
	if !read {
		t.Error("the runtime never read labnet-up's log")
	}
}

// checkSetupFailure checks the provision error of a lab whose osaka setup
// fails.
func checkSetupFailure(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("provision succeeded with a failing setup")
	}
	t.Logf("provision: %v", err)
	for _, want := range []string{"wire the lab", "node osaka: setup exited 3", "the licence server is unreachable"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("provision error %q does not say %q", err, want)
		}
	}
	if errors.Is(err, nomad.ErrNotPlaced) {
		t.Errorf("provision error %v is a placement failure", err)
	}
}

func allocations(env *fakeEnv, spec lab.Spec) ([]*api.AllocationListStub, error) {
	c, err := api.NewClient(&api.Config{Address: env.fake.URL()})
	if err != nil {
		return nil, err
	}
	stubs, _, err := c.Jobs().Allocations(jobspecs.JobName(spec.SessionID), true, nil)
	return stubs, err
}

// TestProvisionReadsTheAgentsState: a segmented lab is ready as soon as the
// lab's agent has left its state in the allocation, read through the
// allocation's file system API, not once labnet-up's exit has reached the
// servers. Here labnet-up runs on for a minute after the state is left:
// provision returns before that, with the lab wired, and Status agrees.
func TestProvisionReadsTheAgentsState(t *testing.T) {
	env := newFakeEnv(t)
	env.fake.SlowLabnet(300 * time.Millisecond)
	env.fake.SlowLabnetExit(time.Minute)
	start := time.Now()
	spec := segmentedLab(t, env.rt, nil)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := env.rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Logf("ready %s after provision began", time.Since(start).Round(time.Millisecond))
	stubs, err := allocations(env, spec)
	if err != nil || len(stubs) != 1 {
		t.Fatalf("allocations %v %v, want one", stubs, err)
	}
	if up := stubs[0].TaskStates[jobspecs.NomadLabnetUp]; up == nil || up.State != "running" {
		t.Errorf("labnet-up %+v when provision returned, want it still running (its exit is a minute away)", up)
	}
	stats := 0
	for _, r := range env.fake.Requests() {
		if r.Path == "/v1/client/fs/stat/"+stubs[0].ID {
			stats++
		}
	}
	if stats == 0 {
		t.Errorf("provision never read the agent's state: requests %+v", env.fake.Requests())
	}
	if unknown := env.fake.Unknown(); len(unknown) > 0 {
		t.Errorf("endpoints the fake does not serve were called: %v", unknown)
	}
	st, err := env.rt.Status(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !lab.AllRunning(st) {
		t.Errorf("status %+v, want every node running once the agent left its state", st)
	}
	checkSegmentedLab(t, env.rt, spec)
}
