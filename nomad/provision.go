package nomad

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// Provision registers the session's job, unless it is already there, and
// returns once all of the lab's nodes are running. A retried provision
// never creates a second job and never overwrites a newer one: every
// register is conditioned on the job modify index it was decided on. An
// agent it cannot reach is lab.ErrUnavailable.
//
// Before it registers, it plans the job: when no client has room for the
// lab, it registers nothing and returns lab.ErrNoCapacity with the
// scheduler's reasons. A job already registered whose lab the scheduler
// could not place (room taken meanwhile) is reported the same way.
func (r *Runtime) Provision(ctx context.Context, spec lab.Spec) (err error) {
	defer func() { err = unavailable(ctx, err) }()
	if err := r.reachable(ctx); err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	if err := r.CheckScheduler(ctx); err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	job, err := r.Job(spec)
	if err != nil {
		return fmt.Errorf("provision lab: %w", err)
	}
	w, err := r.register(ctx, job, spec.SessionID)
	if err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	if w.evalID == "" {
		if w, err = r.replaceFailed(ctx, *job.ID); err != nil {
			return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
		}
	}
	if err := r.waitRunning(ctx, *job.ID, w, spec); err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	return nil
}

// registerAttempts bounds how often register looks again after its
// conditional write lost a race.
const registerAttempts = 3

// written is what one of Provision's writes started: the evaluation it
// created, and the cluster index it was made at, which every allocation it
// leads to is newer than. Zero when Provision wrote nothing.
type written struct {
	evalID string
	index  uint64
}

// register makes sure the job is registered and returns what its own write
// started.
//
//   - Absent: register only if still absent (EnforceIndex with index 0).
//   - Present with the same spec digest: leave it.
//   - Present but stopped, or rendered from an older spec: replace it, but
//     only the version we looked at (EnforceIndex with its JobModifyIndex).
//   - Rendered by a newer examlab: leave it.
//
// When a conditional write is refused, someone registered in between: that
// job is at least as new as ours, so it is adopted, not overwritten.
func (r *Runtime) register(ctx context.Context, job *api.Job, sessionID string) (written, error) {
	id := *job.ID
	for attempt := 0; attempt < registerAttempts; attempt++ {
		cur, _, err := r.client.Jobs().Info(id, r.query(ctx))
		if isNotFound(err) {
			if err := r.placeable(ctx, job); err != nil {
				return written{}, err
			}
			resp, wm, err := r.client.Jobs().RegisterOpts(job, &api.RegisterOptions{EnforceIndex: true, ModifyIndex: 0}, r.write(ctx))
			if isIndexConflict(err) {
				continue // registered by someone else meanwhile: look at theirs
			}
			if err != nil {
				return written{}, fmt.Errorf("register job %s: %w", id, err)
			}
			return written{resp.EvalID, writeIndex(resp, wm)}, nil
		}
		if err != nil {
			return written{}, fmt.Errorf("look up job %s: %w", id, err)
		}
		if s := cur.Meta[jobspecs.MetaSession]; s != sessionID {
			return written{}, fmt.Errorf("job %s of session %q, not %q: %w", id, s, sessionID, ErrForeignJob)
		}
		stopped := cur.Stop != nil && *cur.Stop
		if !stopped && (cur.Meta[jobspecs.MetaSpec] == job.Meta[jobspecs.MetaSpec] || renderedBy(cur) > jobspecs.NomadRenderVersion) {
			return written{}, nil
		}
		var index uint64
		if cur.JobModifyIndex != nil {
			index = *cur.JobModifyIndex
		}
		// The plan counts the room the version it replaces frees.
		if err := r.placeable(ctx, job); err != nil {
			return written{}, err
		}
		resp, wm, err := r.client.Jobs().RegisterOpts(job, &api.RegisterOptions{EnforceIndex: true, ModifyIndex: index}, r.write(ctx))
		if isIndexConflict(err) {
			latest, _, err := r.client.Jobs().Info(id, r.query(ctx))
			if isNotFound(err) {
				continue // purged meanwhile: start over
			}
			if err != nil {
				return written{}, fmt.Errorf("look up job %s: %w", id, err)
			}
			if latest.Stop != nil && *latest.Stop {
				return written{}, fmt.Errorf("job %s was stopped while this provision updated it", id)
			}
			return written{}, nil
		}
		if err != nil {
			return written{}, fmt.Errorf("register job %s at index %d: %w", id, index, err)
		}
		return written{resp.EvalID, writeIndex(resp, wm)}, nil
	}
	return written{}, fmt.Errorf("register job %s: it kept changing under %d attempts", id, registerAttempts)
}

