package exam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// loadTestdata loads an exam from testdata/ and fails the test if it is
// invalid.
func loadTestdata(t *testing.T, name string) *Exam {
	t.Helper()
	e, err := Load(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return e
}

// wantInvalid checks that err wraps ErrInvalid and that its message names
// exactly field, as "invalid exam: FIELD: problem".
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want an error naming %s", field)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %q does not wrap ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "invalid exam: "+field+": ") {
		t.Errorf("error %q does not name exactly %s", err, field)
	}
}

func TestSegmentedExamParses(t *testing.T) {
	e := loadTestdata(t, "segmented.yaml")
	if !e.Topology.Segmented() {
		t.Fatal("a topology with networks is not segmented")
	}
	a, _ := e.Node("a")
	r, _ := e.Node("r")
	s, _ := e.Node("s")
	b, _ := e.Node("b")
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"a file without a mode gets 0644", a.Files[0].Mode, DefaultFileMode},
		{"0644 as a number", a.Files[0].FileMode(), uint32(0o644)},
		{"a declared mode stays", s.Files[0].Mode, "0600"},
		{"an executable's mode", s.Files[1].FileMode(), uint32(0o755)},
		{"a setup without a timeout gets 2m", a.SetupTimeout.Duration, DefaultSetupTimeout},
		{"a declared timeout stays", s.SetupTimeout.Duration, 5 * time.Second},
		{"no setup, no timeout", b.SetupTimeout.Duration, time.Duration(0)},
		{"a name resolves to the first interface's address", a.HostAddress(), netip.MustParseAddr("192.168.1.10")},
		{"or to the declared address", r.HostAddress(), netip.MustParseAddr("10.9.0.1")},
		{"the second interface is eth1", InterfaceName(1), "eth1"},
		{"defaults reach segmented nodes", b.Limits.MemoryMB, 64},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestFlatExamParses(t *testing.T) {
	e := loadTestdata(t, "flat.yaml")
	if e.Topology.Segmented() {
		t.Fatal("a topology without networks is segmented")
	}
	a, _ := e.Node("a")
	if a.HostAddress().IsValid() {
		t.Errorf("a flat node has a fixed address %s; the runtime's pool gives it one", a.HostAddress())
	}
	// Files and setup need no networks.
	if a.Files[0].Mode != DefaultFileMode || a.SetupTimeout.Duration != DefaultSetupTimeout {
		t.Errorf("flat node a: mode %q, setup timeout %s; want the defaults", a.Files[0].Mode, a.SetupTimeout.Duration)
	}
}

