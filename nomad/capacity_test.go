package nomad_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/nomad/nomadfake"
	"github.com/examlab/examlab/testlab"
)

// limitTimeout bounds the wait for a node's CPU limit to show on its
// container after the lab's agent set it.
const limitTimeout = 30 * time.Second

// shippedLab is what one lab of the shipped exam reserves on a client
// (jobspecs.TestNomadReservedShippedExam): the fake clients below are
// sized in these.
const (
	shippedLabMHz = 440
	shippedLabMB  = 320
)

// newCapacityEnv is a fake-backed runtime whose cluster has clients of
// the given sizes, memory oversubscription on, and a logger the test
// reads.
func newCapacityEnv(t *testing.T, oversub bool, clients ...nomadfake.Client) (*fakeEnv, *bytes.Buffer) {
	t.Helper()
	env := newFakeEnv(t)
	env.fake.SetClients(clients...)
	env.fake.MemoryOversubscription(oversub)
	var logs bytes.Buffer
	rt, err := nomad.New(nomad.Options{
		Client:   &api.Config{Address: env.fake.URL()},
		WaitTime: blockingWait,
		Job:      jobspecs.NomadOptions{Labnet: "/usr/local/bin/examlab"},
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	env.rt = rt
	return env, &logs
}

// TestProvisionRefusedWithoutRoom: when the plan finds no client with room,
// Provision registers nothing and says why, as lab.ErrNoCapacity.
func TestProvisionRefusedWithoutRoom(t *testing.T) {
	env, _ := newCapacityEnv(t, true,
		nomadfake.Client{Name: "small-cpu", CPU: shippedLabMHz - 1, MemoryMB: 4096},
		nomadfake.Client{Name: "small-memory", CPU: 4000, MemoryMB: shippedLabMB - 1})
	eng := testlab.NewEngine(t)
	spec := newLab(t, env.rt)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()

	err := env.rt.Provision(ctx, spec)
	if !errors.Is(err, lab.ErrNoCapacity) {
		t.Fatalf("provision: %v, want lab.ErrNoCapacity", err)
	}
	for _, want := range []string{"reserves 440 MHz of CPU and 320 MB of memory", "no client has room: 2 of 2 clients evaluated",
		"cpu exhausted on 1", "memory exhausted on 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("provision: %v\nwant the reason to say %q", err, want)
		}
	}
	t.Log(err)
	if regs := env.fake.Registers(); len(regs) != 0 {
		t.Errorf("%d registers after a refused plan, want none", len(regs))
	}
	if job := env.fake.Job(jobspecs.JobName(spec.SessionID)); job != nil {
		t.Errorf("job %s registered after a refused plan", *job.ID)
	}
	if plans := env.fake.Plans(); len(plans) != 1 || plans[0].Failed == nil || len(plans[0].Problems) != 0 {
		t.Errorf("plans %+v, want one sane plan, refused", plans)
	}
	if cs := eng.Containers(t, spec.SessionID); len(cs) != 0 {
		t.Errorf("containers after a refused plan: %s", testlab.Summary(cs))
	}
}

// TestProvisionHoldsNodesToLimits provisions the shipped exam's lab on a
// client with room for one: the plan passes and the job is registered with
// the exam's reserve; each node's container is held to its limits (memory
// by the driver, CPU by the lab's agent, again after a reset); a second lab
// finds no room until the first is gone.
func TestProvisionHoldsNodesToLimits(t *testing.T) {
	env, logs := newCapacityEnv(t, true, nomadfake.Client{Name: "one-lab", CPU: shippedLabMHz + 100, MemoryMB: 2 * shippedLabMB})
	eng := testlab.NewEngine(t)
	spec := newLab(t, env.rt)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()

	if err := env.rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	if strings.Contains(logs.String(), "oversubscription") {
		t.Errorf("warned about memory oversubscription, which is on:\n%s", logs)
	}
	if plans, regs := env.fake.Plans(), env.fake.Registers(); len(plans) != 1 || plans[0].Failed != nil || len(regs) != 1 || regs[0].Err != "" {
		t.Fatalf("plans %+v registers %+v, want one plan that fits and one register", plans, regs)
	}
	job := env.fake.Job(jobspecs.JobName(spec.SessionID))
	for _, task := range job.TaskGroups[0].Tasks {
		n, ok := spec.Node(task.Name)
		if !ok {
			continue
		}
		r := task.Resources
		if *r.CPU != 50 || *r.MemoryMB != 32 || r.MemoryMaxMB == nil || *r.MemoryMaxMB != n.MemoryMB {
			t.Errorf("%s reserves %d MHz %d MB up to %v, want 50 MHz 32 MB up to %d", task.Name, *r.CPU, *r.MemoryMB, r.MemoryMaxMB, n.MemoryMB)
		}
	}
	alloc := currentAllocID(t, env, spec)
	checkLimits := func(t *testing.T, n lab.Node) {
		t.Helper()
		want := int64(n.CPUs * 1e9)
		deadline := time.Now().Add(limitTimeout)
		for {
			hc, _ := eng.Inspect(t, n.Container)["HostConfig"].(map[string]any)
			nano, _ := hc["NanoCpus"].(float64)
			mem, _ := hc["Memory"].(float64)
			res, _ := hc["MemoryReservation"].(float64)
			if int64(nano) == want {
				if int64(mem) != int64(n.MemoryMB)<<20 || int64(res) != 32<<20 {
					t.Errorf("%s: memory %v reservation %v, want %d MB reserving 32 MB", n.Name, mem, res, n.MemoryMB)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: NanoCpus %v, want %d after %s; the agent said:\n%s", n.Name, nano, want, limitTimeout, env.fake.AgentLog(alloc))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Run("each node is held to its cpus", func(t *testing.T) {
		// The driver left them without a CPU limit: the agent set each.
		if log := env.fake.AgentLog(alloc); !strings.Contains(log, "limits set: g1 g2 g3 g4 kyoto osaka phoenix tokyo\nexit 0") {
			t.Errorf("the lab's agent said:\n%s\nwant it to set every node's limit", log)
		}
		for _, n := range spec.Nodes {
			checkLimits(t, n)
		}
	})
	t.Run("a reset node is held to its cpus again", func(t *testing.T) {
		before := eng.Inspect(t, spec.Nodes[0].Container)["Id"]
		if err := env.rt.ResetNode(ctx, spec, spec.Nodes[0].Name); err != nil {
			t.Fatal(err)
		}
		if after := eng.Inspect(t, spec.Nodes[0].Container)["Id"]; after == before {
			t.Fatal("the reset kept the node's container")
		}
		checkLimits(t, spec.Nodes[0])
	})

	second := newLab(t, env.rt)
	err := env.rt.Provision(ctx, second)
	if !errors.Is(err, lab.ErrNoCapacity) || !strings.Contains(err.Error(), "cpu exhausted on 1") {
		t.Fatalf("a second lab on the full client: %v, want lab.ErrNoCapacity, cpu exhausted", err)
	}
	if env.fake.Job(jobspecs.JobName(second.SessionID)) != nil {
		t.Error("the second lab's job was registered without room")
	}
	if err := env.rt.Destroy(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	if err := env.rt.Provision(ctx, second); err != nil {
		t.Fatalf("the second lab once the first is gone: %v", err)
	}
}

// TestProvisionWithoutOversubscription: on a cluster whose scheduler
// would ignore memory_max, the runtime warns once, saying how to turn it
// on, and each node reserves its whole memory limit rather than being
// held to its reserve.
func TestProvisionWithoutOversubscription(t *testing.T) {
	env, logs := newCapacityEnv(t, false)
	eng := testlab.NewEngine(t)
	spec := newLab(t, env.rt)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := env.rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	if err := env.rt.CheckScheduler(ctx); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "memory_oversubscription_enabled = true"); n != 1 {
		t.Errorf("%d warnings saying how to enable memory oversubscription, want 1:\n%s", n, logs)
	}
	job := env.fake.Job(jobspecs.JobName(spec.SessionID))
	for _, task := range job.TaskGroups[0].Tasks {
		if task.Resources.MemoryMaxMB != nil {
			t.Errorf("%s has memory_max %d, which the scheduler ignores", task.Name, *task.Resources.MemoryMaxMB)
		}
		n, ok := spec.Node(task.Name)
		if !ok {
			continue
		}
		if *task.Resources.MemoryMB != n.MemoryMB {
			t.Errorf("%s reserves %d MB, want its whole limit %d", task.Name, *task.Resources.MemoryMB, n.MemoryMB)
		}
		hc, _ := eng.Inspect(t, n.Container)["HostConfig"].(map[string]any)
		if mem, _ := hc["Memory"].(float64); int64(mem) != int64(n.MemoryMB)<<20 {
			t.Errorf("%s is held to %v bytes, want its limit %d MB", n.Name, mem, n.MemoryMB)
		}
	}
}

// currentAllocID is the id of the allocation running the session's lab.
func currentAllocID(t *testing.T, env *fakeEnv, spec lab.Spec) string {
	t.Helper()
	st, err := env.rt.Status(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st {
		if n.AllocID != "" {
			return n.AllocID
		}
	}
	t.Fatal("no node reports its allocation")
	return ""
}