// replaceFailed asks for a fresh placement of a lab whose allocation has
// failed. The job's policy never reschedules a lab by itself (see
// jobspecs.NomadJob); a new provision attempt is the decision to start the
// candidate's lab over, so it forces one.
func (r *Runtime) replaceFailed(ctx context.Context, jobID string) (written, error) {
	stubs, _, err := r.client.Jobs().Allocations(jobID, true, r.query(ctx))
	if err != nil {
		return written{}, fmt.Errorf("list allocations of %s: %w", jobID, err)
	}
	cur := currentAlloc(stubs)
	if cur == nil || (cur.ClientStatus != api.AllocClientStatusFailed && cur.ClientStatus != api.AllocClientStatusLost) {
		return written{}, nil
	}
	evalID, wm, err := r.client.Jobs().EvaluateWithOpts(jobID, api.EvalOptions{ForceReschedule: true}, r.write(ctx))
	if err != nil {
		return written{}, fmt.Errorf("replace failed allocation %s of %s: %w", shortID(cur.ID), jobID, err)
	}
	return written{evalID, wm.LastIndex}, nil
}

// renderedBy is the render version in a job's meta, 0 if unknown.
func renderedBy(job *api.Job) int {
	n, _ := strconv.Atoi(job.Meta[jobspecs.MetaRender])
	return n
}

// waitRunning watches the job's allocations with blocking queries until
// every node of spec runs (and, in a segmented lab, the lab's agent has
// wired and prepared them), and fails as soon as the lab cannot come up: no client
// could place it, labnet-up failed, or a node's task died.
func (r *Runtime) waitRunning(ctx context.Context, jobID string, w written, spec lab.Spec) error {
	var index uint64
	q := r.blocking(ctx, index)
	for {
		stubs, meta, err := r.client.Jobs().Allocations(jobID, true, q)
		if err != nil {
			return fmt.Errorf("wait for job %s: %w", jobID, err)
		}
		// Only what our write led to counts: the allocation of a version we
		// replaced, or the failed one we asked to replace, is not the lab.
		fresh := stubs[:0]
		for _, a := range stubs {
			if a.CreateIndex > w.index {
				fresh = append(fresh, a)
			}
		}
		if meta.LastIndex > index {
			index = meta.LastIndex
		}
		q = r.blocking(ctx, index)
		if a := currentAlloc(fresh); a != nil {
			if labnetFailed(a) {
				return r.labnetError(ctx, a, spec)
			}
			p, err := allocProgress(a, spec)
			if err != nil || p == labUp {
				return err
			}
			if p == labWiring {
				if r.stateLeft(ctx, a) {
					return nil
				}
				// Nothing in the allocation changes when the agent
				// leaves its state: look again soon.
				q.WaitTime = statePoll
			}
		} else {
			// Nothing placed yet. Wait for the scheduler's verdict rather
			// than for allocations that may never come.
			if err := r.waitEvaluated(ctx, jobID, w.evalID); err != nil {
				return err
			}
		}
	}
}

// waitEvaluated blocks until the job's newest evaluation is done and
// returns lab.ErrNoCapacity, with the scheduler's reasons, if it could not
// place the lab: the job stays, its evaluation blocked, and Nomad places
// the lab once a client has room; a later provision finds it.
func (r *Runtime) waitEvaluated(ctx context.Context, jobID, evalID string) error {
	if evalID == "" {
		evals, _, err := r.client.Jobs().Evaluations(jobID, r.query(ctx))
		if err != nil {
			return fmt.Errorf("list evaluations of %s: %w", jobID, err)
		}
		// The newest attempt to place the job; a blocked evaluation only
		// queues the one before it for capacity, which holds the verdict.
		ev := newestEval(evals, func(e *api.Evaluation) bool { return e.Status != api.EvalStatusBlocked })
		if ev == nil {
			return fmt.Errorf("job %s has no allocation and no evaluation", jobID)
		}
		evalID = ev.ID
	}
	var index uint64
	for {
		ev, meta, err := r.client.Evaluations().Info(evalID, r.blocking(ctx, index))
		if err != nil {
			return fmt.Errorf("wait for evaluation %s: %w", shortID(evalID), err)
		}
		if msg := placementFailure(ev); msg != "" {
			return fmt.Errorf("job %s: %w: %s", jobID, lab.ErrNoCapacity, msg)
		}
		switch ev.Status {
		case api.EvalStatusComplete, api.EvalStatusBlocked:
			return nil
		case "failed", "canceled":
			return fmt.Errorf("evaluation %s %s: %s", shortID(evalID), ev.Status, ev.StatusDescription)
		}
		if meta.LastIndex > index {
			index = meta.LastIndex
		}
	}
}

func newestEval(evals []*api.Evaluation, keep func(*api.Evaluation) bool) *api.Evaluation {
	var best *api.Evaluation
	for _, e := range evals {
		if !keep(e) {
			continue
		}
		if best == nil || e.CreateIndex > best.CreateIndex {
			best = e
		}
	}
	return best
}

