package nomadfake

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// teardownTimeout bounds removing one lab's containers and network.
const teardownTimeout = 2 * time.Minute

// labFromJob reads the lab back out of a registered job, the way the docker
// driver would read each task: what the fake's client then runs is what
// the job says, not what examlab meant. A segmented lab's segments and
// each node's interfaces, routes, files and setup come from the plan its
// labnet-up is given, as on a real client.
func labFromJob(job *api.Job, mhzPerCPU int, oversub bool) lab.Spec {
	session := job.Meta[jobspecs.MetaSession]
	l := lab.Spec{
		SessionID: session,
		ExamID:    job.Meta[jobspecs.MetaExam],
		Candidate: job.Meta[jobspecs.MetaCandidate],
		Network:   lab.NetworkName(session),
	}
	// CheckJob has refused a segmented job whose plan does not decode.
	plan, err := jobPlan(job)
	if err == nil {
		l.Segments = plan.Segments
	}
	for _, t := range job.TaskGroups[0].Tasks {
		if t.Lifecycle != nil {
			continue
		}
		c := t.Config
		var caps []string
		for _, cp := range strList(c["cap_add"]) {
			caps = append(caps, strings.ToUpper(cp))
		}
		labels := strMap(c["labels"])
		role := labels[lab.LabelRole]
		image, _ := c["image"].(string)
		hostname, _ := c["hostname"].(string)
		node := lab.Node{
			Name:      t.Name,
			Role:      role,
			Container: lab.ContainerName(session, t.Name),
			Hostname:  hostname,
			Image:     image,
			PidsLimit: number(c["pids_limit"]),
			CapAdd:    caps,
			Sysctls:   strMap(c["sysctl"]),
			// The one-host runtime's labels, so its exec, logs and destroy
			// find the containers.
			Labels: map[string]string{
				lab.LabelManaged: "true",
				lab.LabelSession: session,
				lab.LabelNode:    t.Name,
				lab.LabelRole:    role,
				lab.LabelExam:    l.ExamID,
			},
		}
		driverNode(&node, t, mhzPerCPU, oversub)
		if p, ok := plan.Node(t.Name); ok && err == nil {
			node.Interfaces, node.Routes, node.Address = p.Interfaces, p.Routes, p.Address
			node.Files, node.Setup, node.SetupTimeout = p.Files, p.Setup, p.SetupTimeout
		}
		l.Nodes = append(l.Nodes, node)
	}
	return l
}

func event(typ, msg string) *api.TaskEvent {
	return &api.TaskEvent{Type: typ, Time: time.Now().UnixNano(), DisplayMessage: msg, Details: map[string]string{}}
}

// setTask moves a task to a state and appends events. The caller holds mu.
func setTask(a *allocation, task, state string, failed bool, events ...*api.TaskEvent) {
	ts := a.TaskStates[task]
	if ts == nil {
		ts = &api.TaskState{}
		a.TaskStates[task] = ts
	}
	now := time.Now()
	if state == "running" && ts.State != "running" {
		ts.StartedAt = now
	}
	if state == "dead" && ts.State != "dead" {
		ts.FinishedAt = now
	}
	ts.State, ts.Failed = state, failed
	ts.Events = append(ts.Events, events...)
}

