package nomad_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// defaultMaxLabs bounds how many labs TestRealNomadCapacity starts before
// it gives up looking for the cluster's end; EXAMLAB_CAPACITY_MAX_LABS
// changes it.
const defaultMaxLabs = 40

// TestRealNomadCapacity measures how many labs of the shipped exam a real
// cluster places: it starts one after another until the runtime's plan
// refuses one with lab.ErrNoCapacity, and prints the count beside what the
// clients' resources and the lab's reservation predict (the README's
// capacity table). On the first lab it checks the limits on the client:
// each node container's CPU quota set by labnet-watch from its
// examlab.cpu-limit label, and its memory limit and reservation from the
// driver. Run it on a cluster with nothing else on it, with
// EXAMLAB_NOMAD_LABNET naming an examlab built from this tree.
func TestRealNomadCapacity(t *testing.T) {
	rt, client := realRuntime(t)
	eng := testlab.NewEngine(t)
	maxLabs := defaultMaxLabs
	if v, err := strconv.Atoi(os.Getenv("EXAMLAB_CAPACITY_MAX_LABS")); err == nil && v > 0 {
		maxLabs = v
	}
	probe, err := lab.NewSpec(exam.Default(), lab.Session{ID: newSessionID(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(maxLabs)*provisionTimeout)
	defer cancel()
	if err := rt.CheckScheduler(ctx); err != nil {
		t.Fatal(err)
	}
	job, err := rt.Job(probe)
	if err != nil {
		t.Fatal(err)
	}
	labCPU, labMem := jobspecs.NomadReserved(job)
	predicted := 0
	nodes, _, err := client.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, stub := range nodes {
		if stub.Status != api.NodeStatusReady || stub.SchedulingEligibility != api.NodeSchedulingEligible {
			continue
		}
		n, _, err := client.Nodes().Info(stub.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		cpu, mem := n.NodeResources.Cpu.CpuShares, n.NodeResources.Memory.MemoryMB
		if r := n.ReservedResources; r != nil {
			cpu -= int64(r.Cpu.CpuShares)
			mem -= int64(r.Memory.MemoryMB)
		}
		fit := min(cpu/int64(labCPU), mem/int64(labMem))
		t.Logf("client %s: %d MHz, %d MB free of reservations: %d labs by reservation", n.Name, cpu, mem, fit)
		predicted += int(fit)
	}

	placed := 0
	var refusal error
	for placed < maxLabs {
		spec := newLab(t, rt)
		start := time.Now()
		err := rt.Provision(ctx, spec)
		if errors.Is(err, lab.ErrNoCapacity) {
			refusal = err
			break
		}
		if err != nil {
			t.Fatalf("lab %d: %v", placed+1, err)
		}
		placed++
		t.Logf("lab %d placed in %s", placed, time.Since(start).Round(time.Millisecond))
		if placed == 1 {
			t.Run("the first lab's nodes are held to their limits", func(t *testing.T) { checkRealLimits(t, eng, spec) })
		}
	}
	t.Logf("labs placed: %d (measured); the lab reserves %d MHz and %d MB; by reservation %d fit", placed, labCPU, labMem, predicted)
	switch {
	case refusal == nil:
		t.Errorf("placed %d labs and none was refused: raise EXAMLAB_CAPACITY_MAX_LABS to find the cluster's end", placed)
	case placed == 0:
		t.Errorf("not even one lab fits: %v", refusal)
	default:
		t.Logf("lab %d refused: %v", placed+1, refusal)
	}
}

// checkRealLimits checks the node containers of a lab on a real client:
// the CPU quota labnet-watch sets from each node's examlab.cpu-limit
// label, and the memory limit and reservation the driver sets.
func checkRealLimits(t *testing.T, eng *testlab.Engine, spec lab.Spec) {
	deadline := time.Now().Add(limitTimeout)
	for _, n := range spec.Nodes {
		for {
			var id string
			for _, c := range eng.Containers(t, spec.SessionID) {
				if c.Labels[lab.LabelNode] == n.Name && c.State == "running" {
					id = c.ID
				}
			}
			var hc map[string]any
			if id != "" {
				hc, _ = eng.Inspect(t, id)["HostConfig"].(map[string]any)
			}
			nano, _ := hc["NanoCpus"].(float64)
			quota, _ := hc["CpuQuota"].(float64)
			period, _ := hc["CpuPeriod"].(float64)
			held := id != "" && (int64(nano) == int64(n.CPUs*1e9) || (period > 0 && int64(quota) == int64(n.CPUs*period+0.5)))
			if held {
				mem, _ := hc["Memory"].(float64)
				res, _ := hc["MemoryReservation"].(float64)
				cpus, reserve := n.Reserved()
				t.Logf("%s: %g cpus (reserves %g), memory %d MB reserving %d MB", n.Name, n.CPUs, cpus, int64(mem)>>20, int64(res)>>20)
				if int64(mem) != int64(n.MemoryMB)<<20 {
					t.Errorf("%s is held to %d MB of memory, want its limit %d (is memory oversubscription on?)", n.Name, int64(mem)>>20, n.MemoryMB)
				}
				if int64(res) != 0 && int64(res) != int64(reserve)<<20 {
					t.Errorf("%s reserves %d MB, want %d", n.Name, int64(res)>>20, reserve)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: NanoCpus %v CpuQuota %v/%v after %s, want %g cpus: is labnet-watch running examlab from this tree?",
					n.Name, nano, quota, period, limitTimeout, n.CPUs)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
