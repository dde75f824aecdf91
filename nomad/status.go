package nomad

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/hashicorp/nomad/api"
)

// Status reports each node of the spec, in spec order: pending before the
// job exists or while it waits for a client, then the state of the node's
// task in the lab's allocation, with the task events worth showing. A lab
// whose client is down, or whose allocation Nomad declared lost, is lost
// on every node; one whose client stopped reporting is unknown on every
// node (see hostTrouble): the task states are then the last the client
// sent, and say nothing of the lab now.
func (r *Runtime) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	if !lab.ValidSessionID(spec.SessionID) {
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
	if state, detail := r.allocHost(ctx, a); state != "" {
		for i := range out {
			st := &out[i]
			st.AllocID, st.ClientNode = a.ID, clientName(a)
			st.Container = st.Name + "-" + a.ID
			st.State, st.Detail = state, detail
		}
		return out, nil
	}
	netFailed := ""
	if up := a.TaskStates[jobspecs.NomadLabnetUp]; up != nil && up.Failed {
		what := "session network: "
		if spec.Segmented() {
			what = "wiring: "
		}
		reason := eventSummary(up)
		if labnetFailed(a) {
			reason = r.labnetReason(ctx, a)
		}
		netFailed = what + reason
	}
	// Wired once labnet-up is done, or as soon as the lab's agent has left
	// its state (labnet-up's exit reaches the servers later). The state is
	// read only once a node runs: before that there is nothing to wire, and
	// every poll of a starting lab would cost a call to its client.
	wiring := spec.Segmented() && !labnetDone(a) && netFailed == "" &&
		nodeRunning(a, spec) && !r.stateLeft(ctx, a)
	for i := range out {
		st := &out[i]
		st.AllocID = a.ID
		st.ClientNode = clientName(a)
		// What `docker ps` on the client shows.
		st.Container = st.Name + "-" + a.ID
		fillTask(st, a, a.TaskStates[st.Name])
		switch {
		case netFailed != "" && (st.State != lab.StateRunning || spec.Segmented()):
			// A segmented lab's node is of no use unwired, even running.
			st.State = lab.StateFailed
			st.Events = append(st.Events, netFailed)
			st.Detail = netFailed
		case wiring && st.State == lab.StateRunning:
			st.State, st.Detail = lab.StateCreating, "waiting for labnet-up to wire the lab's network"
		case spec.Segmented() && st.State == lab.StateRunning:
			// Fixed by the exam, the same in every lab.
			st.IP = spec.Nodes[i].Address
		}
	}
	return out, nil
}

// nodeRunning reports whether any of the lab's nodes runs in allocation a.
func nodeRunning(a *api.AllocationListStub, spec lab.Spec) bool {
	for _, n := range spec.Nodes {
		if ts := a.TaskStates[n.Name]; ts != nil && ts.State == taskRunning {
			return true
		}
	}
	return false
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
