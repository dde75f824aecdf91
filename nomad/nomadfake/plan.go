package nomadfake

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// Client is one client of the fake cluster as its scheduler sees it: the
// CPU (MHz) and memory (MB) it offers for placements. The fake's clients
// are capacity only: every allocation runs on the one Docker engine, and
// reports the one node the fake serves.
type Client struct {
	Name     string
	CPU      int
	MemoryMB int
}

// Plan is one job plan request the fake received.
type Plan struct {
	Job *api.Job
	// Problems found by CheckJob; a job with problems is refused.
	Problems []string
	// Failed holds the placement failures the fake answered with, by task
	// group; nil when the lab fits.
	Failed map[string]*api.AllocationMetric
}

// planState is the fake scheduler's view of capacity. Guarded by mu.
type planState struct {
	// clients, when set, bound placements; none means one client with
	// room for anything.
	clients []Client
	// placedOn is the client index each allocation was placed on.
	placedOn map[string]int
	oversub  bool
	plans    []Plan
	// agentLog is what holding an allocation's nodes to their limits
	// printed, by allocation.
	agentLog map[string]string
}

// SetClients makes placement count: from now on an allocation is placed on
// the first client with room for what its job reserves (as Nomad counts a
// task group), besides the allocations already placed there, and refused
// when none has. No clients means one with room for anything.
func (s *Server) SetClients(clients ...Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.plan.clients = append([]Client(nil), clients...)
}

// MemoryOversubscription switches the scheduler's memory oversubscription,
// on by default as examlab's agent configurations set it (a new Nomad
// cluster has it off). While it is off a task's memory_max is ignored: its
// container is held to the memory it reserves.
func (s *Server) MemoryOversubscription(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.plan.oversub = on
}

// Plans returns the plan requests received so far.
func (s *Server) Plans() []Plan {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Plan(nil), s.plan.plans...)
}

// AgentLog is what holding the allocation's nodes to their limits printed
// (`labnet limit`, as labnet-watch runs it), with its exit code.
func (s *Server) AgentLog(allocID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.plan.agentLog[allocID]
}

// planJob answers PUT /v1/job/{id}/plan: whether the job's lab would be
// placed now, without registering anything.
func (s *Server) planJob(w http.ResponseWriter, r *http.Request) {
	var req api.JobPlanRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "decode plan request: %v", err)
		return
	}
	if req.Job == nil || req.Job.ID == nil || *req.Job.ID != r.PathValue("id") {
		fail(w, http.StatusBadRequest, "job ID does not match request")
		return
	}
	rec := Plan{Job: cloneJob(req.Job), Problems: checkJob(req.Job, s.opts.Nodes, s.opts.MHzPerCPU)}
	s.mu.Lock()
	if len(rec.Problems) > 0 {
		s.plan.plans = append(s.plan.plans, rec)
		s.mu.Unlock()
		fail(w, http.StatusBadRequest, "job validation failed: %s", strings.Join(rec.Problems, "; "))
		return
	}
	_, metric := s.placement(req.Job, true)
	if metric != nil {
		rec.Failed = map[string]*api.AllocationMetric{jobspecs.NomadGroup: metric}
	}
	s.plan.plans = append(s.plan.plans, rec)
	resp := api.JobPlanResponse{FailedTGAllocs: rec.Failed, Warnings: s.oversubWarnings(req.Job)}
	if cur := s.jobs[*req.Job.ID]; cur != nil {
		resp.JobModifyIndex = *cur.JobModifyIndex
	}
	s.mu.Unlock()
	s.reply(w, resp)
}

// oversubWarnings are Nomad's warnings for a job whose memory_max the
// scheduler will ignore. The caller holds mu.
func (s *Server) oversubWarnings(job *api.Job) string {
	if s.plan.oversub {
		return ""
	}
	var out []string
	for _, g := range job.TaskGroups {
		for _, t := range g.Tasks {
			if t.Resources != nil && num(t.Resources.MemoryMaxMB) != 0 {
				out = append(out, fmt.Sprintf("Memory oversubscription is not enabled; Task \"%s.%s\" memory_max value will be ignored.", str(g.Name), t.Name))
			}
		}
	}
	return strings.Join(out, "\n")
}

