package docker

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"github.com/examlab/examlab/lab"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestFreeSubnet(t *testing.T) {
	cases := []struct {
		name string
		pool string
		bits int
		used []netip.Prefix
		skip []netip.Prefix
		want string // "" when exhausted
	}{
		{name: "empty pool takes the first block", pool: "10.213.0.0/16", bits: 26, want: "10.213.0.0/26"},
		{name: "skips used blocks", pool: "10.213.0.0/16", bits: 26,
			used: prefixes("10.213.0.0/26", "10.213.0.64/26"), want: "10.213.0.128/26"},
		{name: "fills a hole", pool: "10.213.0.0/16", bits: 26,
			used: prefixes("10.213.0.0/26", "10.213.0.128/26"), want: "10.213.0.64/26"},
		{name: "a wide foreign network covers many blocks", pool: "10.213.0.0/16", bits: 26,
			used: prefixes("10.213.0.0/24"), want: "10.213.1.0/26"},
		{name: "a network around the whole pool exhausts it", pool: "10.213.0.0/16", bits: 26,
			used: prefixes("10.0.0.0/8"), want: ""},
		{name: "networks outside the pool do not matter", pool: "10.213.0.0/16", bits: 26,
			used: prefixes("172.17.0.0/16", "10.214.0.0/26"), want: "10.213.0.0/26"},
		{name: "skip list counts as used", pool: "10.213.0.0/16", bits: 26,
			skip: prefixes("10.213.0.0/26"), want: "10.213.0.64/26"},
		{name: "small pool exhausted", pool: "192.168.50.0/28", bits: 29,
			used: prefixes("192.168.50.0/29", "192.168.50.8/29"), want: ""},
		{name: "beyond 31 labs", pool: "10.213.0.0/16", bits: 26,
			used: blocks("10.213.0.0/16", 26, 40), want: "10.213.10.0/26"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := freeSubnet(netip.MustParsePrefix(tc.pool), tc.bits, tc.used, tc.skip)
			if tc.want == "" {
				if ok {
					t.Errorf("got %s, want exhausted", got)
				}
				return
			}
			if !ok || got.String() != tc.want {
				t.Errorf("got %s (ok=%v), want %s", got, ok, tc.want)
			}
		})
	}
}

// blocks lists the first n blocks of size bits in pool.
func blocks(pool string, bits, n int) []netip.Prefix {
	var out []netip.Prefix
	for range n {
		p, _ := freeSubnet(netip.MustParsePrefix(pool), bits, out, nil)
		out = append(out, p)
	}
	return out
}

// TestManyNetworks allocates 40 lab networks at once from the default pool:
// more than the ~31 the engine's own default pools allow.
func TestManyNetworks(t *testing.T) {
	const count = 40
	r := newTestRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)

	ids := make([]string, count)
	for i := range ids {
		ids[i] = newSessionID(t)
		destroyOnCleanup(t, r, ids[i])
	}
	nets := make([]network, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			labels := networkLabels(lab.Spec{SessionID: id, ExamID: "test"})
			nets[i], errs[i] = r.ensureNetwork(ctx, id, labels)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	var seen []netip.Prefix
	for i, n := range nets {
		if n.Name != lab.NetworkName(ids[i]) || !n.Internal {
			t.Errorf("network %d: name %s internal %v", i, n.Name, n.Internal)
		}
		p := netip.MustParsePrefix(n.IPAM.Config[0].Subnet)
		if p.Bits() != r.prefix || !r.pool.Overlaps(p) {
			t.Errorf("%s has subnet %s outside the pool", n.Name, p)
		}
		for _, q := range seen {
			if q.Overlaps(p) {
				t.Errorf("%s overlaps %s", p, q)
			}
		}
		seen = append(seen, p)
	}

	// Asking again returns the same network rather than a second one.
	again, err := r.ensureNetwork(ctx, ids[0], networkLabels(lab.Spec{SessionID: ids[0]}))
	if err != nil || again.ID != nets[0].ID {
		t.Errorf("second ensure of %s: %v, id %s want %s", ids[0], err, again.ID, nets[0].ID)
	}
}

// TestEnsureNetworkRace asks for one session's network from several
// goroutines at once, as duplicate provisions do: all get the same one.
func TestEnsureNetworkRace(t *testing.T) {
	r := newTestRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)
	id := newSessionID(t)
	destroyOnCleanup(t, r, id)

	// Separate runtimes do not share the in-process allocation lock, like
	// workers in separate processes.
	ids := make([]string, 4)
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ri, err := New(Options{})
			if err != nil {
				errs[i] = err
				return
			}
			n, err := ri.ensureNetwork(ctx, id, networkLabels(lab.Spec{SessionID: id}))
			ids[i], errs[i] = n.ID, err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, got := range ids[1:] {
		if got != ids[0] {
			t.Errorf("networks differ: %v", ids)
			break
		}
	}
	if nets, err := r.client.networksNamed(ctx, lab.NetworkName(id)); err != nil || len(nets) != 1 {
		t.Errorf("want one network named %s, got %d (%v)", lab.NetworkName(id), len(nets), err)
	}
}

// TestPoolExhaustion shows the pool is configurable and that running out of
// it is reported as such.
func TestPoolExhaustion(t *testing.T) {
	newTestRuntime(t) // only to check the engine is there
	// A range outside the default pool, so running labs are not disturbed.
	r, err := New(Options{SubnetPool: "10.214.255.224/27", SubnetPrefix: 29})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)

	for i := range 5 {
		id := newSessionID(t)
		destroyOnCleanup(t, r, id)
		_, err := r.ensureNetwork(ctx, id, networkLabels(lab.Spec{SessionID: id}))
		if i < 4 && err != nil {
			t.Fatalf("network %d of 4: %v", i+1, err)
		}
		if i == 4 && !errors.Is(err, errPoolExhausted) {
			t.Fatalf("fifth network: %v, want the pool exhausted", err)
		}
	}
}

func TestNewClientHost(t *testing.T) {
	cases := []struct {
		host, base string
		wantErr    bool
	}{
		{host: "unix:///var/run/docker.sock", base: "http://docker"},
		{host: "tcp://10.0.0.5:2376", base: "http://10.0.0.5:2376"},
		{host: "tcp://engine", base: "http://engine:2375"},
		{host: "npipe:////./pipe/docker_engine", wantErr: true},
		{host: "unix://", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.host, func(t *testing.T) {
			c, err := newClient(tc.host)
			if tc.wantErr != (err != nil) {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && c.base != tc.base {
				t.Errorf("base %s, want %s", c.base, tc.base)
			}
		})
	}
}
