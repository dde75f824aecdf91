package docker

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// labnetTimeout bounds each labnet step in these tests.
const labnetTimeout = time.Minute

func TestLabnetUpIsIdempotentAndInvisibleToTheReaper(t *testing.T) {
	r := newTestRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()
	id := newSessionID(t)
	t.Cleanup(func() { _ = r.LabnetDown(context.Background(), id, 0) })

	first, err := r.LabnetUp(ctx, id, "netops")
	if err != nil {
		t.Fatal(err)
	}
	again, err := r.LabnetUp(ctx, id, "netops")
	if err != nil {
		t.Fatal(err)
	}
	if first.ID != again.ID || first.Name != lab.NetworkName(id) {
		t.Errorf("second up gave %+v, first %+v: want the same network %s", again, first, lab.NetworkName(id))
	}
	sub, err := netip.ParsePrefix(first.Subnet)
	if err != nil || !r.pool.Overlaps(sub) || sub.Bits() != r.prefix {
		t.Errorf("subnet %q is not a /%d of the pool %s", first.Subnet, r.prefix, r.pool)
	}

	var n network
	if err := r.client.do(ctx, http.MethodGet, "/networks/"+first.ID, nil, nil, &n); err != nil {
		t.Fatal(err)
	}
	if !n.Internal || n.Options["com.docker.network.bridge.inhibit_ipv4"] != "true" {
		t.Errorf("network internal=%v options=%v: want the isolated lab bridge", n.Internal, n.Options)
	}
	if n.Labels[lab.LabelSession] != id || n.Labels[jobspecs.LabelRuntime] != "nomad" || n.Labels[lab.LabelManaged] != "" {
		t.Errorf("labels %v: want the session, runtime nomad and no %s", n.Labels, lab.LabelManaged)
	}
	labs, err := r.Labs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(labs, id) {
		t.Errorf("the one-host runtime lists the Nomad lab network of %s as its own", id)
	}
}

func TestLabnetDown(t *testing.T) {
	r := newTestRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()

	t.Run("gone is not an error", func(t *testing.T) {
		if err := r.LabnetDown(ctx, newSessionID(t), 0); err != nil {
			t.Errorf("down of a network that never existed: %v", err)
		}
	})

	t.Run("invalid session", func(t *testing.T) {
		if err := r.LabnetDown(ctx, "../x", 0); err == nil {
			t.Error("down accepted an invalid session id")
		}
	})

	t.Run("waits for attached containers", func(t *testing.T) {
		spec := defaultLab(t, r)
		netw, err := r.LabnetUp(ctx, spec.SessionID, spec.ExamID)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.LabnetDown(context.Background(), spec.SessionID, 0) })
		// One node on the network, as a Nomad task would be.
		n := spec.Nodes[0]
		cid, err := r.client.createContainer(ctx, lab.ContainerName(spec.SessionID, n.Name), containerSpec(netw.Name, n, ""))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.client.startContainer(ctx, cid); err != nil {
			t.Fatal(err)
		}
		err = r.LabnetDown(ctx, spec.SessionID, 500*time.Millisecond)
		if err == nil {
			t.Fatal("down removed a network a running container is attached to")
		}
		if nets, _ := r.client.networksNamed(ctx, netw.Name); len(nets) != 1 {
			t.Fatalf("network %s should still be there, found %d", netw.Name, len(nets))
		}
		// The container leaves while down waits: down then succeeds.
		go func() {
			time.Sleep(300 * time.Millisecond)
			_ = r.client.removeContainer(context.Background(), cid)
		}()
		if err := r.LabnetDown(ctx, spec.SessionID, labnetTimeout); err != nil {
			t.Fatalf("down after the container left: %v", err)
		}
		if nets, _ := r.client.networksNamed(ctx, netw.Name); len(nets) != 0 {
			t.Errorf("network %s is still there after down", netw.Name)
		}
	})

	t.Run("never another session's network", func(t *testing.T) {
		owner := newSessionID(t)
		// Same 8-character prefix, so the same network name.
		other := owner[:8] + "zzzz"
		if _, err := r.LabnetUp(ctx, owner, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.LabnetDown(context.Background(), owner, 0) })
		err := r.LabnetDown(ctx, other, 0)
		if err == nil || !strings.Contains(err.Error(), "belongs to session") {
			t.Errorf("down for %s: err = %v, want a refusal", other, err)
		}
		if _, err := r.LabnetUp(ctx, other, ""); err == nil {
			t.Errorf("up for %s adopted the network of %s", other, owner)
		}
		if nets, _ := r.client.networksNamed(ctx, lab.NetworkName(owner)); len(nets) != 1 {
			t.Errorf("owner's network is gone")
		}
	})
}

// TestNodeContainersFindsTheAllocationsRunningNodes plays a Nomad client's
// docker driver: it starts node containers labelled as a Nomad lab's tasks
// are, one of them replaced, one stopped and one in another allocation.
func TestNodeContainersFindsTheAllocationsRunningNodes(t *testing.T) {
	r := newTestRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()
	id := newSessionID(t)
	start := func(name, node, alloc string, running bool) string {
		t.Helper()
		cc := containerCreate{
			Image:      testImage,
			Entrypoint: []string{"sleep"},
			Cmd:        []string{"infinity"},
			Labels: map[string]string{
				lab.LabelSession: id, lab.LabelNode: node, jobspecs.LabelRuntime: "nomad", NomadAllocLabel: alloc,
			},
			HostConfig: hostConfig{NetworkMode: networkNone, RestartPolicy: restartPolicy{Name: "no"}},
		}
		cid, err := r.client.createContainer(ctx, name+"-"+id, cc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.client.removeContainer(context.Background(), cid) })
		if running {
			if err := r.client.startContainer(ctx, cid); err != nil {
				t.Fatal(err)
			}
		}
		return cid
	}
	start("tokyo-old", "tokyo", "alloc-a", true)
	tokyo := start("tokyo", "tokyo", "alloc-a", true) // started last: the one that counts
	start("g1-stopped", "g1", "alloc-a", false)
	start("osaka", "osaka", "alloc-b", true)

	got, err := r.NodeContainers(ctx, id, "", []string{"tokyo", "osaka"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got["tokyo"] != tokyo || got["osaka"] == "" || len(got) != 2 {
		t.Errorf("containers %v, want tokyo's newest %s and osaka's", got, tokyo)
	}
	_, err = r.NodeContainers(ctx, id, "alloc-a", []string{"tokyo", "g1", "osaka"}, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no running container for g1, osaka after 500ms") {
		t.Errorf("err = %v, want one naming g1 (stopped) and osaka (another allocation's)", err)
	}
}