// TestTopologyRefused edits the valid two-site fixture one field at a time;
// each edit must be refused with an error naming exactly that field.
func TestTopologyRefused(t *testing.T) {
	node := func(e *Exam, i int) *Node { return &e.Topology.Nodes[i] }
	// a is nodes[0] on left; r is nodes[1] on left and link; s is nodes[2]
	// on link and right; b is nodes[3] on right.
	tests := []struct {
		name  string
		edit  func(*Exam)
		field string
	}{
		// Networks.
		{"network name with capitals", func(e *Exam) { e.Topology.Networks[0].Name = "Left" }, "topology.networks[0].name"},
		{"duplicate network name", func(e *Exam) { e.Topology.Networks[1].Name = "left" }, "topology.networks[1].name"},
		{"subnet not a prefix", func(e *Exam) { e.Topology.Networks[0].Subnet = "192.168.1.0" }, "topology.networks[0].subnet"},
		{"IPv6 subnet", func(e *Exam) { e.Topology.Networks[0].Subnet = "fd00::/64" }, "topology.networks[0].subnet"},
		{"subnet with host bits", func(e *Exam) { e.Topology.Networks[0].Subnet = "192.168.1.1/24" }, "topology.networks[0].subnet"},
		{"subnet too small", func(e *Exam) { e.Topology.Networks[2].Subnet = "10.9.0.0/31" }, "topology.networks[2].subnet"},
		{"subnet too large", func(e *Exam) { e.Topology.Networks[2].Subnet = "10.0.0.0/7" }, "topology.networks[2].subnet"},
		{"overlapping subnets", func(e *Exam) { e.Topology.Networks[2].Subnet = "192.168.1.128/25" }, "topology.networks[2].subnet"},
		{"subnet inside another", func(e *Exam) { e.Topology.Networks[1].Subnet = "192.168.0.0/16" }, "topology.networks[1].subnet"},
		{"link-local subnet", func(e *Exam) { e.Topology.Networks[0].Subnet = "169.254.10.0/24" }, "topology.networks[0].subnet"},
		{"loopback subnet", func(e *Exam) { e.Topology.Networks[0].Subnet = "127.1.0.0/16" }, "topology.networks[0].subnet"},
		{"this-network subnet", func(e *Exam) { e.Topology.Networks[0].Subnet = "0.1.0.0/16" }, "topology.networks[0].subnet"},
		{"multicast subnet", func(e *Exam) { e.Topology.Networks[0].Subnet = "239.1.1.0/24" }, "topology.networks[0].subnet"},
		{"more than 64 networks", func(e *Exam) {
			for i := 0; len(e.Topology.Networks) <= MaxNetworks; i++ {
				e.Topology.Networks = append(e.Topology.Networks, Network{Name: fmt.Sprintf("n%d", i), Subnet: fmt.Sprintf("10.100.%d.0/24", i)})
			}
		}, "topology.networks"},

		// Interfaces.
		{"unknown network", func(e *Exam) { node(e, 2).Interfaces[1].Network = "nowhere" }, "topology.nodes[2].interfaces[1].network"},
		{"two interfaces on one network", func(e *Exam) {
			node(e, 1).Interfaces[1] = Interface{Network: "left", Address: "192.168.1.2/24"}
		}, "topology.nodes[1].interfaces[1].network"},
		{"address outside its subnet", func(e *Exam) { node(e, 2).Interfaces[1].Address = "192.168.3.1/24" }, "topology.nodes[2].interfaces[1].address"},
		{"address of another network", func(e *Exam) { node(e, 2).Interfaces[1].Address = "192.168.1.2/24" }, "topology.nodes[2].interfaces[1].address"},
		{"wrong prefix length", func(e *Exam) { node(e, 2).Interfaces[1].Address = "192.168.2.1/16" }, "topology.nodes[2].interfaces[1].address"},
		{"address without prefix length", func(e *Exam) { node(e, 2).Interfaces[1].Address = "192.168.2.1" }, "topology.nodes[2].interfaces[1].address"},
		{"IPv6 address", func(e *Exam) { node(e, 2).Interfaces[1].Address = "fd00::1/64" }, "topology.nodes[2].interfaces[1].address"},
		{"network address", func(e *Exam) { node(e, 2).Interfaces[1].Address = "192.168.2.0/24" }, "topology.nodes[2].interfaces[1].address"},
		{"broadcast address", func(e *Exam) { node(e, 2).Interfaces[1].Address = "192.168.2.255/24" }, "topology.nodes[2].interfaces[1].address"},
		{"broadcast address of a /30", func(e *Exam) { node(e, 1).Interfaces[1].Address = "10.9.0.3/30" }, "topology.nodes[1].interfaces[1].address"},
		{"the same address on two nodes", func(e *Exam) { node(e, 3).Interfaces[0].Address = "192.168.2.1/24" }, "topology.nodes[3].interfaces[0].address"},
		{"more than 16 interfaces", func(e *Exam) {
			n := node(e, 1)
			for i := 0; len(n.Interfaces) <= MaxInterfaces; i++ {
				name := fmt.Sprintf("extra%d", i)
				e.Topology.Networks = append(e.Topology.Networks, Network{Name: name, Subnet: fmt.Sprintf("10.100.%d.0/24", i)})
				n.Interfaces = append(n.Interfaces, Interface{Network: name, Address: fmt.Sprintf("10.100.%d.1/24", i)})
			}
		}, "topology.nodes[1].interfaces"},

		// Address.
		{"address not the node's", func(e *Exam) { node(e, 1).Address = "192.168.2.1" }, "topology.nodes[1].address"},
		{"address with a prefix length", func(e *Exam) { node(e, 1).Address = "10.9.0.1/30" }, "topology.nodes[1].address"},
		{"address of the node's network", func(e *Exam) { node(e, 1).Address = "10.9.0.0" }, "topology.nodes[1].address"},

		// Routes.
		{"route via an unreachable address", func(e *Exam) { node(e, 0).Routes[0].Via = "192.168.2.1" }, "topology.nodes[0].routes[0].via"},
		{"route via the node's own address", func(e *Exam) { node(e, 0).Routes[0].Via = "192.168.1.10" }, "topology.nodes[0].routes[0].via"},
		{"route via a network address", func(e *Exam) { node(e, 0).Routes[0].Via = "192.168.1.0" }, "topology.nodes[0].routes[0].via"},
		{"route via a broadcast address", func(e *Exam) { node(e, 1).Routes[0].Via = "10.9.0.3" }, "topology.nodes[1].routes[0].via"},
		{"route via a prefix", func(e *Exam) { node(e, 0).Routes[0].Via = "192.168.1.1/24" }, "topology.nodes[0].routes[0].via"},
		{"duplicate route destination", func(e *Exam) {
			node(e, 1).Routes = append(node(e, 1).Routes, Route{To: "192.168.2.0/24", Via: "192.168.1.10"})
		}, "topology.nodes[1].routes[1].to"},
		{"default declared twice", func(e *Exam) {
			node(e, 0).Routes = append(node(e, 0).Routes, Route{To: "0.0.0.0/0", Via: "192.168.1.1"})
		}, "topology.nodes[0].routes[1].to"},
		{"route to the node's own network", func(e *Exam) { node(e, 1).Routes[0].To = "192.168.1.0/24" }, "topology.nodes[1].routes[0].to"},
		{"route to a prefix with host bits", func(e *Exam) { node(e, 1).Routes[0].To = "192.168.2.1/24" }, "topology.nodes[1].routes[0].to"},
		{"route to a word", func(e *Exam) { node(e, 1).Routes[0].To = "everywhere" }, "topology.nodes[1].routes[0].to"},
		{"route on a node without interfaces", func(e *Exam) { node(e, 0).Interfaces = nil }, "topology.nodes[0].routes[0]"},

		// Fields that need topology.networks.
		{"interfaces without networks", func(e *Exam) { e.Topology.Networks = nil }, "topology.nodes[0].interfaces"},
		{"routes without networks", func(e *Exam) {
			e.Topology.Networks = nil
			for i := range e.Topology.Nodes {
				node(e, i).Interfaces = nil
			}
		}, "topology.nodes[0].routes"},
		{"address without networks", func(e *Exam) {
			e.Topology.Networks = nil
			for i := range e.Topology.Nodes {
				node(e, i).Interfaces, node(e, i).Routes = nil, nil
			}
		}, "topology.nodes[1].address"},

		// Files.
		{"relative file path", func(e *Exam) { node(e, 0).Files[0].Path = "etc/motd" }, "topology.nodes[0].files[0].path"},
		{"file path with ..", func(e *Exam) { node(e, 0).Files[0].Path = "/etc/../root/x" }, "topology.nodes[0].files[0].path"},
		{"file path ending in /", func(e *Exam) { node(e, 0).Files[0].Path = "/root/" }, "topology.nodes[0].files[0].path"},
		{"file path /", func(e *Exam) { node(e, 0).Files[0].Path = "/" }, "topology.nodes[0].files[0].path"},
		{"file under /proc", func(e *Exam) { node(e, 0).Files[0].Path = "/proc/sys/net/ipv4/ip_forward" }, "topology.nodes[0].files[0].path"},
		{"file under /sys", func(e *Exam) { node(e, 0).Files[0].Path = "/sys/class/net/eth0/mtu" }, "topology.nodes[0].files[0].path"},
		{"file under /dev", func(e *Exam) { node(e, 0).Files[0].Path = "/dev/null" }, "topology.nodes[0].files[0].path"},
		{"the lab's /etc/hosts", func(e *Exam) { node(e, 0).Files[0].Path = "/etc/hosts" }, "topology.nodes[0].files[0].path"},
		{"the node's /etc/resolv.conf", func(e *Exam) { node(e, 0).Files[0].Path = "/etc/resolv.conf" }, "topology.nodes[0].files[0].path"},
		{"duplicate file path", func(e *Exam) { node(e, 2).Files[1].Path = "/root/notes.txt" }, "topology.nodes[2].files[1].path"},
		{"file inside a file", func(e *Exam) { node(e, 2).Files[1].Path = "/root/notes.txt/x" }, "topology.nodes[2].files[1].path"},
		{"file around a file", func(e *Exam) { node(e, 2).Files[1].Path = "/root" }, "topology.nodes[2].files[1].path"},
		{"mode not octal", func(e *Exam) { node(e, 2).Files[0].Mode = "0999" }, "topology.nodes[2].files[0].mode"},
		{"mode in letters", func(e *Exam) { node(e, 2).Files[0].Mode = "rw-------" }, "topology.nodes[2].files[0].mode"},
		{"mode too large", func(e *Exam) { node(e, 2).Files[0].Mode = "17777" }, "topology.nodes[2].files[0].mode"},
		{"more than 1 MiB of files", func(e *Exam) {
			half := strings.Repeat("x", MaxFileBytes/2)
			node(e, 0).Files = append(node(e, 0).Files, File{Path: "/root/one", Mode: "0644", Content: half}, File{Path: "/root/two", Mode: "0644", Content: half})
		}, "topology.nodes[0].files[2].content"},

		// Setup.
		{"setup timeout over 10m", func(e *Exam) { node(e, 2).SetupTimeout.Duration = 11 * time.Minute }, "topology.nodes[2].setup_timeout"},
		{"setup timeout under 1s", func(e *Exam) { node(e, 2).SetupTimeout.Duration = 500 * time.Millisecond }, "topology.nodes[2].setup_timeout"},
		{"negative setup timeout", func(e *Exam) { node(e, 2).SetupTimeout.Duration = -time.Second }, "topology.nodes[2].setup_timeout"},
		{"setup timeout without setup", func(e *Exam) { node(e, 3).SetupTimeout.Duration = time.Minute }, "topology.nodes[3].setup_timeout"},
		{"setup timeout with a blank setup", func(e *Exam) { node(e, 2).Setup = " \n" }, "topology.nodes[2].setup_timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := loadTestdata(t, "segmented.yaml")
			tc.edit(e)
			err := e.Validate()
			wantInvalid(t, err, tc.field)
			if err != nil {
				t.Log(err)
			}
		})
	}
}

