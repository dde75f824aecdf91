package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/examlab/examlab/lab"
)

// run executes cmd without a TTY in a node and returns its output and exit
// code, failing the test if the exec itself fails.
func run(t *testing.T, r *Runtime, sessionID, node string, cmd ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	out, code, err := lab.Output(ctx, r, sessionID, node, cmd...)
	if err != nil {
		t.Fatalf("exec %v in %s: %v", cmd, node, err)
	}
	return out, code
}

// TestLab provisions the default eight-node lab, plus a one-node lab of a
// second session to check isolation against, and exercises the runtime on
// them. One lab serves all subtests: provisioning is the slow part.
func TestLab(t *testing.T) {
	r := newTestRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)

	spec := defaultLab(t, r)
	other := defaultLab(t, r)
	other.Nodes = other.Nodes[:1]

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, s := range []lab.Spec{spec, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.Provision(ctx, s)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("provision: %v", err)
	}
	sid := spec.SessionID
	nets, err := r.client.networksNamed(ctx, lab.NetworkName(sid))
	if err != nil {
		t.Fatal(err)
	}
	if len(nets) != 1 {
		t.Fatalf("want 1 network named %s, got %d", lab.NetworkName(sid), len(nets))
	}
	netw := nets[0]

	t.Run("network is internal and from the pool", func(t *testing.T) {
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
	})

	t.Run("status reports every node running in spec order", func(t *testing.T) {
		st, err := r.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != 8 {
			t.Fatalf("want 8 nodes, got %d", len(st))
		}
		for i, n := range st {
			if n.Name != spec.Nodes[i].Name || n.Container != spec.Nodes[i].Container {
				t.Errorf("node %d is %s/%s, want %s/%s", i, n.Name, n.Container, spec.Nodes[i].Name, spec.Nodes[i].Container)
			}
			if n.State != lab.StateRunning || n.IP == "" || n.StartedAt.IsZero() {
				t.Errorf("node %s: state %s ip %q started %v", n.Name, n.State, n.IP, n.StartedAt)
			}
		}
		conts, _ := sessionResources(t, r, sid)
		if len(conts) != 8 {
			t.Errorf("want 8 containers, got %d", len(conts))
		}
	})

	t.Run("hostname is the node name", func(t *testing.T) {
		for _, n := range spec.Nodes {
			t.Run(n.Name, func(t *testing.T) {
				out, code := run(t, r, sid, n.Name, "hostname")
				if code != 0 || strings.TrimSpace(out) != n.Name {
					t.Errorf("hostname = %q (exit %d), want %q", out, code, n.Name)
				}
			})
		}
	})

	t.Run("peers reach each other by name", func(t *testing.T) {
		out, code := run(t, r, sid, "tokyo", "ping", "-c1", "-W2", "osaka")
		if code != 0 {
			t.Fatalf("ping osaka from tokyo: exit %d: %s", code, out)
		}
		// A TCP listener on a peer doubles as the positive control for
		// the isolation checks below, which use the same nc probe.
		p, err := r.Exec(ctx, sid, "osaka", lab.ExecRequest{Cmd: []string{"nc", "-lk", "7777"}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var code2 int
		for range 20 {
			if _, code2 = run(t, r, sid, "tokyo", "nc", "-z", "-w2", "osaka", "7777"); code2 == 0 {
				break
			}
		}
		if code2 != 0 {
			t.Errorf("nc -z osaka 7777 from tokyo: exit %d", code2)
		}
	})

	t.Run("isolation", func(t *testing.T) {
		// A listener on all of the host's addresses stands in for Redis,
		// the API and every other host service.
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		// Count connections that come from any lab subnet; the host's own
		// check below connects from the host's address.
		var fromLabs atomic.Int32
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil && r.pool.Contains(ap.Addr()) {
					fromLabs.Add(1)
				}
				c.Close()
			}
		}()
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		hostIP := primaryIPv4(t)
		if c, err := net.Dial("tcp4", net.JoinHostPort(hostIP, port)); err != nil {
			t.Fatalf("the host's own listener is not reachable on %s: %v", hostIP, err)
		} else {
			c.Close()
		}

		gateway := netip.MustParsePrefix(netw.IPAM.Config[0].Subnet).Addr().Next().String()
		mine, err := r.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := r.Status(ctx, other)
		if err != nil || theirs[0].IP == "" {
			t.Fatalf("status of the other session: %v %v", theirs, err)
		}

		cases := []struct {
			name    string
			session string
			node    string
			cmd     string
		}{
			{"host service on the bridge gateway", sid, "tokyo", "nc -z -w2 " + gateway + " " + port},
			{"host service on the host's primary address", sid, "tokyo", "nc -z -w2 " + hostIP + " " + port},
			{"cloud metadata", sid, "tokyo", "nc -z -w2 169.254.169.254 80"},
			{"other session's node", sid, "tokyo", "ping -c1 -W2 " + theirs[0].IP},
			{"this session's node from the other", other.SessionID, other.Nodes[0].Name, "ping -c1 -W2 " + mine[0].IP},
			// g1 and g2 have NET_ADMIN: they may reroute, and still must not
			// get out.
			{"host from a node that rewrites its routes", sid, "g1",
				"ip route replace default dev eth0 || echo reroute failed; nc -z -w2 " + hostIP + " " + port},
			{"metadata from a node that rewrites its routes", sid, "g2",
				"ip route replace default dev eth0 || echo reroute failed; nc -z -w2 169.254.169.254 80"},
		}
		// Each blocked probe waits out its timeout; run them side by side.
		t.Run("probes", func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					out, code := run(t, r, tc.session, tc.node, "sh", "-c", tc.cmd)
					if code == 0 {
						t.Errorf("%q in %s succeeded, want it blocked: %s", tc.cmd, tc.node, out)
					}
					if strings.Contains(out, "reroute failed") {
						t.Errorf("the node could not reroute, so the probe proves nothing: %s", out)
					}
				})
			}
		})
		if n := fromLabs.Load(); n > 0 {
			t.Errorf("the host listener accepted %d connections from labs", n)
		}
	})

	t.Run("capabilities are limited to the spec", func(t *testing.T) {
		for _, node := range []string{"tokyo", "g1"} {
			t.Run(node, func(t *testing.T) {
				n, _ := spec.Node(node)
				want := capMask(t, n.CapAdd)
				out, _ := run(t, r, sid, node, "grep", "CapEff", "/proc/self/status")
				f := strings.Fields(out)
				if len(f) != 2 {
					t.Fatalf("unexpected output %q", out)
				}
				got, err := strconv.ParseUint(f[1], 16, 64)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("CapEff = %#x, want %#x (%v)", got, want, n.CapAdd)
				}
			})
		}
	})

	t.Run("exec", func(t *testing.T) { testExec(t, r, sid) })

	t.Run("export holds the filesystem", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(r.ExportFS(ctx, sid, "tokyo", pw)) }()
		defer pr.Close()
		tr := tar.NewReader(pr)
		found := false
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimPrefix(h.Name, "./") == "etc/hostname" {
				found = true
			}
		}
		if !found {
			t.Error("export has no etc/hostname")
		}
	})

	t.Run("logs carry the ready line with timestamps", func(t *testing.T) {
		var buf bytes.Buffer
		if err := r.Logs(ctx, sid, "tokyo", &buf); err != nil {
			t.Fatal(err)
		}
		line := strings.TrimSpace(buf.String())
		if !strings.Contains(line, "examlab node tokyo ready") || !strings.HasPrefix(line, "20") {
			t.Errorf("logs = %q", buf.String())
		}
	})

	t.Run("missing nodes are not found", func(t *testing.T) {
		_, err := r.Exec(ctx, sid, "nowhere", lab.ExecRequest{Cmd: []string{"true"}})
		if !errors.Is(err, lab.ErrNotFound) {
			t.Errorf("exec in a missing node: %v, want ErrNotFound", err)
		}
		if err := r.Logs(ctx, sid, "nowhere", io.Discard); !errors.Is(err, lab.ErrNotFound) {
			t.Errorf("logs of a missing node: %v, want ErrNotFound", err)
		}
	})

	t.Run("labs lists both sessions", func(t *testing.T) {
		ids, err := r.Labs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{sid, other.SessionID} {
			if !slices.Contains(ids, want) {
				t.Errorf("labs %v lack %s", ids, want)
			}
		}
	})

	t.Run("provision restarts a stopped node", func(t *testing.T) {
		name := lab.ContainerName(sid, "phoenix")
		before, err := r.client.inspectContainer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := stopContainer(ctx, r, name); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Exec(ctx, sid, "phoenix", lab.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, lab.ErrNotRunning) {
			t.Errorf("exec in a stopped node: %v, want ErrNotRunning", err)
		}
		st, err := r.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if st[7].State != lab.StateExited {
			t.Errorf("stopped phoenix is %s", st[7].State)
		}
		if err := r.Provision(ctx, spec); err != nil {
			t.Fatal(err)
		}
		after, err := r.client.inspectContainer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if after.ID != before.ID || !after.State.Running {
			t.Errorf("phoenix was replaced or not restarted: %s -> %s running=%v", before.ID[:12], after.ID[:12], after.State.Running)
		}
	})

	t.Run("provision replaces a node whose spec changed", func(t *testing.T) {
		changed := spec
		changed.Nodes = slices.Clone(spec.Nodes)
		changed.Nodes[2].MemoryMB = 160
		name := lab.ContainerName(sid, "kyoto")
		before, err := r.client.inspectContainer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Provision(ctx, changed); err != nil {
			t.Fatal(err)
		}
		after, err := r.client.inspectContainer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if after.ID == before.ID {
			t.Error("kyoto kept its container despite a new memory limit")
		}
		conts, _ := sessionResources(t, r, sid)
		if len(conts) != 8 {
			t.Errorf("want 8 containers, got %d", len(conts))
		}
	})

	t.Run("reset node gives a fresh container", func(t *testing.T) {
		if _, code := run(t, r, sid, "osaka", "touch", "/root/marker"); code != 0 {
			t.Fatal("touch failed")
		}
		if err := r.ResetNode(ctx, spec, "osaka"); err != nil {
			t.Fatal(err)
		}
		if _, code := run(t, r, sid, "osaka", "test", "-e", "/root/marker"); code == 0 {
			t.Error("marker survived the reset")
		}
		if out, _ := run(t, r, sid, "tokyo", "ping", "-c1", "-W2", "osaka"); !strings.Contains(out, "1 received") {
			t.Errorf("osaka unreachable by name after reset: %s", out)
		}
		if err := r.ResetNode(ctx, spec, "nowhere"); !errors.Is(err, lab.ErrNotFound) {
			t.Errorf("reset of an unknown node: %v, want ErrNotFound", err)
		}
	})

	t.Run("destroy twice leaves nothing", func(t *testing.T) {
		for i := range 2 {
			if err := r.Destroy(ctx, sid); err != nil {
				t.Fatalf("destroy #%d: %v", i+1, err)
			}
		}
		conts, nets := sessionResources(t, r, sid)
		if len(conts) != 0 || len(nets) != 0 {
			t.Errorf("left %d containers and %d networks", len(conts), len(nets))
		}
		st, err := r.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st {
			if n.State != lab.StatePending {
				t.Errorf("%s is %s after destroy", n.Name, n.State)
			}
		}
	})
}