// schedule plays the scheduler for one evaluation: a placement failure
// when capacity is switched off, else one allocation on the fake client,
// which it then runs.
func (s *Server) schedule(evalID string, job *api.Job) {
	s.mu.Lock()
	ev := s.evals[evalID]
	client, metric := s.placement(job, false)
	if metric != nil {
		idx := s.bump()
		ev.Status, ev.ModifyIndex = api.EvalStatusComplete, idx
		ev.FailedTGAllocs = map[string]*api.AllocationMetric{jobspecs.NomadGroup: metric}
		blocked := &api.Evaluation{ID: newID(), JobID: ev.JobID, Status: api.EvalStatusBlocked, TriggeredBy: "queued-allocs",
			Type: ev.Type, PreviousEval: ev.ID, CreateIndex: idx, ModifyIndex: idx}
		ev.BlockedEval = blocked.ID
		s.evals[blocked.ID] = blocked
		s.mu.Unlock()
		return
	}
	idx := s.bump()
	id := *job.ID
	a := &allocation{
		Allocation: &api.Allocation{
			ID: newID(), EvalID: evalID, Name: id + "." + jobspecs.NomadGroup + "[0]",
			NodeID: s.nodeID, NodeName: "fake-client", JobID: id, Job: job, TaskGroup: jobspecs.NomadGroup,
			DesiredStatus: api.AllocDesiredStatusRun, ClientStatus: api.AllocClientStatusPending,
			TaskStates: map[string]*api.TaskState{}, CreateIndex: idx, ModifyIndex: idx,
			CreateTime: time.Now().UnixNano(), ModifyTime: time.Now().UnixNano(),
		},
		session: job.Meta[jobspecs.MetaSession],
		lab:     labFromJob(job, s.opts.MHzPerCPU, s.plan.oversub),
		stderr:  map[string]string{},
		files:   map[string]bool{},
		placed:  make(chan struct{}),
	}
	for _, t := range job.TaskGroups[0].Tasks {
		setTask(a, t.Name, "pending", false, event(api.TaskReceived, "Task received by client"))
	}
	s.allocs[a.ID] = a
	s.plan.placedOn[a.ID] = client
	ev.Status, ev.ModifyIndex = api.EvalStatusComplete, idx
	failures := make(map[string]failureSpec, len(s.failures))
	for k, v := range s.failures {
		failures[k] = v
	}
	s.mu.Unlock()
	defer close(a.placed)
	s.place(a, failures)
}

// place runs an allocation as a Nomad client would: a flat lab's labnet
// prestart task, then every node task, each a real container, then a
// segmented lab's labnet poststart task.
func (s *Server) place(a *allocation, failures map[string]failureSpec) {
	if a.lab.Segmented() {
		s.placeSegmented(a, failures)
		return
	}
	ctx := s.ctx
	netw, err := s.opts.Docker.LabnetUp(ctx, a.session, a.lab.ExamID)
	s.mu.Lock()
	if err != nil {
		setTask(a, jobspecs.NomadLabnetUp, "dead", true, event(api.TaskStarted, "Task started by client"),
			event(api.TaskTerminated, "Exit Code: 1, Exit Message: "+err.Error()),
			event(api.TaskNotRestarting, "Exceeded allowed attempts 2 in interval 5m0s and mode is \"fail\""))
		a.ClientStatus, a.ClientDescription = api.AllocClientStatusFailed, "Failed tasks"
		a.ModifyIndex = s.bump()
		s.mu.Unlock()
		return
	}
	setTask(a, jobspecs.NomadLabnetUp, "dead", false, event(api.TaskStarted, "Task started by client"),
		event(api.TaskTerminated, "Exit Code: 0, network "+netw.Name+" "+netw.Subnet))
	a.ModifyIndex = s.bump()
	run := a.lab
	run.Nodes = nil
	for _, n := range a.lab.Nodes {
		if _, bad := failures[n.Name]; !bad {
			run.Nodes = append(run.Nodes, n)
		}
	}
	s.mu.Unlock()

	err = s.opts.Docker.Provision(ctx, run)
	if err == nil {
		// labnet-watch holds the nodes to their CPU limits as soon as they
		// run; the fake does it before it reports them running.
		s.holdLimits(ctx, a)
	}

	s.mu.Lock()
	if a.DesiredStatus != api.AllocDesiredStatusRun {
		s.mu.Unlock()
		return // stopped meanwhile; teardown takes it from here
	}
	if s.settle(a, run, failures, err) {
		s.mu.Unlock()
		// As on a client, a failed task takes its siblings down with it,
		// and the poststop task runs.
		s.stopAlloc(a)
		return
	}
	// labnet-watch, the lab's agent, once the nodes run.
	setTask(a, jobspecs.NomadLabnetWatch, "running", false, event(api.TaskStarted, "Task started by client"))
	a.stderr[jobspecs.NomadLabnetWatch] = ""
	a.ModifyIndex = s.bump()
	s.mu.Unlock()
}