// TestTopologyAccepts checks the edges of what is allowed.
func TestTopologyAccepts(t *testing.T) {
	node := func(e *Exam, i int) *Node { return &e.Topology.Nodes[i] }
	tests := []struct {
		name string
		edit func(*Exam)
	}{
		{"the whole default route spelled out", func(e *Exam) { node(e, 0).Routes[0].To = "0.0.0.0/0" }},
		// A next hop nobody holds is how an exam plants a fault.
		{"a route via an address no node holds", func(e *Exam) { node(e, 0).Routes[0].Via = "192.168.1.254" }},
		{"a route to a part of another network", func(e *Exam) { node(e, 1).Routes[0].To = "192.168.2.0/25" }},
		{"the name on the second interface", func(e *Exam) { node(e, 2).Address = "192.168.2.1" }},
		{"a node on no network", func(e *Exam) { node(e, 3).Interfaces, node(e, 3).Routes = nil, nil }},
		{"no routes at all", func(e *Exam) {
			for i := range e.Topology.Nodes {
				node(e, i).Routes = nil
			}
		}},
		{"a mode of three digits", func(e *Exam) { node(e, 2).Files[0].Mode = "600" }},
		{"a setuid mode", func(e *Exam) { node(e, 2).Files[1].Mode = "4755" }},
		{"files of exactly 1 MiB", func(e *Exam) {
			node(e, 0).Files[0].Content = strings.Repeat("x", MaxFileBytes)
		}},
		{"setup timeout of 1s", func(e *Exam) { node(e, 2).SetupTimeout.Duration = time.Second }},
		{"setup timeout of 10m", func(e *Exam) { node(e, 2).SetupTimeout.Duration = MaxSetupTimeout }},
		{"64 networks", func(e *Exam) {
			for i := 0; len(e.Topology.Networks) < MaxNetworks; i++ {
				e.Topology.Networks = append(e.Topology.Networks, Network{Name: fmt.Sprintf("n%d", i), Subnet: fmt.Sprintf("10.100.%d.0/24", i)})
			}
		}},
		{"16 interfaces", func(e *Exam) {
			n := node(e, 1)
			for i := 0; len(n.Interfaces) < MaxInterfaces; i++ {
				name := fmt.Sprintf("extra%d", i)
				e.Topology.Networks = append(e.Topology.Networks, Network{Name: name, Subnet: fmt.Sprintf("10.100.%d.0/24", i)})
				n.Interfaces = append(n.Interfaces, Interface{Network: name, Address: fmt.Sprintf("10.100.%d.1/24", i)})
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := loadTestdata(t, "segmented.yaml")
			tc.edit(e)
			if err := e.Validate(); err != nil {
				t.Errorf("refused: %v", err)
			}
		})
	}
}

// TestTopologyYAML checks what only the YAML shows: defaults are applied
// before validation, and durations and modes read as authors write them.
// Each case replaces the fixture's last node, b, with lines of its own.
func TestTopologyYAML(t *testing.T) {
	tests := []struct {
		name  string
		lines []string // node b's fields after its name and role
		field string   // empty: valid; with no dot, a word the error quotes
	}{
		{"mode as an unquoted number", []string{"files: [{path: /x, mode: 0600, content: x}]"}, ""},
		{"setup with its default timeout", []string{"setup: 'true'"}, ""},
		{"setup timeout as a duration", []string{"setup: 'true'", "setup_timeout: 90s"}, ""},
		{"setup timeout not a duration", []string{"setup: 'true'", "setup_timeout: soon"}, "topology.nodes[3].setup_timeout"},
		{"setup timeout over 10m", []string{"setup: 'true'", "setup_timeout: 1h"}, "topology.nodes[3].setup_timeout"},
		{"setup timeout without setup", []string{"setup_timeout: 1m"}, "topology.nodes[3].setup_timeout"},
		{"unknown interface field", []string{"interfaces: [{network: right, address: 192.168.2.10/24, mtu: 1400}]"}, "mtu"},
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "segmented.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const b = `    - name: b
      role: host
      interfaces:
        - {network: right, address: 192.168.2.10/24}
      routes:
        - {to: default, via: 192.168.2.1}
`
	head, ok := strings.CutSuffix(string(raw), b)
	if !ok {
		t.Fatal("testdata/segmented.yaml no longer ends with node b; fix the test")
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := head + "    - name: b\n      role: host\n      " + strings.Join(tc.lines, "\n      ") + "\n"
			_, err := Parse([]byte(src))
			switch {
			case tc.field == "":
				if err != nil {
					t.Errorf("refused: %v", err)
				}
			case strings.Contains(tc.field, "."):
				wantInvalid(t, err, tc.field)
			case err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field):
				t.Errorf("error %v: want ErrInvalid quoting %s", err, tc.field)
			}
		})
	}
}
