// Package nomad runs exam labs on a Nomad cluster: one job per session,
// whose eight docker tasks land together on one client, driven through the
// Nomad HTTP API (github.com/hashicorp/nomad/api) for provisioning, exec,
// archive and cleanup.
package nomad

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// Errors of this runtime beyond those in package lab.
var (
	// ErrNotPlaced is lab.ErrNoCapacity, under the name this runtime gave
	// it first.
	ErrNotPlaced = lab.ErrNoCapacity
	// ErrForeignJob: a job of the session's name belongs to another session.
	ErrForeignJob = errors.New("job belongs to another session")
)

// Defaults for zero Options fields.
const (
	// defaultWaitTime is how long one blocking query may wait for a change.
	defaultWaitTime = 30 * time.Second
	// destroyTimeout bounds how long Destroy waits for the lab's allocation
	// to stop, poststop task included, once the job is purged.
	destroyTimeout = 3 * time.Minute
)

var _ lab.Runtime = (*Runtime)(nil)

// Options configure a Runtime. Zero values mean the documented defaults.
type Options struct {
	// Client configures the Nomad API client. Nil means api.DefaultConfig(),
	// which reads NOMAD_ADDR, NOMAD_TOKEN, NOMAD_REGION, NOMAD_NAMESPACE and
	// the TLS variables (NOMAD_CACERT, NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY…).
	Client *api.Config
	// Job holds the cluster-specific parts of every session's job.
	Job jobspecs.NomadOptions
	// WaitTime bounds each blocking query; zero means 30s.
	WaitTime time.Duration
	// Logger receives the runtime's warnings about the cluster (memory
	// oversubscription off); nil means slog.Default().
	Logger *slog.Logger
	// Gate keeps exec starts into a lab out of its freeze, across every
	// process that reaches the cluster (the platform's is the store). Nil
	// means a gate of this process alone (lab.LocalGate).
	Gate lab.ExecGate
}

// Runtime provisions and drives exam labs as Nomad jobs. It is safe for
// concurrent use.
type Runtime struct {
	client *api.Client
	job    jobspecs.NomadOptions
	wait   time.Duration
	log    *slog.Logger
	gate   lab.ExecGate
	// oversub is what CheckScheduler found of memory oversubscription.
	oversub atomic.Int32
}

// New returns a Runtime for the cluster opts name. It does not contact the
// cluster; call Ping for that.
func New(opts Options) (*Runtime, error) {
	cfg := opts.Client
	if cfg == nil {
		cfg = api.DefaultConfig()
	}
	wait := opts.WaitTime
	if wait <= 0 {
		wait = defaultWaitTime
	}
	if cfg.HttpClient == nil {
		hc, err := httpClient(cfg, wait)
		if err != nil {
			return nil, fmt.Errorf("new nomad runtime: %w", err)
		}
		cp := *cfg
		cp.HttpClient = hc
		cfg = &cp
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("new nomad runtime: %w", err)
	}
	job := opts.Job
	// A job names its namespace and region itself so that what
	// `examlab jobspec` prints is what runs.
	if job.Namespace == "" {
		job.Namespace = cfg.Namespace
	}
	if job.Region == "" {
		job.Region = cfg.Region
	}
	gate := opts.Gate
	if gate == nil {
		gate = lab.NewLocalGate(0)
	}
	return &Runtime{client: c, job: job, wait: wait, log: logger(opts.Logger), gate: gate}, nil
}

// Job renders the session's job as this runtime registers it: as the
// cluster's memory oversubscription allows, once CheckScheduler has found
// out, and for a cluster that has it on before.
func (r *Runtime) Job(spec lab.Spec) (*api.Job, error) {
	return jobspecs.NomadJob(spec, r.jobOptions())
}

func (r *Runtime) query(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

// blocking is a query that waits until the cluster's state passes index
// (or WaitTime elapses) before answering: how this runtime watches
// evaluations and allocations without polling.
func (r *Runtime) blocking(ctx context.Context, index uint64) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: index, WaitTime: r.wait}).WithContext(ctx)
}

