package docker

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
)

// TestLab runs the runtime contract suite (lab/labtest) on the local
// engine, and on the suite's labs what is the one-host runtime's own: the
// lab network is internal, from the pool and labelled; containers carry
// the spec's names; logs carry timestamps.
// TestLab runs the contract suite on the default exam's segmented lab.
func TestLab(t *testing.T) { runSuite(t, nil) }

// TestFlatLab runs the contract suite on the same eight nodes on one flat
// network, as every lab was before segments and an exam without networks
// still is.
func TestFlatLab(t *testing.T) { runSuite(t, labtest.Flatten(exam.Default())) }

func runSuite(t *testing.T, ex *exam.Exam) {
	r := newTestRuntime(t)
	labtest.Run(t, labtest.Harness{
		Runtime: r,
		Exam:    ex,
		Inventory: func(t testing.TB, sessionID string) labtest.Inventory {
			conts, nets := sessionResources(t, r, sessionID)
			var inv labtest.Inventory
			for _, c := range conts {
				if c.Labels[lab.LabelPart] == lab.PartSwitch {
					inv.Others = append(inv.Others, "switch "+strings.Join(c.Names, ","))
					continue
				}
				inv.Nodes = append(inv.Nodes, labtest.Instance{Node: c.Labels[lab.LabelNode], Name: strings.Join(c.Names, ","), Running: c.State == "running"})
			}
			for _, n := range nets {
				inv.Others = append(inv.Others, "network "+n.Name)
			}
			return inv
		},
		Crash: func(t testing.TB, sessionID, node string) {
			ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
			defer cancel()
			if err := stopContainer(ctx, r, lab.ContainerName(sessionID, node)); err != nil {
				t.Fatal(err)
			}
			// A stopped container is reported as exited, not as gone.
			if st := nodeStatus(t, r, sessionID, node); st.State != lab.StateExited {
				t.Errorf("stopped %s is %s, want exited", node, st.State)
			}
		},
		Inspect:         func(t *testing.T, labs labtest.Labs) { inspectLab(t, r, labs.Main) },
		Network:         true,
		Addresses:       true,
		Containers:      true,
		CrashKeepsFiles: true,
	})
}

// nodeStatus is what the runtime reports of one node of a default lab.
func nodeStatus(t testing.TB, r *Runtime, sessionID, node string) lab.NodeStatus {
	t.Helper()
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: sessionID})
	if err != nil {
		t.Fatal(err)
	}
	return specNodeStatus(t, r, spec, node)
}

// specNodeStatus is the status of one node of spec.
func specNodeStatus(t testing.TB, r *Runtime, spec lab.Spec, node string) lab.NodeStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	st, err := r.Status(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st {
		if n.Name == node {
			return n
		}
	}
	t.Fatalf("no node %s in the status of %s", node, spec.SessionID)
	return lab.NodeStatus{}
}

// inspectLab checks what the one-host runtime made of spec on the engine.
func inspectLab(t *testing.T, r *Runtime, spec lab.Spec) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	sid := spec.SessionID
	if spec.Segmented() {
		t.Run("nodes are on no engine network, behind the lab's switch", func(t *testing.T) { inspectSegmented(t, r, spec) })
	} else {
		t.Run("network is internal and from the pool", func(t *testing.T) { inspectFlat(t, r, spec) })
	}
	t.Run("nodes are held to their limits and weighted by their reserve", func(t *testing.T) {
		for _, n := range spec.Nodes {
			c, err := r.client.inspectContainer(ctx, n.Container)
			if err != nil {
				t.Fatal(err)
			}
			cpus, mem := n.Reserved()
			hc := c.HostConfig
			if hc.Memory != int64(n.MemoryMB)<<20 || hc.NanoCPUs != int64(n.CPUs*1e9) ||
				hc.MemoryReservation != int64(mem)<<20 || hc.CPUShares != cpuShares(cpus) {
				t.Errorf("%s: memory %d reservation %d, nano cpus %d shares %d; want %d MB reserving %d MB, %g cpus reserving %g",
					n.Name, hc.Memory, hc.MemoryReservation, hc.NanoCPUs, hc.CPUShares, n.MemoryMB, mem, n.CPUs, cpus)
			}
		}
	})
	t.Run("containers are named as the spec says", func(t *testing.T) {
		st, err := r.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range st {
			if n.Container != spec.Nodes[i].Container {
				t.Errorf("node %s is container %s, want %s", n.Name, n.Container, spec.Nodes[i].Container)
			}
		}
	})
	t.Run("logs carry timestamps", func(t *testing.T) {
		var buf bytes.Buffer
		if err := r.Logs(ctx, sid, "tokyo", &buf); err != nil {
			t.Fatal(err)
		}
		if line := strings.TrimSpace(buf.String()); !strings.HasPrefix(line, "20") {
			t.Errorf("logs = %q, want lines starting with their time", buf.String())
		}
	})
}

