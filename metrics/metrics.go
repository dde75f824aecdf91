// Package metrics is examlab's Prometheus instrumentation: sessions by
// state, provision and archive durations, archived bytes, open terminals
// and queue depth, served in the text format by Handler.
package metrics

import (
	"context"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// sessionCounter counts indexed sessions by state (store.Store).
type sessionCounter interface {
	CountByStatus(ctx context.Context) (map[session.State]int, error)
}

// leftoverLister lists the leftovers on record (store.Store).
type leftoverLister interface {
	Leftovers(ctx context.Context) ([]store.Leftover, error)
}

// warmReader reads the warm pools, their claims and their replacements
// (store.Store).
type warmReader interface {
	WarmStats(ctx context.Context) (map[string]store.WarmCounts, map[string]int64, error)
	WarmReplacements(ctx context.Context) (map[string]int64, error)
}

// queueInspector reads queue sizes (asynq.Inspector).
type queueInspector interface {
	Queues() ([]string, error)
	GetQueueInfo(queue string) (*asynq.QueueInfo, error)
}

// Options configures New. Every field is optional: without Sessions or
// Queues those gauges are simply not exported.
type Options struct {
	Sessions sessionCounter
	Queues   queueInspector
	// Leftovers exports examlab_lab_leftovers, the parts of ended labs the
	// runtime still keeps.
	Leftovers leftoverLister
	// Warm exports examlab_warm_labs{sitting,state},
	// examlab_warm_claims_total{outcome} (claimed, empty) and
	// examlab_warm_replaced_total{reason}, read from Redis so that every
	// process reports the deployment's numbers.
	Warm warmReader
	// QueueNames are the queues to report; default: scheduler.Queues.
	QueueNames []string
	// ScrapeTimeout bounds the Redis reads one scrape makes; default 5s.
	ScrapeTimeout time.Duration
}

// Metrics holds one process's collectors. A nil *Metrics is valid and
// records nothing, so callers need no "metrics enabled" checks.
type Metrics struct {
	reg          *prometheus.Registry
	provision    *prometheus.HistogramVec
	archive      *prometheus.HistogramVec
	archiveBytes prometheus.Counter
	terminals    prometheus.Gauge
	checks       *prometheus.CounterVec
	grading      *prometheus.HistogramVec
	leftovers    *prometheus.CounterVec
}

// Lifecycle steps take seconds to minutes: a lab of eight containers, an
// archive of eight filesystems.
var durationBuckets = []float64{1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200}

// New registers examlab's collectors and the Go runtime's on a registry of
// their own.
func New(o Options) *Metrics {
	if len(o.QueueNames) == 0 {
		for q := range scheduler.Queues {
			o.QueueNames = append(o.QueueNames, q)
		}
		sort.Strings(o.QueueNames)
	}
	if o.ScrapeTimeout == 0 {
		o.ScrapeTimeout = 5 * time.Second
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		provision: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "examlab_provision_duration_seconds", Help: "Time to bring a session's lab up, by result.",
			Buckets: durationBuckets,
		}, []string{"result"}),
		archive: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "examlab_archive_duration_seconds", Help: "Time to archive a session's lab (submit or admin snapshot), by result.",
			Buckets: durationBuckets,
		}, []string{"result"}),
		archiveBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "examlab_archive_bytes_total", Help: "Bytes of filesystem tars and logs written by archives.",
		}),
		terminals: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "examlab_terminals_open", Help: "Terminal connections open in this process.",
		}),
	}
	m.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "examlab_checks_total", Help: "Checks the grader ran, by outcome: passed, failed or timed_out (a timed-out check also failed).",
	}, []string{"outcome"})
	m.grading = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "examlab_grading_duration_seconds", Help: "Time to grade a session's lab, by trigger (submit, deadline, regrade, candidate).",
		Buckets: durationBuckets,
	}, []string{"trigger"})
	m.leftovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "examlab_lab_leftovers_total",
		Help: "Parts of ended labs the runtime would not remove, by event: recorded when first kept, cleared once gone.",
	}, []string{"event"})
	for _, o := range []string{"passed", "failed", "timed_out"} {
		m.checks.WithLabelValues(o)
	}
	m.leftovers.WithLabelValues("recorded")
	m.leftovers.WithLabelValues("cleared")
	m.reg.MustRegister(m.provision, m.archive, m.archiveBytes, m.terminals, m.checks, m.grading, m.leftovers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if o.Sessions != nil || o.Queues != nil || o.Leftovers != nil || o.Warm != nil {
		m.reg.MustRegister(&redisCollector{o: o})
	}
	return m
}