// placeSegmented runs a segmented lab's allocation: the node containers,
// with no network, then labnet-up, which wires and prepares them. The
// docker runtime's Provision does both, as labnet up does on a client (the
// same PrepareLab); its error is told apart by what failed: a node's
// container, or the wiring and preparing that labnet-up does.
func (s *Server) placeSegmented(a *allocation, failures map[string]failureSpec) {
	ctx := s.ctx
	run := a.lab
	run.Nodes = nil
	for _, n := range a.lab.Nodes {
		if _, bad := failures[n.Name]; !bad {
			run.Nodes = append(run.Nodes, n)
		}
	}
	err := s.opts.Docker.Provision(ctx, run)
	wiring := err != nil && s.nodesRunning(ctx, run, err)
	if err == nil {
		s.holdLimits(ctx, a)
	}

	s.mu.Lock()
	if a.DesiredStatus != api.AllocDesiredStatusRun {
		s.mu.Unlock()
		return // stopped meanwhile; teardown takes it from here
	}
	if !wiring {
		if s.settle(a, run, failures, err) {
			s.mu.Unlock()
			s.stopAlloc(a)
			return
		}
		setTask(a, jobspecs.NomadLabnetUp, "running", false, event(api.TaskStarted, "Task started by client"))
		// labnet-watch, the lab's agent, a prestart sidecar: it runs
		// from before the nodes (the fake's wiring is the docker
		// runtime's, done above, so it only keeps running).
		setTask(a, jobspecs.NomadLabnetWatch, "running", false, event(api.TaskStarted, "Task started by client"))
		a.stderr[jobspecs.NomadLabnetWatch] = ""
		a.ModifyIndex = s.bump()
		slow := s.slowLabnet
		s.mu.Unlock()
		// The nodes run, unwired, while labnet-up works.
		if sleep(ctx, slow) != nil {
			return
		}
		// The agent leaves the state once the lab is wired; labnet-up
		// exits on it, later.
		s.mu.Lock()
		a.files[jobspecs.NomadLabnetStateFile] = true
		exit := s.labnetExit
		s.mu.Unlock()
		if !s.stillRunning(ctx, a, exit) {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if a.DesiredStatus == api.AllocDesiredStatusRun {
			setTask(a, jobspecs.NomadLabnetUp, "dead", false, event(api.TaskTerminated, "Exit Code: 0"))
			a.stderr[jobspecs.NomadLabnetUp] = ""
			a.ModifyIndex = s.bump()
		}
		return
	}
	// As raw_exec reports it: the exit code, and the reason in the task's
	// stderr, one line, as examlab prints it.
	reason := strings.TrimPrefix(err.Error(), "provision lab "+a.session+": ")
	a.stderr[jobspecs.NomadLabnetUp] = "examlab: labnet up " + a.session + ": " + strings.ReplaceAll(reason, "\n", " | ") + "\n"
	for _, n := range a.lab.Nodes {
		setTask(a, n.Name, "running", false, event(api.TaskStarted, "Task started by client"))
	}
	a.ClientStatus = api.AllocClientStatusRunning
	setTask(a, jobspecs.NomadLabnetUp, "dead", true, event(api.TaskStarted, "Task started by client"),
		event(api.TaskTerminated, "Exit Code: 1"), event(api.TaskNotRestarting, "Policy allows no restarts"))
	for _, n := range a.lab.Nodes {
		setTask(a, n.Name, "dead", false, event(api.TaskSiblingFailed, fmt.Sprintf("Task's sibling %q failed", jobspecs.NomadLabnetUp)))
	}
	a.ClientStatus, a.ClientDescription = api.AllocClientStatusFailed, "Failed tasks"
	a.ModifyIndex = s.bump()
	s.mu.Unlock()
	s.stopAlloc(a)
}

// nodesRunning tells, after Provision of a segmented lab failed with err,
// whether its node containers had come up, so that what failed was the
// wiring or a setup (labnet-up's part) rather than a node's container.
func (s *Server) nodesRunning(ctx context.Context, run lab.Spec, err error) bool {
	var se *docker.SetupError
	if errors.As(err, &se) {
		return true // its node was removed, after it ran
	}
	st, serr := s.opts.Docker.Status(ctx, run)
	return serr == nil && lab.AllRunning(st)
}

// settle records the outcome of starting the nodes and reports whether the
// allocation failed. The caller holds mu.
func (s *Server) settle(a *allocation, run lab.Spec, failures map[string]failureSpec, err error) bool {
	if err != nil {
		for _, n := range a.lab.Nodes {
			setTask(a, n.Name, "dead", true, event(api.TaskDriverFailure, err.Error()),
				event(api.TaskNotRestarting, "Error was unrecoverable"))
		}
		a.ClientStatus, a.ClientDescription = api.AllocClientStatusFailed, "Failed tasks"
		a.ModifyIndex = s.bump()
		return true
	}
	var failed string
	for _, n := range a.lab.Nodes {
		f, bad := failures[n.Name]
		switch {
		case !bad:
			setTask(a, n.Name, "running", false, event(api.TaskSetup, "Building Task Directory"), event(api.TaskStarted, "Task started by client"))
		case f.kind == OOMKilled:
			failed = n.Name
			term := event(api.TaskTerminated, `Exit Code: 137, Exit Message: "OOM Killed"`)
			term.Details["oom_killed"], term.Details["exit_code"] = "true", "137"
			term.ExitCode = 137
			setTask(a, n.Name, "dead", true, event(api.TaskStarted, "Task started by client"), term,
				event(api.TaskNotRestarting, `Exceeded allowed attempts 2 in interval 5m0s and mode is "fail"`))
		default:
			failed = n.Name
			setTask(a, n.Name, "dead", true, event(api.TaskDriverFailure, f.message),
				event(api.TaskNotRestarting, "Error was unrecoverable"))
		}
	}
	if failed == "" {
		a.ClientStatus = api.AllocClientStatusRunning
		a.ModifyIndex = s.bump()
		return false
	}
	for _, n := range run.Nodes {
		setTask(a, n.Name, "dead", false, event(api.TaskSiblingFailed, fmt.Sprintf("Task's sibling %q failed", failed)))
	}
	a.ClientStatus, a.ClientDescription = api.AllocClientStatusFailed, "Failed tasks"
	a.ModifyIndex = s.bump()
	return true
}

// CrashTask makes a node task of the session's running allocation crash
// for good, as a node does that keeps dying past the lab's restart policy:
// the task fails, its siblings are killed, the allocation fails and its
// containers and network are removed. Nothing replaces the allocation
// until a provision asks for it. CrashTask returns once all that is done.
func (s *Server) CrashTask(sessionID, task string) error {
	s.mu.Lock()
	var a *allocation
	for _, x := range s.allocs {
		if x.session == sessionID && x.DesiredStatus == api.AllocDesiredStatusRun && x.ClientStatus == api.AllocClientStatusRunning {
			a = x
		}
	}
	if a == nil {
		s.mu.Unlock()
		return fmt.Errorf("nomadfake: session %s has no running allocation", sessionID)
	}
	if _, ok := a.lab.Node(task); !ok {
		s.mu.Unlock()
		return fmt.Errorf("nomadfake: %q is not a node of session %s", task, sessionID)
	}
	term := event(api.TaskTerminated, "Exit Code: 137, Exit Message: \"Docker container exited with non-zero exit code: 137\"")
	term.Details["exit_code"], term.ExitCode = "137", 137
	setTask(a, task, "dead", true, event(api.TaskRestarting, "Task restarting in 5s"), event(api.TaskStarted, "Task started by client"),
		term, event(api.TaskNotRestarting, `Exceeded allowed attempts 2 in interval 5m0s and mode is "fail"`))
	for _, n := range a.lab.Nodes {
		if n.Name != task {
			setTask(a, n.Name, "dead", false, event(api.TaskSiblingFailed, fmt.Sprintf("Task's sibling %q failed", task)))
		}
	}
	a.ClientStatus, a.ClientDescription = api.AllocClientStatusFailed, "Failed tasks"
	a.ModifyIndex = s.bump()
	s.mu.Unlock()
	s.stopAlloc(a)
	return nil
}

// teardown stops an allocation: its containers go, then the poststop task
// removes the session network, then the allocation is complete.
func (s *Server) teardown(a *allocation) {
	if a.placed != nil {
		<-a.placed // never race the placement's container creation
	}
	s.stopAlloc(a)
}

// stopAlloc removes an allocation's containers and network once.
func (s *Server) stopAlloc(a *allocation) {
	s.mu.Lock()
	if a.torn {
		s.mu.Unlock()
		return
	}
	a.torn = true
	s.mu.Unlock()
	err := s.teardownDocker(context.Background(), a)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range a.lab.Nodes {
		if ts := a.TaskStates[n.Name]; ts != nil && ts.State != "dead" {
			setTask(a, n.Name, "dead", false, event(api.TaskKilling, "Sent interrupt"), event(api.TaskKilled, "Task successfully killed"))
		}
	}
	for _, task := range []string{jobspecs.NomadLabnetUp, jobspecs.NomadLabnetWatch} {
		// A poststart task that never started, or a sidecar: the
		// allocation has ended.
		if ts := a.TaskStates[task]; ts != nil && ts.State != "dead" {
			setTask(a, task, "dead", false, event(api.TaskKilled, "Task successfully killed"))
		}
	}
	down := event(api.TaskTerminated, "Exit Code: 0")
	failedDown := err != nil
	if failedDown {
		down = event(api.TaskTerminated, "Exit Code: 1, Exit Message: "+err.Error())
	}
	setTask(a, jobspecs.NomadLabnetDown, "dead", failedDown, event(api.TaskStarted, "Task started by client"), down)
	if a.ClientStatus != api.AllocClientStatusFailed {
		a.ClientStatus = api.AllocClientStatusComplete
	}
	a.ModifyIndex = s.bump()
}

// teardownDocker removes the containers of the allocation's lab, then, as
// labnet down does, its switch or its network.
func (s *Server) teardownDocker(ctx context.Context, a *allocation) error {
	ctx, cancel := context.WithTimeout(ctx, teardownTimeout)
	defer cancel()
	if err := s.opts.Docker.Destroy(ctx, a.session); err != nil {
		return err
	}
	return errors.Join(s.opts.Docker.RemoveSwitch(ctx, a.session), s.opts.Docker.LabnetDown(ctx, a.session, teardownTimeout/2))
}

// sleep waits d, or until ctx ends (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stillRunning waits d while the allocation is to run, and reports whether
// it still is: a stop (or the fake closing) cuts the wait short.
func (s *Server) stillRunning(ctx context.Context, a *allocation, d time.Duration) bool {
	until := time.Now().Add(d)
	for {
		s.mu.Lock()
		run := a.DesiredStatus == api.AllocDesiredStatusRun
		s.mu.Unlock()
		left := time.Until(until)
		if !run || left <= 0 {
			return run
		}
		if sleep(ctx, min(left, 50*time.Millisecond)) != nil {
			return false
		}
	}
}