// schedulerConfig answers GET /v1/operator/scheduler/configuration.
func (s *Server) schedulerConfig(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	on := s.plan.oversub
	s.mu.Unlock()
	s.reply(w, api.SchedulerConfigurationResponse{SchedulerConfig: &api.SchedulerConfiguration{
		SchedulerAlgorithm: api.SchedulerAlgorithmBinpack, MemoryOversubscriptionEnabled: on,
	}})
}

// placement picks the client for a new allocation of job, or returns why
// none can take it, as Nomad's scheduler reports it. The job's own running
// allocations do not count: a new version replaces them. NoCapacity fails
// placements but not plans (plan is true): it plays room taken between a
// plan and the register after it. The caller holds mu.
func (s *Server) placement(job *api.Job, plan bool) (int, *api.AllocationMetric) {
	if s.noCapacity != "" && !plan {
		return -1, &api.AllocationMetric{
			NodesEvaluated: 1, NodesInPool: 1, NodesExhausted: 1, NodesAvailable: map[string]int{"dc1": 1},
			DimensionExhausted: map[string]int{s.noCapacity: 1},
		}
	}
	if len(s.plan.clients) == 0 {
		return -1, nil
	}
	used := make([][2]int, len(s.plan.clients))
	for id, a := range s.allocs {
		c, ok := s.plan.placedOn[id]
		if !ok || a.JobID == *job.ID || a.DesiredStatus != api.AllocDesiredStatusRun ||
			(a.ClientStatus != api.AllocClientStatusPending && a.ClientStatus != api.AllocClientStatusRunning) {
			continue
		}
		cpu, mem := groupReserve(a.Job)
		used[c][0] += cpu
		used[c][1] += mem
	}
	cpu, mem := groupReserve(job)
	m := &api.AllocationMetric{NodesEvaluated: len(s.plan.clients), NodesInPool: len(s.plan.clients),
		NodesAvailable: map[string]int{"dc1": len(s.plan.clients)}, DimensionExhausted: map[string]int{}}
	for i, c := range s.plan.clients {
		// Nomad looks at cpu before memory, and names the first that
		// does not fit.
		switch {
		case used[i][0]+cpu > c.CPU:
			m.DimensionExhausted["cpu"]++
		case used[i][1]+mem > c.MemoryMB:
			m.DimensionExhausted["memory"]++
		default:
			return i, nil
		}
		m.NodesExhausted++
	}
	return -1, m
}

// groupReserve is what the job's one task group reserves, the way Nomad's
// scheduler adds up a group's tasks by lifecycle: the main tasks and the
// poststart ones run together; a prestart task that ends, and the
// poststop one, each run alone, so the group needs the most of those
// phases; prestart sidecars run throughout.
func groupReserve(job *api.Job) (cpu, mem int) {
	if job == nil || len(job.TaskGroups) == 0 {
		return 0, 0
	}
	var main, ephemeral, sidecar, poststop [2]int
	for _, t := range job.TaskGroups[0].Tasks {
		if t.Resources == nil {
			continue
		}
		r := [2]int{num(t.Resources.CPU), num(t.Resources.MemoryMB)}
		lc := t.Lifecycle
		switch {
		case lc == nil, lc.Hook == api.TaskLifecycleHookPoststart:
			main[0] += r[0]
			main[1] += r[1]
		case lc.Hook == api.TaskLifecycleHookPrestart && lc.Sidecar:
			sidecar[0] += r[0]
			sidecar[1] += r[1]
		case lc.Hook == api.TaskLifecycleHookPrestart:
			ephemeral = [2]int{max(ephemeral[0], r[0]), max(ephemeral[1], r[1])}
		case lc.Hook == api.TaskLifecycleHookPoststop:
			poststop = [2]int{max(poststop[0], r[0]), max(poststop[1], r[1])}
		}
	}
	for i := range main {
		main[i] = sidecar[i] + max(main[i], ephemeral[i], poststop[i])
	}
	return main[0], main[1]
}