// TestProvisionConverges kills a provision halfway, then runs two
// provisions of the same lab at once: the lab must end up complete, once.
func TestProvisionConverges(t *testing.T) {
	r := newTestRuntime(t)
	spec := defaultLab(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)

	halfway, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Provision(halfway, spec) }()
	for {
		conts, _ := sessionResources(t, r, spec.SessionID)
		if len(conts) >= 3 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("provision finished before it could be cancelled: %v", err)
		default:
		}
	}
	stop()
	if err := <-done; err == nil {
		t.Log("provision completed despite the cancel; the rerun still has to converge")
	}

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.Provision(ctx, spec)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	conts, nets := sessionResources(t, r, spec.SessionID)
	if len(conts) != 8 || len(nets) != 1 {
		t.Errorf("want 8 containers and 1 network, got %d and %d", len(conts), len(nets))
	}
	for _, c := range conts {
		if c.State != "running" {
			t.Errorf("%v is %s", c.Names, c.State)
		}
	}
}

// primaryIPv4 returns an address the host holds on a real interface, not
// on loopback or a Docker bridge.
func primaryIPv4(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 ||
			strings.HasPrefix(ifc.Name, "docker") || strings.HasPrefix(ifc.Name, "br-") || strings.HasPrefix(ifc.Name, "veth") {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return ipn.IP.String()
			}
		}
	}
	t.Fatal("no IPv4 address on a host interface")
	return ""
}

// capBits numbers the capabilities exams may grant, as in linux/capability.h.
var capBits = map[string]uint{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5,
	"SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10,
	"NET_ADMIN": 12, "NET_RAW": 13, "SYS_CHROOT": 18, "MKNOD": 27,
	"AUDIT_WRITE": 29,
}

func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	var m uint64
	for _, c := range caps {
		bit, ok := capBits[strings.TrimPrefix(c, "CAP_")]
		if !ok {
			t.Fatalf("unknown capability %s", c)
		}
		m |= 1 << bit
	}
	return m
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
	a := containerSpec("exam-abcdefgh-net", spec)
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
	if b := containerSpec("exam-abcdefgh-net", spec); b.Labels[labelConfig] != a.Labels[labelConfig] {
		t.Error("digest differs for the same spec")
	}
	spec.MemoryMB = 256
	if b := containerSpec("exam-abcdefgh-net", spec); b.Labels[labelConfig] == a.Labels[labelConfig] {
		t.Error("digest unchanged after a memory change")
	}
}