// Handler serves the metrics in Prometheus' text format. A failing Redis
// read drops its gauges from the scrape but keeps the rest.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Registry is where further collectors of this process may register.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func result(ok bool) string {
	if ok {
		return "ok"
	}
	return "error"
}

// Provisioned records one provision attempt (workers.Observer).
func (m *Metrics) Provisioned(d time.Duration, ok bool) {
	if m == nil {
		return
	}
	m.provision.WithLabelValues(result(ok)).Observe(d.Seconds())
}

// Archived records one archive or snapshot and the bytes it wrote
// (workers.Observer).
func (m *Metrics) Archived(d time.Duration, bytes int64, ok bool) {
	if m == nil {
		return
	}
	m.archive.WithLabelValues(result(ok)).Observe(d.Seconds())
	if bytes > 0 {
		m.archiveBytes.Add(float64(bytes))
	}
}

// CheckRan counts one check the grader ran (grading.Observer): every
// check counts as passed or failed, and a check killed at its timeout
// counts as timed out as well.
func (m *Metrics) CheckRan(passed, timedOut bool, _ time.Duration) {
	if m == nil {
		return
	}
	if passed {
		m.checks.WithLabelValues("passed").Inc()
	} else {
		m.checks.WithLabelValues("failed").Inc()
	}
	if timedOut {
		m.checks.WithLabelValues("timed_out").Inc()
	}
}

// Graded records how long one grading of a lab took.
func (m *Metrics) Graded(trigger string, d time.Duration) {
	if m == nil {
		return
	}
	m.grading.WithLabelValues(trigger).Observe(d.Seconds())
}

// Leftovers counts leftovers put on record and records dropped once their
// part was gone (workers.Observer).
func (m *Metrics) Leftovers(added, cleared int) {
	if m == nil {
		return
	}
	if added > 0 {
		m.leftovers.WithLabelValues("recorded").Add(float64(added))
	}
	if cleared > 0 {
		m.leftovers.WithLabelValues("cleared").Add(float64(cleared))
	}
}

// TerminalOpened counts a terminal connection as open and returns the
// function that counts it closed; calling that more than once counts once,
// so a relay may call it from every exit path.
func (m *Metrics) TerminalOpened() (closed func()) {
	if m == nil {
		return func() {}
	}
	m.terminals.Inc()
	var once sync.Once
	return func() { once.Do(m.terminals.Dec) }
}

// redisCollector reads the gauges that live in Redis at scrape time, so
// every process reports the platform-wide value without keeping state.
type redisCollector struct{ o Options }

var (
	sessionsDesc = prometheus.NewDesc("examlab_sessions", "Sessions in the index, by lifecycle state.", []string{"state"}, nil)
	queueDesc    = prometheus.NewDesc("examlab_queue_tasks", "Tasks in a queue, by task state.", []string{"queue", "state"}, nil)
	latencyDesc  = prometheus.NewDesc("examlab_queue_latency_seconds", "Age of the oldest pending task in a queue.", []string{"queue"}, nil)
	leftoverDesc = prometheus.NewDesc("examlab_lab_leftovers",
		"Parts of ended labs the runtime still keeps (on record, retried by the reaper), by runtime and kind.", []string{"runtime", "kind"}, nil)
	warmLabsDesc   = prometheus.NewDesc("examlab_warm_labs", "Warm labs in a sitting's pool, by state (making, ready).", []string{"sitting", "state"}, nil)
	warmClaimsDesc = prometheus.NewDesc("examlab_warm_claims_total",
		"Starts into a sitting with a warm pool, by outcome: claimed a ready lab, or found the pool empty.", []string{"outcome"}, nil)
	warmReplacedDesc = prometheus.NewDesc("examlab_warm_replaced_total",
		"Warm labs taken out of their pool to be replaced, by reason: broken (a node stopped running while it waited), "+
			"old_version, too_old (warm_max_age), stuck (its provision made no progress), failed (its provision failed).",
		[]string{"reason"}, nil)
)