// checkResources checks what a node task reserves and is held to: some
// CPU and memory reserved, a memory_max no less than the memory reserved,
// no hard CPU limit from the driver (it would be the reserve) and instead
// the limit for the lab's agent, no less than the reserve.
func checkResources(t *api.Task, mhzPerCPU int, bad func(string, ...any)) {
	r := t.Resources
	if r == nil || num(r.CPU) <= 0 || num(r.MemoryMB) <= 0 {
		bad("node %s has no cpu and memory resources", t.Name)
		return
	}
	if memMax := num(r.MemoryMaxMB); r.MemoryMaxMB != nil && memMax < num(r.MemoryMB) {
		bad("node %s memory_max %d is less than the memory %d it reserves", t.Name, memMax, num(r.MemoryMB))
	}
	if hard, _ := t.Config["cpu_hard_limit"].(bool); hard {
		bad("node %s sets cpu_hard_limit: the driver would hold it to the %d MHz it reserves", t.Name, num(r.CPU))
	}
	limit, ok := strMap(t.Config["labels"])[lab.LabelCPULimit]
	if !ok {
		bad("node %s has no %s label: nothing would hold it to a CPU limit", t.Name, lab.LabelCPULimit)
		return
	}
	cpus, err := jobspecs.ParseCPUs(limit)
	if err != nil {
		bad("node %s: %v", t.Name, err)
		return
	}
	if reserve := float64(num(r.CPU)) / float64(mhzPerCPU); cpus+1e-9 < reserve {
		bad("node %s is limited to %g cpus but reserves %g", t.Name, cpus, reserve)
	}
}

// driverNode sets a node's resources as Nomad's docker driver would create
// its container: the memory it reserves as the soft limit and memory_max
// (when the scheduler honours it) as the hard one; a CPU weight for what it
// reserves, and a hard CPU limit only with cpu_hard_limit, the reserve.
func driverNode(n *lab.Node, t *api.Task, mhzPerCPU int, oversub bool) {
	r := t.Resources
	n.ReserveMemoryMB = num(r.MemoryMB)
	n.MemoryMB = num(r.MemoryMB)
	if oversub && num(r.MemoryMaxMB) > n.MemoryMB {
		n.MemoryMB = num(r.MemoryMaxMB)
	}
	n.ReserveCPUs = float64(num(r.CPU)) / float64(mhzPerCPU)
	n.CPUs = 0
	if hard, _ := t.Config["cpu_hard_limit"].(bool); hard {
		n.CPUs = n.ReserveCPUs
	}
	if limit, ok := strMap(t.Config["labels"])[lab.LabelCPULimit]; ok {
		n.Labels[lab.LabelCPULimit] = limit
	}
}

// holdLimits does for an allocation's running nodes what its labnet-watch
// does on a client as soon as they run: it runs the lab's agent to hold
// each to its CPU limit (`labnet limit`). Without an agent the nodes keep
// no CPU limit, as on a client whose labnet-watch does not run.
func (s *Server) holdLimits(ctx context.Context, a *allocation) {
	if s.opts.Agent == nil {
		return
	}
	var out bytes.Buffer
	code := s.opts.Agent(ctx, []string{"labnet", "limit", "-session", a.session, "-alloc", a.ID}, strings.NewReader(""), &out, &out)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.plan.agentLog == nil {
		s.plan.agentLog = map[string]string{}
	}
	s.plan.agentLog[a.ID] += fmt.Sprintf("%sexit %d\n", out.String(), code)
}