func TestNewOptions(t *testing.T) {
	cases := []struct {
		name    string
		opts    Options
		pool    string
		prefix  int
		wantErr bool
	}{
		{name: "defaults", opts: Options{Host: "unix:///var/run/docker.sock"}, pool: "10.213.0.0/16", prefix: 26},
		{name: "custom pool", opts: Options{Host: "tcp://127.0.0.1:2375", SubnetPool: "172.30.0.0/20", SubnetPrefix: 28}, pool: "172.30.0.0/20", prefix: 28},
		{name: "pool is masked", opts: Options{Host: "unix:///s", SubnetPool: "10.9.8.7/16"}, pool: "10.9.0.0/16", prefix: 26},
		{name: "prefix wider than pool", opts: Options{Host: "unix:///s", SubnetPool: "10.0.0.0/24", SubnetPrefix: 20}, wantErr: true},
		{name: "prefix too narrow", opts: Options{Host: "unix:///s", SubnetPrefix: 30}, wantErr: true},
		{name: "ipv6 pool", opts: Options{Host: "unix:///s", SubnetPool: "fd00::/48"}, wantErr: true},
		{name: "bad scheme", opts: Options{Host: "ssh://host"}, wantErr: true},
		{name: "unix without path", opts: Options{Host: "unix://"}, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(tc.opts)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.pool.String() != tc.pool || r.prefix != tc.prefix {
				t.Errorf("pool %s /%d, want %s /%d", r.pool, r.prefix, tc.pool, tc.prefix)
			}
		})
	}
}

func TestContainerSpec(t *testing.T) {
	spec := lab.Node{
		Name: "g1", Hostname: "g1", Image: testImage, MemoryMB: 128, CPUs: 0.25, PidsLimit: 256,
		CapAdd: []string{"NET_ADMIN", "CAP_NET_RAW"}, Sysctls: map[string]string{"net.ipv4.ip_forward": "1"},
		Labels: map[string]string{lab.LabelSession: "abcdefghijkl"},
	}
	a := containerSpec("exam-abcdefgh-net", spec, "")
	hc := a.HostConfig
	checks := []struct {
		name string
		ok   bool
	}{
		{"memory 128 MiB", hc.Memory == 128<<20},
		{"no swap", hc.MemorySwap == hc.Memory},
		{"quarter cpu", hc.NanoCPUs == 250_000_000},
		{"pids", hc.PidsLimit == 256},
		{"drop all caps", slices.Equal(hc.CapDrop, []string{"ALL"})},
		{"caps prefixed once", slices.Equal(hc.CapAdd, []string{"CAP_NET_ADMIN", "CAP_NET_RAW"})},
		{"no new privileges", slices.Equal(hc.SecurityOpt, []string{"no-new-privileges"})},
		{"no restart", hc.RestartPolicy.Name == "no"},
		{"not privileged", !hc.Privileged},
		{"alias is the node name", slices.Equal(a.NetworkingConfig.EndpointsConfig["exam-abcdefgh-net"].Aliases, []string{"g1"})},
		{"digest label", a.Labels[labelConfig] != ""},
		{"spec labels untouched", spec.Labels[labelConfig] == ""},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: %+v", c.name, a)
		}
	}
	if b := containerSpec("exam-abcdefgh-net", spec, ""); b.Labels[labelConfig] != a.Labels[labelConfig] {
		t.Error("digest differs for the same spec")
	}
	spec.MemoryMB = 256
	if b := containerSpec("exam-abcdefgh-net", spec, ""); b.Labels[labelConfig] == a.Labels[labelConfig] {
		t.Error("digest unchanged after a memory change")
	}
}

