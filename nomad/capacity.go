package nomad

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// What the runtime knows of the cluster's memory oversubscription.
const (
	oversubUnknown int32 = iota
	oversubOn
	oversubOff
)

// OversubscriptionAdvice says how to turn memory oversubscription on.
const OversubscriptionAdvice = "enable it in the servers' configuration, server { default_scheduler_config { memory_oversubscription_enabled = true } }, " +
	"or on a running cluster with `nomad operator scheduler set-config -memory-oversubscription=true`"

// CheckScheduler reads the cluster's scheduler configuration once: a lab
// node reserves less memory than its limit (memory_max) only where memory
// oversubscription is on. Where it is off, Nomad would ignore memory_max
// and hold each node to what it reserves, so the runtime renders every
// node reserving its whole limit instead, and logs a warning saying how
// to turn it on. A token that may not read the configuration (it needs
// operator:read) counts as off, with a warning saying so. Other errors
// (the cluster unreachable) are returned, and the next call asks again.
func (r *Runtime) CheckScheduler(ctx context.Context) error {
	if r.oversub.Load() != oversubUnknown {
		return nil
	}
	cfg, _, err := r.client.Operator().SchedulerGetConfiguration(r.query(ctx))
	switch {
	case statusOf(err) == http.StatusForbidden:
		if r.oversub.CompareAndSwap(oversubUnknown, oversubOff) {
			r.log.Warn("nomad: cannot read the scheduler configuration (the token needs operator:read): "+
				"assuming memory oversubscription is off, so every lab node reserves its whole memory limit and fewer labs fit a client",
				"err", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("read the scheduler configuration: %w", err)
	case cfg == nil || cfg.SchedulerConfig == nil || !cfg.SchedulerConfig.MemoryOversubscriptionEnabled:
		if r.oversub.CompareAndSwap(oversubUnknown, oversubOff) {
			r.log.Warn("nomad: memory oversubscription is off, so Nomad would ignore a lab node's memory_max and hold it to the memory it reserves: " +
				"every lab node reserves its whole memory limit instead, and fewer labs fit a client; " + OversubscriptionAdvice)
		}
	default:
		r.oversub.CompareAndSwap(oversubUnknown, oversubOn)
	}
	return nil
}

// jobOptions are the job options with what CheckScheduler found.
func (r *Runtime) jobOptions() jobspecs.NomadOptions {
	o := r.job
	if r.oversub.Load() == oversubOff {
		o.NoMemoryOversubscription = true
	}
	return o
}

// placeable asks the scheduler, without registering anything, whether the
// job can be placed now. When it cannot, the error wraps
// lab.ErrNoCapacity with the scheduler's reasons: the start can wait for
// room, and nothing was created that would be placed behind its back.
func (r *Runtime) placeable(ctx context.Context, job *api.Job) error {
	resp, _, err := r.client.Jobs().Plan(job, false, r.write(ctx))
	if err != nil {
		return fmt.Errorf("plan job %s: %w", *job.ID, err)
	}
	if len(resp.FailedTGAllocs) == 0 {
		return nil
	}
	return fmt.Errorf("plan job %s: %w: %s", *job.ID, lab.ErrNoCapacity, placementReason(job, resp.FailedTGAllocs))
}

// placementReason explains why the scheduler could not place the lab, in
// words an admin reads: what the lab reserves, and what ruled each client
// out.
func placementReason(job *api.Job, failed map[string]*api.AllocationMetric) string {
	groups := make([]string, 0, len(failed))
	for g := range failed {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var parts []string
	for _, g := range groups {
		parts = append(parts, metricSummary(failed[g]))
	}
	reason := strings.Join(parts, "; ")
	if job != nil {
		if cpu, mem := jobspecs.NomadReserved(job); cpu > 0 {
			reason = fmt.Sprintf("the lab reserves %d MHz of CPU and %d MB of memory; %s", cpu, mem, reason)
		}
	}
	return reason
}

// placementFailure explains why the scheduler could not place the lab of
// an evaluation, or returns "" when it did not fail.
func placementFailure(ev *api.Evaluation) string {
	if ev == nil || len(ev.FailedTGAllocs) == 0 {
		return ""
	}
	return placementReason(nil, ev.FailedTGAllocs)
}

// metricSummary is the gist of an allocation metric, in the terms of
// `nomad job status`: how many clients were looked at and what ruled each
// out.
func metricSummary(m *api.AllocationMetric) string {
	if m == nil {
		return "no client could take it"
	}
	if m.NodesEvaluated == 0 {
		where := "in the job's datacenters"
		if m.NodePool != "" {
			where += " and node pool " + m.NodePool
		}
		return "no client is ready " + where
	}
	head := "no client can run it"
	if m.NodesExhausted > 0 || len(m.DimensionExhausted) > 0 {
		head = "no client has room"
	}
	parts := []string{fmt.Sprintf("%s: %d of %d clients evaluated", head, m.NodesEvaluated, max(m.NodesInPool, m.NodesEvaluated))}
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

// logger is the runtime's logger, slog's default when Options has none.
func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}
