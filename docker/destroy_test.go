package docker

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/examlab/examlab/lab"
)

// holdNetwork attaches a running container that is no lab's to the
// network, so that the engine refuses to remove it ("active endpoints")
// as it does for an empty network it will not let go of. It returns the
// function that removes the container; the test's end removes it too.
func holdNetwork(t *testing.T, r *Runtime, networkID string) (release func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	body := map[string]any{
		"Image": testImage, "Entrypoint": []string{"sleep"}, "Cmd": []string{"3600"},
		"HostConfig": map[string]any{"NetworkMode": networkID, "Memory": 32 << 20},
	}
	var out struct {
		ID string `json:"Id"`
	}
	if err := r.client.do(ctx, http.MethodPost, "/containers/create", nil, body, &out); err != nil {
		t.Fatalf("create the holding container: %v", err)
	}
	release = func() {
		rctx, rcancel := context.WithTimeout(context.Background(), provisionTimeout)
		defer rcancel()
		if err := r.client.do(rctx, http.MethodDelete, "/containers/"+out.ID, url.Values{"force": {"1"}}, nil, nil); err != nil && !isNotFound(err) {
			t.Errorf("remove the holding container: %v", err)
		}
	}
	t.Cleanup(release)
	if err := r.client.do(ctx, http.MethodPost, "/containers/"+out.ID+"/start", nil, nil, nil); err != nil {
		t.Fatalf("start the holding container: %v", err)
	}
	return release
}

// TestDestroyReportsANetworkTheEngineKeeps: with the lab's containers gone
// and the engine refusing its network, Destroy names the network and its
// subnet in a lab.LeftoverError; once the engine lets go, Destroy removes
// it and succeeds.
func TestDestroyReportsANetworkTheEngineKeeps(t *testing.T) {
	newTestRuntime(t)
	// A range of its own, so running labs are not disturbed.
	r, err := New(Options{SubnetPool: "10.214.255.192/27", SubnetPrefix: 29})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)
	id := newSessionID(t)
	destroyOnCleanup(t, r, id)
	n, err := r.ensureNetwork(ctx, id, networkLabels(lab.Spec{SessionID: id}))
	if err != nil {
		t.Fatal(err)
	}
	release := holdNetwork(t, r, n.ID)

	err = r.Destroy(ctx, id)
	kept, ok := lab.Leftovers(err)
	if !ok || len(kept) != 1 {
		t.Fatalf("destroy of a held network: %v, want a LeftoverError naming it", err)
	}
	want := lab.Leftover{Kind: lab.LeftoverNetwork, Name: lab.NetworkName(id), ID: n.ID, Subnet: n.IPAM.Config[0].Subnet}
	got := kept[0]
	if !strings.Contains(got.Err, "active endpoints") {
		t.Errorf("leftover error %q, want the engine's active endpoints", got.Err)
	}
	got.Err = ""
	if got != want {
		t.Fatalf("leftover %+v, want %+v", got, want)
	}
	if _, nets := sessionResources(t, r, id); len(nets) != 1 {
		t.Fatalf("networks %+v, want the held one still there", nets)
	}

	release()
	if err := r.Destroy(ctx, id); err != nil {
		t.Fatalf("destroy once the hold is gone: %v", err)
	}
	if conts, nets := sessionResources(t, r, id); len(conts)+len(nets) != 0 {
		t.Fatalf("left after destroy: %d containers, %d networks", len(conts), len(nets))
	}
}

// TestHeldSubnetsAreNotHandedOut: a subnet Options.HeldSubnets names is
// never given to a lab, even with no network on the engine holding it.
func TestHeldSubnetsAreNotHandedOut(t *testing.T) {
	newTestRuntime(t)
	const pool = "10.214.255.160/27"
	held := []string{"10.214.255.160/29", "10.214.255.176/29"}
	r, err := New(Options{SubnetPool: pool, SubnetPrefix: 29,
		HeldSubnets: func(context.Context) ([]string, error) { return held, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)
	var got []string
	for range 2 {
		id := newSessionID(t)
		destroyOnCleanup(t, r, id)
		n, err := r.ensureNetwork(ctx, id, networkLabels(lab.Spec{SessionID: id}))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n.IPAM.Config[0].Subnet)
	}
	if got[0] != "10.214.255.168/29" || got[1] != "10.214.255.184/29" {
		t.Fatalf("subnets %v, want the two the held ones leave free", got)
	}
	// Nothing else left: the pool is exhausted, not overlapped.
	id := newSessionID(t)
	destroyOnCleanup(t, r, id)
	if _, err := r.ensureNetwork(ctx, id, networkLabels(lab.Spec{SessionID: id})); !errors.Is(err, errPoolExhausted) {
		t.Fatalf("third network: %v, want the pool exhausted", err)
	}
	// A list that cannot be read stops the allocation rather than risk
	// handing out a held subnet.
	broken, err := New(Options{SubnetPool: pool, SubnetPrefix: 29,
		HeldSubnets: func(context.Context) ([]string, error) { return nil, errors.New("redis down") }})
	if err != nil {
		t.Fatal(err)
	}
	id = newSessionID(t)
	destroyOnCleanup(t, broken, id)
	if _, err := broken.ensureNetwork(ctx, id, networkLabels(lab.Spec{SessionID: id})); err == nil || !strings.Contains(err.Error(), "redis down") {
		t.Fatalf("network with an unreadable held list: %v, want its error", err)
	}
}