// TestContainerResources checks how a node's limits and reserve become the
// engine's: limits are hard (NanoCpus, Memory), the reserve a memory
// reservation and a CPU weight in proportion.
func TestContainerResources(t *testing.T) {
	tests := []struct {
		name                      string
		cpus, reserveCPUs         float64
		memory, reserveMemory     int
		nano, shares, mem, memRes int64
	}{
		{"the shipped exam's node", 0.25, 0.05, 128, 32, 250_000_000, 51, 128 << 20, 32 << 20},
		{"no reserve: as much as the limit", 0.5, 0, 64, 0, 500_000_000, 512, 64 << 20, 64 << 20},
		{"a whole cpu reserved", 2, 1, 1024, 1024, 2_000_000_000, 1024, 1024 << 20, 1024 << 20},
		{"a tiny reserve keeps the kernel's least weight", 0.25, 0.001, 128, 16, 250_000_000, 2, 128 << 20, 16 << 20},
		{"no cpu limit (applied later, as Nomad's lab agent does)", 0, 0.05, 128, 32, 0, 51, 128 << 20, 32 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := lab.Node{Name: "a", Image: testImage, CPUs: tc.cpus, ReserveCPUs: tc.reserveCPUs,
				MemoryMB: tc.memory, ReserveMemoryMB: tc.reserveMemory, PidsLimit: 64}
			hc := containerSpec("exam-abcdefgh-net", n, "").HostConfig
			if hc.NanoCPUs != tc.nano || hc.CPUShares != tc.shares || hc.Memory != tc.mem || hc.MemoryReservation != tc.memRes {
				t.Errorf("nano cpus %d shares %d memory %d reservation %d; want %d %d %d %d",
					hc.NanoCPUs, hc.CPUShares, hc.Memory, hc.MemoryReservation, tc.nano, tc.shares, tc.mem, tc.memRes)
			}
		})
	}
}

// inspectFlat checks a flat lab's network.
func inspectFlat(t *testing.T, r *Runtime, spec lab.Spec) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	sid := spec.SessionID
	nets, err := r.client.networksNamed(ctx, lab.NetworkName(sid))
	if err != nil {
		t.Fatal(err)
	}
	if len(nets) != 1 {
		t.Fatalf("want 1 network named %s, got %d", lab.NetworkName(sid), len(nets))
	}
	netw := nets[0]
	if !netw.Internal {
		t.Error("network is not internal")
	}
	for k, v := range labBridgeOptions {
		if netw.Options[k] != v {
			t.Errorf("option %s = %q, want %q", k, netw.Options[k], v)
		}
	}
	if netw.Labels[lab.LabelSession] != sid || netw.Labels[lab.LabelManaged] != "true" {
		t.Errorf("labels %v", netw.Labels)
	}
	subnet := netip.MustParsePrefix(netw.IPAM.Config[0].Subnet)
	if subnet.Bits() != r.prefix || !r.pool.Overlaps(subnet) {
		t.Errorf("subnet %s is not a /%d of %s", subnet, r.prefix, r.pool)
	}
}

// inspectSegmented checks a segmented lab's containers: every node on no
// network of the engine's, and one switch of the session's holding only
// its own capabilities.
func inspectSegmented(t *testing.T, r *Runtime, spec lab.Spec) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	conts, nets := sessionResources(t, r, spec.SessionID)
	if len(nets) != 0 {
		t.Errorf("the lab has %d engine networks, want none", len(nets))
	}
	switches := 0
	for _, cs := range conts {
		c, err := r.client.inspectContainer(ctx, cs.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.HostConfig.NetworkMode != networkNone {
			t.Errorf("%s is on network %q, want none", c.Name, c.HostConfig.NetworkMode)
		}
		if cs.Labels[lab.LabelPart] == lab.PartSwitch {
			switches++
			if c.Name != "/"+lab.SwitchName(spec.SessionID) {
				t.Errorf("switch is named %s", c.Name)
			}
		}
	}
	if switches != 1 {
		t.Errorf("%d switches, want 1", switches)
	}
}
