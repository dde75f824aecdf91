package nomad_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// TestLostLabStates is the lost-lab contract on the fake: a lab whose
// allocation goes unknown (its client stopped reporting) is unknown on
// every node and comes back when the client does; a lab on a client that
// is down is lost even before its allocation is marked; an allocation
// lost with its client is lost on every node, its containers gone, and
// the lab can still be destroyed. Status and the sweep's LabHealth agree
// at every step. The lab runs for real on the engine (two nodes, to keep
// it light).
func TestLostLabStates(t *testing.T) {
	env := newFakeEnv(t)
	eng := testlab.NewEngine(t)
	spec := newLab(t, env.rt)
	spec.Nodes = spec.Nodes[:2]
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := env.rt.Provision(ctx, spec); err != nil {
		t.Fatal(err)
	}
	id := spec.SessionID

	// expect checks Status and LabHealth report want for the lab, with
	// a detail containing every one of words.
	expect := func(t *testing.T, want lab.State, words ...string) {
		t.Helper()
		nodes, err := env.rt.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.State != want {
				t.Errorf("Status: node %s is %s (%s), want %s", n.Name, n.State, n.Detail, want)
			}
			for _, w := range words {
				if !strings.Contains(n.Detail, w) {
					t.Errorf("Status: node %s detail %q lacks %q", n.Name, n.Detail, w)
				}
			}
		}
		health, err := env.rt.LabHealth(ctx, []string{id, "nothere12345"})
		if err != nil {
			t.Fatal(err)
		}
		h, ok := health[id]
		if !ok || h.State != want {
			t.Errorf("LabHealth: %+v (present %v), want %s", h, ok, want)
		}
		if _, ok := health["nothere12345"]; ok {
			t.Error("LabHealth reports a session that has no lab")
		}
	}

	expect(t, lab.StateRunning)

	t.Run("allocation unknown", func(t *testing.T) {
		if err := env.fake.DisconnectAlloc(id); err != nil {
			t.Fatal(err)
		}
		expect(t, lab.StateUnknown, "client fake-client stopped reporting", "unknown")
		if err := env.fake.ReconnectAlloc(id); err != nil {
			t.Fatal(err)
		}
		expect(t, lab.StateRunning)
	})

	t.Run("client disconnected", func(t *testing.T) {
		if err := env.fake.SetClientStatus(api.NodeStatusDisconnected); err != nil {
			t.Fatal(err)
		}
		expect(t, lab.StateUnknown, "client fake-client is disconnected since")
		if err := env.fake.SetClientStatus(api.NodeStatusReady); err != nil {
			t.Fatal(err)
		}
		expect(t, lab.StateRunning)
	})

	t.Run("client down", func(t *testing.T) {
		// The servers have not marked the allocation yet: the client's
		// status alone says the lab is gone.
		if err := env.fake.SetClientStatus(api.NodeStatusDown); err != nil {
			t.Fatal(err)
		}
		nodes, err := env.rt.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.State != lab.StateLost || !strings.Contains(n.Detail, "client fake-client is down since") {
				t.Errorf("node %s: %s %q; want lost, client down since…", n.Name, n.State, n.Detail)
			}
		}
		expect(t, lab.StateLost, "client fake-client is down")
		if err := env.fake.SetClientStatus(api.NodeStatusReady); err != nil {
			t.Fatal(err)
		}
		expect(t, lab.StateRunning)
	})

	t.Run("allocation lost", func(t *testing.T) {
		if err := env.fake.LoseAlloc(id); err != nil {
			t.Fatal(err)
		}
		expect(t, lab.StateLost, "on client fake-client is lost since")
		if inv := engineInventory(t, eng, id); len(inv.Nodes) != 0 {
			t.Errorf("the lost lab's containers are still on the engine: %+v", inv.Nodes)
		}
		// What remains of it (the job) is destroyed all the same.
		if err := env.rt.Destroy(ctx, id); err != nil {
			t.Fatalf("destroy a lost lab: %v", err)
		}
		nodes, err := env.rt.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.State != lab.StatePending {
				t.Errorf("after destroy node %s is %s, want pending (no job)", n.Name, n.State)
			}
		}
		if inv := engineInventory(t, eng, id); len(inv.Nodes)+len(inv.Others) != 0 {
			t.Errorf("left on the engine: %+v", inv)
		}
	})

	for _, r := range env.fake.Unknown() {
		t.Errorf("the runtime called an endpoint the fake does not serve: %s", r)
	}
}
