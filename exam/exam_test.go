package exam

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestDefaultExam(t *testing.T) {
	e := Default()
	want := []string{"tokyo", "osaka", "kyoto", "g1", "g2", "g3", "g4", "phoenix"}
	if got := e.NodeNames(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("nodes = %v, want %v", got, want)
	}
	if e.Duration.Duration != 180*time.Minute {
		t.Errorf("duration = %s, want 3h", e.Duration.Duration)
	}
	if !e.Topology.Segmented() {
		t.Fatal("the default exam has no networks of its own")
	}
	for _, g := range []string{"g1", "g2", "g3", "g4"} {
		n, _ := e.Node(g)
		if n.Role != "gateway" || !contains(n.Capabilities, "NET_ADMIN") || n.Sysctls["net.ipv4.ip_forward"] != "1" {
			t.Errorf("%s = %+v, want a gateway with NET_ADMIN and forwarding", g, n)
		}
		if len(n.Interfaces) != 2 {
			t.Errorf("%s has %d interfaces, want 2: its own segment and the core", g, len(n.Interfaces))
		}
	}
	tokyo, _ := e.Node("tokyo")
	if contains(tokyo.Capabilities, "NET_ADMIN") {
		t.Errorf("tokyo has NET_ADMIN; no task has the candidate change its network")
	}
	if tokyo.Limits.MemoryMB != 128 || tokyo.Limits.Pids != 256 || tokyo.Image != "examlab/node:bookworm" {
		t.Errorf("tokyo defaults not applied: %+v", tokyo)
	}
	if tokyo.HostAddress() != netip.MustParseAddr("192.168.10.10") {
		t.Errorf("tokyo resolves to %s, want 192.168.10.10 as t1 says", tokyo.HostAddress())
	}
	if len(tokyo.Files) != 1 || tokyo.Files[0].Path != "/etc/motd" || tokyo.Files[0].Mode != "0644" {
		t.Errorf("tokyo files = %+v, want /etc/motd 0644", tokyo.Files)
	}
	phoenix, _ := e.Node("phoenix")
	if phoenix.Limits.MemoryMB != 256 {
		t.Errorf("phoenix memory = %d, want its own 256", phoenix.Limits.MemoryMB)
	}
	// t6's fault: kyoto's setup points its default route at a router that
	// is gone. Setup runs with kyoto's own capabilities, so kyoto needs
	// NET_ADMIN for it (and the candidate for the fix).
	kyoto, _ := e.Node("kyoto")
	if !contains(kyoto.Capabilities, "NET_ADMIN") || !strings.Contains(kyoto.Setup, "default via 192.168.30.254") || kyoto.SetupTimeout.Duration <= 0 {
		t.Errorf("kyoto = %+v, want NET_ADMIN and a setup that plants a stale default route", kyoto)
	}
	if owner := holder(e, netip.MustParseAddr("192.168.30.254")); owner != "" {
		t.Errorf("192.168.30.254 is %s's; the planted next hop must be nobody's", owner)
	}
	points := 0
	for _, task := range e.Tasks {
		points += task.Points
	}
	if points != 100 {
		t.Errorf("the tasks are worth %d points, want 100", points)
	}
}

// TestDefaultExamRouting follows the default lab's routing tables, as the
// exam declares them, to check what its tasks say about the lab at start:
// every branch reaches phoenix, no branch reaches another until t3's routes
// are added, and nothing leaves the lab (t5). Containers show the same in
// the platform's lifecycle test.
func TestDefaultExamRouting(t *testing.T) {
	e := Default()
	addr := func(name string) netip.Addr {
		n, ok := e.Node(name)
		if !ok {
			t.Fatalf("no node %s", name)
		}
		return n.HostAddress()
	}
	pings := func(from, to string) bool { return reach(e, from, addr(to)) == to && reach(e, to, addr(from)) == from }
	for _, b := range []string{"tokyo", "osaka", "kyoto"} {
		if !pings(b, "phoenix") {
			t.Errorf("%s and phoenix do not reach each other at start (t2, t4)", b)
		}
	}
	for _, pair := range [][2]string{{"tokyo", "osaka"}, {"osaka", "kyoto"}, {"kyoto", "tokyo"}} {
		if pings(pair[0], pair[1]) {
			t.Errorf("%s reaches %s at start; t3 asks for the routes that make it", pair[0], pair[1])
		}
	}
	if got := reach(e, "tokyo", netip.MustParseAddr("192.0.2.80")); got != "g1" {
		t.Errorf("a packet from tokyo out of the lab ends at %q, want g1 as t5's answer says", got)
	}

	// t3's answer: routes on g1 and g2 only.
	add := func(node, to, via string) {
		for i := range e.Topology.Nodes {
			if n := &e.Topology.Nodes[i]; n.Name == node {
				n.Routes = append(n.Routes, Route{To: to, Via: via})
			}
		}
	}
	add("g1", "192.168.20.0/24", "10.0.0.2")
	add("g2", "192.168.10.0/24", "10.0.0.1")
	if err := e.Validate(); err != nil {
		t.Fatalf("t3's answer makes an invalid lab: %v", err)
	}
	if !pings("tokyo", "osaka") {
		t.Error("with t3's routes tokyo and osaka still do not reach each other")
	}
	if pings("tokyo", "kyoto") {
		t.Error("t3's routes made tokyo reach kyoto too")
	}
}

// holder names the node holding address a, or "".
func holder(e *Exam, a netip.Addr) string {
	for _, n := range e.Topology.Nodes {
		for _, ifc := range n.Interfaces {
			if p, err := netip.ParsePrefix(ifc.Address); err == nil && p.Addr() == a {
				return n.Name
			}
		}
	}
	return ""
}