func (r *Runtime) write(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

// statusOf returns the HTTP status of a Nomad API error, 0 if it has none.
func statusOf(err error) int {
	var ue api.UnexpectedResponseError
	if errors.As(err, &ue) && ue.HasStatusCode() {
		return ue.StatusCode()
	}
	var pe *api.UnexpectedResponseError
	if errors.As(err, &pe) && pe.HasStatusCode() {
		return pe.StatusCode()
	}
	return 0
}

func isNotFound(err error) bool { return statusOf(err) == http.StatusNotFound }

// isIndexConflict reports whether a register conditioned on a job modify
// index was refused because the job changed (or appeared) meanwhile.
func isIndexConflict(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Enforcing job modify index")
}

// Ping reports whether the cluster has a leader to answer. Whatever keeps
// it from answering is lab.ErrUnavailable.
func (r *Runtime) Ping(ctx context.Context) error {
	var leader string
	_, err := r.client.Raw().Query("/v1/status/leader", &leader, r.query(ctx))
	if err != nil {
		return fmt.Errorf("ping nomad: %w", lab.Unavailable(err))
	}
	if leader == "" {
		return fmt.Errorf("ping nomad: the cluster has no leader: %w", lab.ErrUnavailable)
	}
	return nil
}

// sessionJob returns the session's job, ErrNotFound-wrapped when there is
// none, and refuses a job of the name that another session owns.
func (r *Runtime) sessionJob(ctx context.Context, sessionID string) (*api.Job, error) {
	if !lab.ValidSessionID(sessionID) {
		return nil, fmt.Errorf("session %q: %w", sessionID, lab.ErrNotFound)
	}
	id := jobspecs.JobName(sessionID)
	job, _, err := r.client.Jobs().Info(id, r.query(ctx))
	if isNotFound(err) {
		return nil, fmt.Errorf("job %s: %w", id, lab.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up job %s: %w", id, err)
	}
	if s := job.Meta[jobspecs.MetaSession]; s != sessionID {
		return nil, fmt.Errorf("job %s of session %q, not %q: %w", id, s, sessionID, ErrForeignJob)
	}
	return job, nil
}

// currentAlloc picks the allocation that is the lab: one the scheduler
// wants running, the newest if several; else the newest of any.
func currentAlloc(allocs []*api.AllocationListStub) *api.AllocationListStub {
	var best *api.AllocationListStub
	for _, a := range allocs {
		if best == nil {
			best = a
			continue
		}
		ar, br := a.DesiredStatus == api.AllocDesiredStatusRun, best.DesiredStatus == api.AllocDesiredStatusRun
		if ar != br {
			if ar {
				best = a
			}
			continue
		}
		if a.CreateIndex > best.CreateIndex {
			best = a
		}
	}
	return best
}

// nodeTask finds the docker task of a node in the job. Only the lab's
// nodes are reachable through this runtime: the lifecycle tasks run on the
// client host itself (raw_exec) and are never exec targets.
func nodeTask(job *api.Job, node string) bool { return findNodeTask(job, node) != nil }

// findNodeTask is the job's task of the node, nil if it has none.
func findNodeTask(job *api.Job, node string) *api.Task {
	if job == nil {
		return nil
	}
	for _, g := range job.TaskGroups {
		for _, t := range g.Tasks {
			if t.Name == node && t.Driver == "docker" && t.Lifecycle == nil {
				return t
			}
		}
	}
	return nil
}

// nodeAlloc returns the allocation running the session's node and the
// node's task state (nil before the client reports one).
func (r *Runtime) nodeAlloc(ctx context.Context, sessionID, node string) (*api.Allocation, *api.TaskState, error) {
	job, err := r.sessionJob(ctx, sessionID)
	if errors.Is(err, ErrForeignJob) {
		return nil, nil, fmt.Errorf("node %s of session %s: %w", node, sessionID, lab.ErrNotFound)
	}
	if err != nil {
		return nil, nil, err
	}
	if !nodeTask(job, node) {
		return nil, nil, fmt.Errorf("node %q of session %s: %w", node, sessionID, lab.ErrNotFound)
	}
	stubs, _, err := r.client.Jobs().Allocations(*job.ID, false, r.query(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("list allocations of %s: %w", *job.ID, err)
	}
	cur := currentAlloc(stubs)
	if cur == nil {
		return nil, nil, fmt.Errorf("node %s of session %s is not placed: %w", node, sessionID, lab.ErrNotFound)
	}
	alloc, _, err := r.client.Allocations().Info(cur.ID, r.query(ctx))
	if isNotFound(err) {
		return nil, nil, fmt.Errorf("allocation %s: %w", cur.ID, lab.ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("look up allocation %s: %w", cur.ID, err)
	}
	if alloc.ClientStatus == api.AllocClientStatusLost {
		// Its client is gone: an exec would wait on a host that never
		// answers.
		return nil, nil, fmt.Errorf("node %s of session %s: allocation %s on client %s is lost: %w",
			node, sessionID, shortID(alloc.ID), alloc.NodeName, lab.ErrLost)
	}
	return alloc, alloc.TaskStates[node], nil
}

// Labs lists the sessions that have an examlab job on the cluster, sorted;
// the reaper compares it with the sessions it knows.
func (r *Runtime) Labs(ctx context.Context) ([]string, error) {
	stubs, _, err := r.client.Jobs().ListOptions(&api.JobListOptions{Fields: &api.JobListFields{Meta: true}},
		(&api.QueryOptions{Prefix: "exam-"}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	var out []string
	for _, j := range stubs {
		s := j.Meta[jobspecs.MetaSession]
		if j.Meta[jobspecs.MetaManaged] != "true" || !lab.ValidSessionID(s) || j.ID != jobspecs.JobName(s) {
			continue
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out, nil
}

// shortID is the first 8 characters of a Nomad id, as its CLI shows them.
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// Task states as Nomad reports them.
const (
	taskPending = "pending"
	taskRunning = "running"
	taskDead    = "dead"
)
