package nomad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// ErrNoAgent: the lab's job has no labnet-watch task to reach the client
// through (a flat lab registered by an examlab older than render version
// 4), so its changes cannot be read and it cannot be frozen. Its archive
// falls back to full exports.
var ErrNoAgent = errors.New("the lab has no labnet-watch task")

// agent finds the session's running labnet-watch task: the allocation
// and the examlab binary the task runs.
func (r *Runtime) agent(ctx context.Context, sessionID string) (*api.Allocation, string, error) {
	job, err := r.sessionJob(ctx, sessionID)
	if err != nil {
		return nil, "", err
	}
	bin := agentBinary(job)
	if bin == "" {
		return nil, "", fmt.Errorf("job %s: %w", *job.ID, ErrNoAgent)
	}
	stubs, _, err := r.client.Jobs().Allocations(*job.ID, false, r.query(ctx))
	if err != nil {
		return nil, "", fmt.Errorf("list allocations of %s: %w", *job.ID, err)
	}
	cur := currentAlloc(stubs)
	if cur == nil {
		return nil, "", fmt.Errorf("lab of session %s is not placed: %w", sessionID, lab.ErrNotFound)
	}
	alloc, _, err := r.client.Allocations().Info(cur.ID, r.query(ctx))
	if isNotFound(err) {
		return nil, "", fmt.Errorf("allocation %s: %w", cur.ID, lab.ErrNotFound)
	}
	if err != nil {
		return nil, "", fmt.Errorf("look up allocation %s: %w", cur.ID, err)
	}
	if err := agentRunning(sessionID, alloc); err != nil {
		return nil, "", err
	}
	return alloc, bin, nil
}

// agentBinary is the examlab binary the job's labnet-watch task runs, ""
// if the job has no lab's agent.
func agentBinary(job *api.Job) string {
	if job == nil {
		return ""
	}
	for _, g := range job.TaskGroups {
		for _, t := range g.Tasks {
			if t.Name == jobspecs.NomadLabnetWatch && t.Driver == "raw_exec" {
				bin, _ := t.Config["command"].(string)
				return bin
			}
		}
	}
	return ""
}

// agentRunning reports lab.ErrNotRunning unless the allocation's
// labnet-watch task runs.
func agentRunning(sessionID string, alloc *api.Allocation) error {
	if ts := alloc.TaskStates[jobspecs.NomadLabnetWatch]; ts == nil || ts.State != taskRunning {
		state := "not started"
		if ts != nil {
			state = ts.State
		}
		return fmt.Errorf("%s of session %s is %s: %w", jobspecs.NomadLabnetWatch, sessionID, state, lab.ErrNotRunning)
	}
	return nil
}

// agentExec runs `examlab labnet VERB -session ID -alloc ID [-node N]` in
// the lab's labnet-watch task: on the client, as root, beside the node
// containers (see LabAgent).
func (r *Runtime) agentExec(ctx context.Context, sessionID, verb, node string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	alloc, bin, err := r.agent(ctx, sessionID)
	if err != nil {
		return -1, err
	}
	return r.agentExecIn(ctx, alloc, bin, sessionID, verb, node, stdin, stdout, stderr)
}

// agentExecIn is agentExec in an allocation already looked up, whose
// labnet-watch task runs bin.
func (r *Runtime) agentExecIn(ctx context.Context, alloc *api.Allocation, bin, sessionID, verb, node string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	cmd := []string{bin, "labnet", verb, "-session", sessionID, "-alloc", alloc.ID}
	if node != "" {
		cmd = append(cmd, "-node", node)
	}
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	return r.client.Allocations().Exec(ctx, alloc, jobspecs.NomadLabnetWatch, false, cmd, stdin, stdout, stderr, nil, r.query(ctx))
}

// agentRun runs a short agent verb and fails with the last line it wrote
// to stderr unless it exits 0.
func (r *Runtime) agentRun(ctx context.Context, sessionID, verb string) error {
	stderr := &tailWriter{max: 4 << 10}
	code, err := r.agentExec(ctx, sessionID, verb, "", nil, io.Discard, stderr)
	if err != nil {
		return fmt.Errorf("%s lab %s: %w", verb, sessionID, err)
	}
	if code != 0 {
		return fmt.Errorf("%s lab %s: labnet %s exited %d: %s", verb, sessionID, verb, code, lastLine(stderr.buf.String()))
	}
	return nil
}

// Freeze pauses every node of the session's lab on its client, with the
// Docker engine's cgroup freezer, through the labnet-watch task (Nomad
// itself cannot pause a task). Every process of the node stops where it
// is, none can be woken and nothing writes to the node's files until Thaw;
// Nomad still sees the tasks running. Terminals into a frozen node hang.
func (r *Runtime) Freeze(ctx context.Context, sessionID string) error {
	return r.agentRun(ctx, sessionID, VerbFreeze)
}

// Thaw resumes the nodes Freeze paused. Thawing a lab that is not frozen
// changes nothing.
func (r *Runtime) Thaw(ctx context.Context, sessionID string) error {
	return r.agentRun(ctx, sessionID, VerbThaw)
}
