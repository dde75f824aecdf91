package nomad

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// Provision registers the session's job, unless it is already there, and
// returns once all of the lab's nodes are running. A retried provision
// never creates a second job and never overwrites a newer one: every
// register is conditioned on the job modify index it was decided on.
func (r *Runtime) Provision(ctx context.Context, spec jobspecs.Lab) error {
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
// every node of spec runs, and fails as soon as the lab cannot come up: no
// client could place it, the session network could not be created, or a
// node's task died.
func (r *Runtime) waitRunning(ctx context.Context, jobID string, w written, spec jobspecs.Lab) error {
	var index uint64
	for {
		stubs, meta, err := r.client.Jobs().Allocations(jobID, true, r.blocking(ctx, index))
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
		if a := currentAlloc(fresh); a != nil {
			done, err := allocProgress(a, spec)
			if err != nil || done {
				return err
			}
		} else {
			// Nothing placed yet. Wait for the scheduler's verdict rather
			// than for allocations that may never come.
			if err := r.waitEvaluated(ctx, jobID, w.evalID); err != nil {
				return err
			}
		}
		if meta.LastIndex > index {
			index = meta.LastIndex
		}
	}
}

// waitEvaluated blocks until the job's newest evaluation is done and
// returns ErrNotPlaced, with the scheduler's reasons, if it could not place
// the lab.
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
			return fmt.Errorf("%w: %s", ErrNotPlaced, msg)
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

// allocProgress judges one allocation of the lab: done when every node
// runs; an error once it can no longer get there by itself.
func allocProgress(a *api.AllocationListStub, spec jobspecs.Lab) (bool, error) {
	if up := a.TaskStates[jobspecs.NomadLabnetUp]; up != nil && up.State == taskDead && up.Failed {
		return false, fmt.Errorf("create the session network (allocation %s): %s", shortID(a.ID), eventSummary(up))
	}
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
		return false, fmt.Errorf("allocation %s on %s: %w", shortID(a.ID), clientName(a), err)
	}
	if allocTerminal(a.ClientStatus) || a.DesiredStatus != api.AllocDesiredStatusRun {
		return false, fmt.Errorf("allocation %s on %s is %s (desired %s): %s", shortID(a.ID), clientName(a),
			a.ClientStatus, a.DesiredStatus, a.ClientDescription)
	}
	return running == len(spec.Nodes), nil
}

func clientName(a *api.AllocationListStub) string {
	if a.NodeName != "" {
		return a.NodeName
	}
	return shortID(a.NodeID)
}

