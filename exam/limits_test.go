package exam

import (
	"strings"
	"testing"
)

// limitsExam is a two-node exam whose topology's defaults and node b's
// limits the tests fill in.
func limitsExam(defaults, b string) string {
	return `id: limits
title: Limits
duration: 30m
tasks:
  - {id: t1, title: One, kind: text, prompt: "?"}
topology:
  image: examlab/node:bookworm
  defaults:
    limits: ` + defaults + `
  nodes:
    - {name: a, role: host}
    - name: b
      role: host
      limits: ` + b + `
`
}

// TestReserveDefaults checks where a node's reserve comes from: its own,
// the topology's defaults, else DefaultReserve held to the node's limits;
// and that an exam without reserves keeps the limits it always had.
func TestReserveDefaults(t *testing.T) {
	tests := []struct {
		name        string
		defaults, b string
		a, bWant    Limits
	}{
		{"an exam from before reserves: same limits, the built-in reserve",
			"{memory_mb: 64, cpus: 0.1, pids: 64}", "{}",
			Limits{MemoryMB: 64, CPUs: 0.1, Pids: 64, Reserve: DefaultReserve},
			Limits{MemoryMB: 64, CPUs: 0.1, Pids: 64, Reserve: DefaultReserve}},
		{"the topology's reserve, and a node's own",
			"{memory_mb: 128, cpus: 0.5, pids: 64, reserve: {cpus: 0.1, memory_mb: 48}}", "{reserve: {cpus: 0.2}}",
			Limits{MemoryMB: 128, CPUs: 0.5, Pids: 64, Reserve: Reserve{CPUs: 0.1, MemoryMB: 48}},
			Limits{MemoryMB: 128, CPUs: 0.5, Pids: 64, Reserve: Reserve{CPUs: 0.2, MemoryMB: 48}}},
		{"the built-in reserve never exceeds a small node's limits",
			"{memory_mb: 64, cpus: 0.1, pids: 64}", "{memory_mb: 16, cpus: 0.02}",
			Limits{MemoryMB: 64, CPUs: 0.1, Pids: 64, Reserve: DefaultReserve},
			Limits{MemoryMB: 16, CPUs: 0.02, Pids: 64, Reserve: Reserve{CPUs: 0.02, MemoryMB: 16}}},
		{"a reserve equal to the limits",
			"{memory_mb: 64, cpus: 0.1, pids: 64, reserve: {cpus: 0.1, memory_mb: 64}}", "{}",
			Limits{MemoryMB: 64, CPUs: 0.1, Pids: 64, Reserve: Reserve{CPUs: 0.1, MemoryMB: 64}},
			Limits{MemoryMB: 64, CPUs: 0.1, Pids: 64, Reserve: Reserve{CPUs: 0.1, MemoryMB: 64}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Parse([]byte(limitsExam(tc.defaults, tc.b)))
			if err != nil {
				t.Fatal(err)
			}
			if got := e.Topology.Nodes[0].Limits; got != tc.a {
				t.Errorf("a's limits = %+v, want %+v", got, tc.a)
			}
			if got := e.Topology.Nodes[1].Limits; got != tc.bWant {
				t.Errorf("b's limits = %+v, want %+v", got, tc.bWant)
			}
		})
	}
}

func TestShippedExamReserves(t *testing.T) {
	for _, n := range Default().Topology.Nodes {
		if n.Limits.Reserve != (Reserve{CPUs: 0.05, MemoryMB: 32}) || n.Limits.CPUs != 0.25 {
			t.Errorf("%s: limits %+v, want 0.25 cpus reserving 0.05 cpus and 32 MB", n.Name, n.Limits)
		}
	}
}

func TestInvalidReserveNamesTheField(t *testing.T) {
	tests := []struct {
		name, defaults, b, field, says string
	}{
		{"the node's cpus over its limit", "{memory_mb: 64, cpus: 0.1, pids: 64}", "{reserve: {cpus: 0.2}}",
			"topology.nodes[1].limits.reserve.cpus", "more than the limit"},
		{"the node's memory over its limit", "{memory_mb: 64, cpus: 0.1, pids: 64}", "{reserve: {memory_mb: 65}}",
			"topology.nodes[1].limits.reserve.memory_mb", "more than the limit"},
		{"negative cpus", "{memory_mb: 64, cpus: 0.1, pids: 64}", "{reserve: {cpus: -0.1}}",
			"topology.nodes[1].limits.reserve.cpus", "more than 0"},
		{"memory below what Nomad reserves", "{memory_mb: 64, cpus: 0.1, pids: 64}", "{reserve: {memory_mb: 4}}",
			"topology.nodes[1].limits.reserve.memory_mb", "at least 10"},
		{"the defaults' reserve over the defaults' limit", "{memory_mb: 64, cpus: 0.1, pids: 64, reserve: {cpus: 0.5}}", "{}",
			"topology.defaults.limits.reserve.cpus", "more than the limit"},
		{"the defaults' memory below what Nomad reserves", "{memory_mb: 64, cpus: 0.1, pids: 64, reserve: {memory_mb: 1}}", "{}",
			"topology.defaults.limits.reserve.memory_mb", "at least 10"},
		// b lowers its own limit under the reserve it inherits.
		{"an inherited reserve over the node's own limit", "{memory_mb: 64, cpus: 0.5, pids: 64, reserve: {cpus: 0.2}}", "{cpus: 0.1}",
			"topology.nodes[1].limits.reserve.cpus", "topology.defaults.limits.reserve"},
		{"an unknown field", "{memory_mb: 64, cpus: 0.1, pids: 64}", "{reserve: {disk_mb: 10}}",
			"", "disk_mb"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(limitsExam(tc.defaults, tc.b)))
			if tc.field != "" {
				wantInvalid(t, err, tc.field)
			}
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("error %v, want one saying %q", err, tc.says)
			}
		})
	}
}