func (c *redisCollector) Describe(ch chan<- *prometheus.Desc) {
	if c.o.Sessions != nil {
		ch <- sessionsDesc
	}
	if c.o.Queues != nil {
		ch <- queueDesc
		ch <- latencyDesc
	}
	if c.o.Leftovers != nil {
		ch <- leftoverDesc
	}
	if c.o.Warm != nil {
		ch <- warmLabsDesc
		ch <- warmClaimsDesc
		ch <- warmReplacedDesc
	}
}

func (c *redisCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.ScrapeTimeout)
	defer cancel()
	if c.o.Sessions != nil {
		counts, err := c.o.Sessions.CountByStatus(ctx)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(sessionsDesc, err)
		}
		for _, st := range session.States {
			if err == nil {
				ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(counts[st]), string(st))
			}
		}
	}
	if c.o.Leftovers != nil {
		c.collectLeftovers(ctx, ch)
	}
	if c.o.Warm != nil {
		c.collectWarm(ctx, ch)
	}
	if c.o.Queues == nil {
		return
	}
	known, err := c.o.Queues.Queues()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(queueDesc, err)
		return
	}
	for _, q := range c.o.QueueNames {
		// A queue nothing was ever enqueued on does not exist yet: empty.
		info := &asynq.QueueInfo{Queue: q}
		if slices.Contains(known, q) {
			info, err = c.o.Queues.GetQueueInfo(q)
		}
		if err != nil {
			ch <- prometheus.NewInvalidMetric(queueDesc, err)
			continue
		}
		for _, s := range []struct {
			state string
			n     int
		}{
			{"pending", info.Pending}, {"active", info.Active}, {"scheduled", info.Scheduled},
			{"retry", info.Retry}, {"archived", info.Archived}, {"completed", info.Completed},
		} {
			ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(s.n), q, s.state)
		}
		ch <- prometheus.MustNewConstMetric(latencyDesc, prometheus.GaugeValue, info.Latency.Seconds(), q)
	}
}

// collectLeftovers reports the leftovers on record by runtime and kind;
// with none on record it reports no series (alert on the sum being > 0).
func (c *redisCollector) collectLeftovers(ctx context.Context, ch chan<- prometheus.Metric) {
	all, err := c.o.Leftovers.Leftovers(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(leftoverDesc, err)
		return
	}
	type rk struct{ runtime, kind string }
	counts := map[rk]int{}
	for _, l := range all {
		counts[rk{l.Runtime, l.Kind}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(leftoverDesc, prometheus.GaugeValue, float64(n), k.runtime, k.kind)
	}
}

// collectWarm reports every warm pool by state, and the claims and
// replacements so far.
func (c *redisCollector) collectWarm(ctx context.Context, ch chan<- prometheus.Metric) {
	pools, claims, err := c.o.Warm.WarmStats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(warmLabsDesc, err)
		return
	}
	for id, n := range pools {
		ch <- prometheus.MustNewConstMetric(warmLabsDesc, prometheus.GaugeValue, float64(n.Making), id, store.WarmMaking)
		ch <- prometheus.MustNewConstMetric(warmLabsDesc, prometheus.GaugeValue, float64(n.Ready), id, store.WarmReady)
	}
	for _, o := range []string{store.WarmOutcomeClaimed, store.WarmOutcomeEmpty} {
		ch <- prometheus.MustNewConstMetric(warmClaimsDesc, prometheus.CounterValue, float64(claims[o]), o)
	}
	replaced, err := c.o.Warm.WarmReplacements(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(warmReplacedDesc, err)
		return
	}
	for _, r := range store.WarmReplacedReasons {
		ch <- prometheus.MustNewConstMetric(warmReplacedDesc, prometheus.CounterValue, float64(replaced[r]), r)
	}
}