// placementFailure explains why the scheduler could not place the lab, or
// returns "" when it did not fail.
func placementFailure(ev *api.Evaluation) string {
	if ev == nil || len(ev.FailedTGAllocs) == 0 {
		return ""
	}
	groups := make([]string, 0, len(ev.FailedTGAllocs))
	for g := range ev.FailedTGAllocs {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var parts []string
	for _, g := range groups {
		parts = append(parts, metricSummary(ev.FailedTGAllocs[g]))
	}
	return strings.Join(parts, "; ")
}

// metricSummary is the gist of an allocation metric, in the terms of
// `nomad job status`: how many clients were looked at and what ruled each out.
func metricSummary(m *api.AllocationMetric) string {
	if m == nil {
		return "no client could take it"
	}
	parts := []string{fmt.Sprintf("%d of %d clients evaluated", m.NodesEvaluated, max(m.NodesInPool, m.NodesEvaluated))}
	if m.NodesEvaluated == 0 {
		parts[0] = "no client in the datacenters and pool"
	}
	add := func(format string, mm map[string]int) {
		for _, k := range sortedKeys(mm) {
			parts = append(parts, fmt.Sprintf(format, k, mm[k]))
		}
	}
	add("class %s filtered on %d", m.ClassFiltered)
	add("constraint %s filtered %d", m.ConstraintFiltered)
	add("%s exhausted on %d", m.DimensionExhausted)
	for _, q := range m.QuotaExhausted {
		parts = append(parts, "quota "+q+" exhausted")
	}
	return strings.Join(parts, ", ")
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Status reports each node of the spec, in spec order: pending before the
// job exists or while it waits for a client, then the state of the node's
// task in the lab's allocation, with the task events worth showing.
func (r *Runtime) Status(ctx context.Context, spec jobspecs.Lab) ([]lab.NodeStatus, error) {
	if !jobspecs.ValidSessionID(spec.SessionID) {
		return nil, fmt.Errorf("lab status: invalid session id %q", spec.SessionID)
	}
	out := make([]lab.NodeStatus, len(spec.Nodes))
	for i, n := range spec.Nodes {
		out[i] = lab.NodeStatus{Name: n.Name, Container: n.Container, State: lab.StatePending}
	}
	job, err := r.sessionJob(ctx, spec.SessionID)
	switch {
	case errors.Is(err, lab.ErrNotFound):
		return out, nil
	case errors.Is(err, ErrForeignJob):
		for i := range out {
			out[i].State, out[i].Detail = lab.StateMissing, err.Error()
		}
		return out, nil
	case err != nil:
		return nil, fmt.Errorf("lab status %s: %w", spec.SessionID, err)
	}
	stubs, _, err := r.client.Jobs().Allocations(*job.ID, true, r.query(ctx))
	if err != nil {
		return nil, fmt.Errorf("lab status %s: %w", spec.SessionID, err)
	}
	a := currentAlloc(stubs)
	if a == nil {
		return r.unplacedStatus(ctx, job, out)
	}
	netFailed := ""
	if up := a.TaskStates[jobspecs.NomadLabnetUp]; up != nil && up.Failed {
		netFailed = "session network: " + eventSummary(up)
	}
	for i := range out {
		st := &out[i]
		st.AllocID = a.ID
		st.ClientNode = clientName(a)
		// What `docker ps` on the client shows.
		st.Container = st.Name + "-" + a.ID
		fillTask(st, a, a.TaskStates[st.Name])
		if netFailed != "" && st.State != lab.StateRunning {
			st.State = lab.StateFailed
			st.Events = append(st.Events, netFailed)
			st.Detail = netFailed
		}
	}
	return out, nil
}

// unplacedStatus explains nodes of a job that has no allocation.
func (r *Runtime) unplacedStatus(ctx context.Context, job *api.Job, out []lab.NodeStatus) ([]lab.NodeStatus, error) {
	if job.Stop != nil && *job.Stop {
		for i := range out {
			out[i].State, out[i].Detail = lab.StateMissing, "job stopped"
		}
		return out, nil
	}
	evals, _, err := r.client.Jobs().Evaluations(*job.ID, r.query(ctx))
	if err != nil {
		return nil, fmt.Errorf("lab status: list evaluations of %s: %w", *job.ID, err)
	}
	var failed *api.Evaluation
	for _, e := range evals {
		if len(e.FailedTGAllocs) > 0 && (failed == nil || e.CreateIndex > failed.CreateIndex) {
			failed = e
		}
	}
	for i := range out {
		out[i].State = lab.StateCreating
		out[i].Detail = "waiting for a client"
		if failed != nil {
			msg := "placement failed: " + placementFailure(failed)
			out[i].State = lab.StatePending
			out[i].Detail = msg
			out[i].Events = []string{msg}
		}
	}
	return out, nil
}

func fillTask(st *lab.NodeStatus, a *api.AllocationListStub, ts *api.TaskState) {
	if ts == nil {
		st.State = lab.StateCreating
		if allocTerminal(a.ClientStatus) {
			st.State, st.Detail = lab.StateMissing, "allocation "+a.ClientStatus
		}
		return
	}
	st.Events = notableEvents(ts)
	if !ts.StartedAt.IsZero() {
		st.StartedAt = ts.StartedAt
	}
	switch ts.State {
	case taskRunning:
		st.State = lab.StateRunning
	case taskDead:
		st.State = lab.StateExited
		if ts.Failed {
			st.State = lab.StateFailed
		}
		st.Detail = eventSummary(ts)
	default:
		st.State = lab.StateCreating
		if len(st.Events) > 0 {
			// Pending with a failure behind it: restarting after one.
			st.Detail = st.Events[len(st.Events)-1]
		}
		if allocTerminal(a.ClientStatus) {
			st.State = lab.StateFailed
		}
	}
}

// maxEvents is how many notable events a node status keeps.
const maxEvents = 5

// notableEvents picks the task events a person should see: failures, OOM
// kills, restarts, exits. Routine ones (received, setup, started) are left
// out.
func notableEvents(ts *api.TaskState) []string {
	var out []string
	for _, e := range ts.Events {
		if s := eventText(e); s != "" {
			out = append(out, s)
		}
	}
	if len(out) > maxEvents {
		out = out[len(out)-maxEvents:]
	}
	return out
}

func eventText(e *api.TaskEvent) string {
	msg := e.DisplayMessage
	if msg == "" {
		msg = firstNonEmpty(e.DriverError, e.SetupError, e.ValidationError, e.DownloadError, e.KillError, e.Message)
	}
	switch e.Type {
	case api.TaskTerminated:
		if e.Details["oom_killed"] == "true" {
			return "killed for lack of memory (OOM): " + msg
		}
		if e.Details["exit_code"] == "0" || (e.Details["exit_code"] == "" && e.ExitCode == 0) {
			return ""
		}
		return "Terminated: " + msg
	case api.TaskDriverFailure, api.TaskSetupFailure, api.TaskFailedValidation, api.TaskArtifactDownloadFailed,
		api.TaskNotRestarting, api.TaskRestarting, api.TaskSiblingFailed, api.TaskKilled:
		return e.Type + ": " + msg
	}
	return ""
}

// eventSummary is the most telling notable event of a task, for one-line
// details and errors.
func eventSummary(ts *api.TaskState) string {
	ev := notableEvents(ts)
	if len(ev) == 0 {
		return "task " + ts.State
	}
	// A failure explains more than the "Not Restarting" that follows it.
	for i := len(ev) - 1; i >= 0; i-- {
		if !strings.HasPrefix(ev[i], api.TaskNotRestarting) && !strings.HasPrefix(ev[i], api.TaskRestarting) {
			return ev[i]
		}
	}
	return ev[len(ev)-1]
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

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
