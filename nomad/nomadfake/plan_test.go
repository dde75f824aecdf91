package nomadfake

import (
	"strings"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

func shippedJob(t *testing.T, session string, o jobspecs.NomadOptions) *api.Job {
	t.Helper()
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: session, Candidate: "c"})
	if err != nil {
		t.Fatal(err)
	}
	job, err := jobspecs.NomadJob(spec, o)
	if err != nil {
		t.Fatal(err)
	}
	return job
}

// TestCheckJobResources: the fake refuses a node that the driver would
// hold to its reserve, or that nothing would hold to a CPU limit.
func TestCheckJobResources(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(task *api.Task)
		want string // in the problems; "" for none
	}{
		{"as rendered", func(*api.Task) {}, ""},
		{"a hard limit from the driver", func(task *api.Task) { task.Config["cpu_hard_limit"] = true }, "sets cpu_hard_limit"},
		{"memory_max under the reserve", func(task *api.Task) { task.Resources.MemoryMaxMB = new(16) }, "memory_max 16 is less than the memory 32"},
		{"no cpu limit label", func(task *api.Task) { delete(task.Config["labels"].([]map[string]string)[0], lab.LabelCPULimit) }, "nothing would hold it"},
		{"a cpu limit under the reserve", func(task *api.Task) { task.Config["labels"].([]map[string]string)[0][lab.LabelCPULimit] = "0.01" }, "limited to 0.01 cpus but reserves 0.05"},
		{"a cpu limit that is no number", func(task *api.Task) { task.Config["labels"].([]map[string]string)[0][lab.LabelCPULimit] = "all" }, "not a number of cpus"},
		{"no memory reserved", func(task *api.Task) { task.Resources.MemoryMB = new(0) }, "no cpu and memory resources"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := shippedJob(t, "checkjob0002", jobspecs.NomadOptions{})
			for _, task := range job.TaskGroups[0].Tasks {
				if task.Name == "osaka" {
					tc.edit(task)
				}
			}
			got := strings.Join(CheckJob(job, 8), "\n")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("problems:\n%s\nwant %q", got, tc.want)
			}
		})
	}
}

// TestGroupReserve: the fake's scheduler counts a lab as the product says
// Nomad does (jobspecs.NomadReserved), by its own reckoning.
func TestGroupReserve(t *testing.T) {
	for _, o := range []jobspecs.NomadOptions{{}, {NoMemoryOversubscription: true}, {MHzPerCPU: 2100}} {
		job := shippedJob(t, "reserve00001", o)
		cpu, mem := groupReserve(job)
		wantCPU, wantMem := jobspecs.NomadReserved(job)
		if cpu != wantCPU || mem != wantMem || cpu == 0 || mem == 0 {
			t.Errorf("%+v: the fake counts %d MHz %d MB, the product %d MHz %d MB", o, cpu, mem, wantCPU, wantMem)
		}
	}
}

// TestPlacement fills fake clients with labs of the shipped exam (440 MHz
// and 320 MB each) and checks where the next one goes, or why it cannot.
func TestPlacement(t *testing.T) {
	s := &Server{allocs: map[string]*allocation{}, plan: planState{placedOn: map[string]int{}}}
	s.SetClients(Client{Name: "a", CPU: 1000, MemoryMB: 4096}, Client{Name: "b", CPU: 8000, MemoryMB: 700})
	place := func(session string) (int, *api.AllocationMetric) {
		job := shippedJob(t, session, jobspecs.NomadOptions{})
		c, m := s.placement(job, true)
		if m == nil {
			id := newID()
			s.allocs[id] = &allocation{Allocation: &api.Allocation{ID: id, JobID: *job.ID, Job: job,
				DesiredStatus: api.AllocDesiredStatusRun, ClientStatus: api.AllocClientStatusRunning}}
			s.plan.placedOn[id] = c
		}
		return c, m
	}
	// a takes two labs by CPU (880 of 1000 MHz), b two by memory (640 of
	// 700 MB); the fifth fits on neither.
	for i, want := range []int{0, 0, 1, 1} {
		if c, m := place(string(rune('a'+i)) + "placement00"); m != nil || c != want {
			t.Fatalf("lab %d: client %d, refused %+v; want client %d", i, c, m, want)
		}
	}
	_, m := place("zplacement00")
	if m == nil {
		t.Fatal("a fifth lab was placed on full clients")
	}
	if m.NodesEvaluated != 2 || m.NodesExhausted != 2 || m.DimensionExhausted["cpu"] != 1 || m.DimensionExhausted["memory"] != 1 {
		t.Errorf("refused with %+v, want 2 clients exhausted: cpu on 1, memory on 1", m)
	}
	// A lab that stopped frees its room.
	for _, a := range s.allocs {
		if s.plan.placedOn[a.ID] == 0 {
			a.ClientStatus = api.AllocClientStatusComplete
			break
		}
	}
	if c, m := place("yplacement00"); m != nil || c != 0 {
		t.Errorf("after a lab ended on a: client %d, refused %+v", c, m)
	}
}
