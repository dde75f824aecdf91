package exam

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	g1, _ := e.Node("g1")
	if !contains(g1.Capabilities, "NET_ADMIN") || g1.Sysctls["net.ipv4.ip_forward"] != "1" {
		t.Errorf("g1 = %+v, want NET_ADMIN and forwarding", g1)
	}
	tokyo, _ := e.Node("tokyo")
	if contains(tokyo.Capabilities, "NET_ADMIN") {
		t.Errorf("tokyo has NET_ADMIN; only gateways declare it")
	}
	if tokyo.Limits.MemoryMB != 128 || tokyo.Limits.Pids != 256 || tokyo.Image != "examlab/node:bookworm" {
		t.Errorf("tokyo defaults not applied: %+v", tokyo)
	}
	phoenix, _ := e.Node("phoenix")
	if phoenix.Limits.MemoryMB != 256 {
		t.Errorf("phoenix memory = %d, want its own 256", phoenix.Limits.MemoryMB)
	}
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
			j := strings.Index(s, "topology:")
			return s[:i] + s[j:]
		}, "tasks[4].options"},
		{"privileged capability", func(s string) string {
			return strings.Replace(s, "capabilities: [NET_ADMIN]", "capabilities: [SYS_ADMIN]", 1)
		}, "topology.nodes[3].capabilities"},
		{"duplicate node", func(s string) string { return strings.Replace(s, "name: osaka", "name: tokyo", 1) }, "topology.nodes[1].name"},
		{"bad node name", func(s string) string { return strings.Replace(s, "name: kyoto", "name: Kyoto_1", 1) }, "topology.nodes[2].name"},
		{"memory too small", func(s string) string { return strings.Replace(s, "memory_mb: 256", "memory_mb: 1", 1) }, "topology.nodes[7].limits.memory_mb"},
		{"host sysctl", func(s string) string {
			return strings.Replace(s, `sysctls: {net.ipv4.ip_forward: "1"}`, `sysctls: {kernel.shmmax: "1"}`, 1)
		}, "topology.nodes[3].sysctls"},
		{"unknown field", func(s string) string { return strings.Replace(s, "title: Network", "titel: x\ntitle: Network", 1) }, "titel"},
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
			if err == nil {
				t.Fatal("Load accepted an invalid exam")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.wantField) {
				t.Errorf("error %q does not name %q", err, tc.wantField)
			}
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