// reach sends a packet from node from towards address to through the
// routes the exam declares, and names the node it ends at: the one holding
// to when it arrives, else the last node that had it. Each node takes the
// longest matching prefix among its own networks and its routes; only
// nodes with net.ipv4.ip_forward pass packets on.
func reach(e *Exam, from string, to netip.Addr) string {
	at, _ := e.Node(from)
	for hop := 0; hop < 16; hop++ {
		if holder(e, to) == at.Name {
			return at.Name
		}
		if hop > 0 && at.Sysctls["net.ipv4.ip_forward"] != "1" {
			return at.Name
		}
		best, next := -1, netip.Addr{}
		for _, ifc := range at.Interfaces {
			p := netip.MustParsePrefix(ifc.Address).Masked()
			if p.Contains(to) && p.Bits() > best {
				best, next = p.Bits(), to
			}
		}
		for _, r := range at.Routes {
			p := netip.MustParsePrefix("0.0.0.0/0")
			if r.To != "default" {
				p = netip.MustParsePrefix(r.To)
			}
			if p.Contains(to) && p.Bits() > best {
				best, next = p.Bits(), netip.MustParseAddr(r.Via)
			}
		}
		name := holder(e, next)
		if best < 0 || name == "" {
			return at.Name
		}
		at, _ = e.Node(name)
	}
	return at.Name
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestInvalidExamsNameTheField(t *testing.T) {
	base, err := os.ReadFile("default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		edit      func(string) string
		wantField string
	}{
		{"missing id", func(s string) string { return strings.Replace(s, "id: netops-fundamentals", "id: ''", 1) }, "id"},
		{"bad duration", func(s string) string { return strings.Replace(s, "duration: 180m", "duration: forever", 1) }, "duration"},
		{"duration too short", func(s string) string { return strings.Replace(s, "duration: 180m", "duration: 10s", 1) }, "duration"},
		{"task id with path", func(s string) string { return strings.Replace(s, "id: t1-addressing", "id: ../../x", 1) }, "tasks[0].id"},
		{"duplicate task", func(s string) string { return strings.Replace(s, "id: t2-reachability", "id: t1-addressing", 1) }, "tasks[1].id"},
		{"unknown kind", func(s string) string { return strings.Replace(s, "kind: text", "kind: essay", 1) }, "tasks[0].kind"},
		{"choice without options", func(s string) string {
			i := strings.Index(s, "    options:")
			j := strings.Index(s, "  - id: t6-troubleshooting")
			return s[:i] + s[j:]
		}, "tasks[4].options"},
		{"privileged capability", func(s string) string {
			return strings.Replace(s, "role: gateway\n      capabilities: [NET_ADMIN]", "role: gateway\n      capabilities: [SYS_ADMIN]", 1)
		}, "topology.nodes[3].capabilities"},
		{"duplicate node", func(s string) string { return strings.Replace(s, "- name: osaka\n", "- name: tokyo\n", 1) }, "topology.nodes[1].name"},
		{"bad node name", func(s string) string { return strings.Replace(s, "- name: kyoto\n", "- name: Kyoto_1\n", 1) }, "topology.nodes[2].name"},
		{"memory too small", func(s string) string { return strings.Replace(s, "memory_mb: 256", "memory_mb: 1", 1) }, "topology.nodes[7].limits.memory_mb"},
		{"host sysctl", func(s string) string {
			return strings.Replace(s, `sysctls: {net.ipv4.ip_forward: "1"}`, `sysctls: {kernel.shmmax: "1"}`, 1)
		}, "topology.nodes[3].sysctls"},
		{"unknown field", func(s string) string { return strings.Replace(s, "title: Network", "titel: x\ntitle: Network", 1) }, "titel"},
		{"unknown network", func(s string) string {
			return strings.Replace(s, "{network: kyoto-lan, address: 192.168.30.1/24}", "{network: kyoto, address: 192.168.30.1/24}", 1)
		}, "topology.nodes[5].interfaces[0].network"},
		{"kyoto's setup for longer than allowed", func(s string) string { return strings.Replace(s, "setup_timeout: 30s", "setup_timeout: 11m", 1) }, "topology.nodes[2].setup_timeout"},
		{"no image", func(s string) string { return strings.Replace(s, "image: examlab/node:bookworm", "image: ''", 1) }, "topology.nodes[0].image"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.edit(string(base))
			if src == string(base) {
				t.Fatal("edit did not change the file; fix the test")
			}
			p := filepath.Join(t.TempDir(), "exam.yaml")
			if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p)
			if tc.name == "unknown field" {
				// The decoder's own error quotes the field it does not know.
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wantField) {
					t.Fatalf("error %v: want ErrInvalid quoting %q", err, tc.wantField)
				}
				return
			}
			wantInvalid(t, err, tc.wantField)
		})
	}
}

func TestValidTaskID(t *testing.T) {
	for id, want := range map[string]bool{
		"t1": true, "t1-addressing": true, "a_b": true,
		"": false, "../x": false, "a/b": false, ".hidden": false, "A": false, strings.Repeat("a", 65): false,
	} {
		if got := ValidTaskID(id); got != want {
			t.Errorf("ValidTaskID(%q) = %v, want %v", id, got, want)
		}
	}
}

// TestExamYAMLRoundTrip writes the default exam back as YAML: it reads as
// the same exam, so tools may derive exams from it.
func TestExamYAMLRoundTrip(t *testing.T) {
	want := Default()
	b, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("parse the written exam: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the exam changed on its way through YAML:\n%s", b)
	}
}