// progress is how far an allocation of the lab has come.
type progress int

const (
	// labComing: nodes, or the lab's agent, are still starting.
	labComing progress = iota
	// labWiring: every node and the agent run; in a segmented lab the
	// agent is still wiring and preparing them.
	labWiring
	// labUp: the lab is ready.
	labUp
)

// statePoll is how often Provision looks for the lab's agent's state once
// only the wiring is left.
const statePoll = 100 * time.Millisecond

// stateLeft reports whether the lab's agent has left its state in the
// allocation: the lab is wired and prepared. labnet-up exits on the same
// file, but its exit reaches the servers about a second later. Any error
// (the file not there yet, a client slow to answer) is "not yet": the
// watch on the allocation reports whatever goes wrong.
func (r *Runtime) stateLeft(ctx context.Context, a *api.AllocationListStub) bool {
	sctx, cancel := context.WithTimeout(ctx, statePoll*5)
	defer cancel()
	fi, _, err := r.client.AllocFS().Stat(&api.Allocation{ID: a.ID}, jobspecs.NomadLabnetStateFile, r.query(sctx))
	return err == nil && fi != nil && !fi.IsDir
}

// allocProgress judges one allocation of the lab whose labnet-up has not
// failed: up when every node and the lab's agent (labnet-watch) run and,
// in a segmented lab, labnet-up has finished wiring them (Provision also
// reads the agent's state meanwhile: see stateLeft); an error once it can
// no longer get there by itself.
func allocProgress(a *api.AllocationListStub, spec lab.Spec) (progress, error) {
	var errs []error
	running := 0
	for _, n := range spec.Nodes {
		ts := a.TaskStates[n.Name]
		switch {
		case ts == nil:
		case ts.State == taskRunning:
			running++
		case ts.State == taskDead:
			errs = append(errs, fmt.Errorf("node %s stopped: %s", n.Name, eventSummary(ts)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return labComing, fmt.Errorf("allocation %s on %s: %w", shortID(a.ID), clientName(a), err)
	}
	if allocTerminal(a.ClientStatus) || a.DesiredStatus != api.AllocDesiredStatusRun {
		return labComing, fmt.Errorf("allocation %s on %s is %s (desired %s): %s", shortID(a.ID), clientName(a),
			a.ClientStatus, a.DesiredStatus, a.ClientDescription)
	}
	// The lab's agent too: a snapshot taken before it runs cannot freeze
	// the lab or read its changes, and falls back to whole filesystems.
	watch := a.TaskStates[jobspecs.NomadLabnetWatch]
	if watch != nil && watch.State == taskDead && watch.Failed {
		return labComing, fmt.Errorf("allocation %s on %s: %s stopped: %s", shortID(a.ID), clientName(a),
			jobspecs.NomadLabnetWatch, eventSummary(watch))
	}
	watching := watch != nil && watch.State == taskRunning
	switch {
	case running < len(spec.Nodes) || !watching:
		return labComing, nil
	case spec.Segmented() && !labnetDone(a):
		return labWiring, nil
	}
	return labUp, nil
}

// labnetDone reports whether the allocation's labnet-up has exited 0.
func labnetDone(a *api.AllocationListStub) bool {
	up := a.TaskStates[jobspecs.NomadLabnetUp]
	return up != nil && up.State == taskDead && !up.Failed
}

// labnetFailed reports whether the allocation's labnet-up has failed for
// good: the lab cannot come up.
func labnetFailed(a *api.AllocationListStub) bool {
	up := a.TaskStates[jobspecs.NomadLabnetUp]
	return up != nil && up.State == taskDead && up.Failed
}

// labnetError is the provision error of an allocation whose labnet-up
// failed.
func (r *Runtime) labnetError(ctx context.Context, a *api.AllocationListStub, spec lab.Spec) error {
	what := "create the session network"
	if spec.Segmented() {
		what = "wire the lab"
	}
	return fmt.Errorf("%s (allocation %s on %s): %s", what, shortID(a.ID), clientName(a), r.labnetReason(ctx, a))
}

// labnetTail bounds how much of labnet-up's stderr is read for its reason.
const labnetTail = 4 << 10

// labnetReason says why labnet-up failed: the last line it wrote to stderr
// (examlab's one-line error, naming the node and what went wrong), else,
// when its log cannot be read, its task events. A raw_exec task's exit
// event carries only the exit code.
func (r *Runtime) labnetReason(ctx context.Context, a *api.AllocationListStub) string {
	events := eventSummary(a.TaskStates[jobspecs.NomadLabnetUp])
	alloc, _, err := r.client.Allocations().Info(a.ID, r.query(ctx))
	if err != nil {
		return events
	}
	tail := &tailWriter{max: labnetTail}
	if err := r.streamLog(ctx, alloc, jobspecs.NomadLabnetUp, "stderr", tail); err != nil {
		return events
	}
	line := lastLine(tail.buf.String())
	if line == "" {
		return events
	}
	return strings.TrimPrefix(line, "examlab: ")
}

// lastLine is the last non-blank line of s, trimmed.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func clientName(a *api.AllocationListStub) string {
	if a.NodeName != "" {
		return a.NodeName
	}
	return shortID(a.NodeID)
}

// maxEvents is how many notable events a node status keeps.
const maxEvents = 5

// writeIndex is the index a register was made at: the job modify index
// Nomad reports for it. Allocations the write leads to are created after
// it; the response's X-Nomad-Index is only a fallback.
func writeIndex(resp *api.JobRegisterResponse, wm *api.WriteMeta) uint64 {
	if resp != nil && resp.JobModifyIndex != 0 {
		return resp.JobModifyIndex
	}
	if wm != nil {
		return wm.LastIndex
	}
	return 0
}

// ResetNode restarts one node's task, which gives it a fresh container from
// its image: whatever the candidate changed in it is discarded. In a
// segmented lab the fresh container has no network until labnet-watch has
// wired and prepared it, which ResetNode waits for.
func (r *Runtime) ResetNode(ctx context.Context, spec lab.Spec, node string) error {
	n, ok := spec.Node(node)
	if !ok {
		return fmt.Errorf("reset node %s of session %s: %w", node, spec.SessionID, lab.ErrNotFound)
	}
	alloc, ts, err := r.nodeAlloc(ctx, spec.SessionID, node)
	if err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	if ts == nil || ts.State != taskRunning {
		return fmt.Errorf("reset node %s: %w", node, lab.ErrNotRunning)
	}
	before := ts.Restarts
	if err := r.client.Allocations().Restart(alloc, node, r.query(ctx)); err != nil {
		return fmt.Errorf("reset node %s: restart task: %w", node, err)
	}
	index := alloc.ModifyIndex
	for {
		a, meta, err := r.client.Allocations().Info(alloc.ID, r.blocking(ctx, index))
		if err != nil {
			return fmt.Errorf("reset node %s: %w", node, err)
		}
		ts := a.TaskStates[node]
		switch {
		case ts == nil:
		case ts.State == taskDead:
			return fmt.Errorf("reset node %s: it did not come back: %s", node, eventSummary(ts))
		case ts.State == taskRunning && ts.Restarts > before:
			if !spec.Segmented() {
				return nil
			}
			if err := r.waitRewired(ctx, spec, n, a); err != nil {
				return fmt.Errorf("reset node %s: %w", node, err)
			}
			return nil
		}
		index = meta.LastIndex
	}
}

// Bounds on waiting for labnet-watch to wire a reset node: it looks for
// replaced containers every two seconds, then wires the node and runs its
// setup, which has its own time limit on top.
const (
	rewireTimeout = time.Minute
	rewirePoll    = 500 * time.Millisecond
)

// waitRewired waits until a restarted node of a segmented lab is wired and
// prepared, as the node itself shows it (lab.ReadyCheck).
func (r *Runtime) waitRewired(ctx context.Context, spec lab.Spec, n lab.Node, a *api.Allocation) error {
	wctx, cancel := context.WithTimeout(ctx, rewireTimeout+n.SetupTimeout)
	defer cancel()
	for {
		_, code, err := lab.Output(wctx, r, spec.SessionID, n.Name, "sh", "-c", lab.ReadyCheck(n))
		if err == nil && code == 0 {
			return nil
		}
		t := time.NewTimer(rewirePoll)
		select {
		case <-wctx.Done():
		case <-t.C:
		}
		t.Stop()
		if wctx.Err() != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%s did not wire it within %s: %s", jobspecs.NomadLabnetWatch, rewireTimeout+n.SetupTimeout,
				r.watchReason(ctx, a, n.Name))
		}
	}
}

// watchReason is labnet-watch's last word on a node: the last line of its
// stderr that names it, or a pointer to its log.
func (r *Runtime) watchReason(ctx context.Context, a *api.Allocation, node string) string {
	tail := &tailWriter{max: labnetTail}
	if err := r.streamLog(ctx, a, jobspecs.NomadLabnetWatch, "stderr", tail); err == nil {
		lines := strings.Split(strings.TrimSpace(tail.buf.String()), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.Contains(lines[i], "node "+node+":") {
				return strings.TrimPrefix(strings.TrimSpace(lines[i]), "examlab: ")
			}
		}
	}
	return "it reported nothing on the node (nomad alloc logs -stderr " + shortID(a.ID) + " " + jobspecs.NomadLabnetWatch + ")"
}
