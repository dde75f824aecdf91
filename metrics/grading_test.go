package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/metrics"
)

var _ grading.Observer = (*metrics.Metrics)(nil)

func TestGradingMetrics(t *testing.T) {
	m := metrics.New(metrics.Options{})
	m.CheckRan(true, false, time.Second)
	m.CheckRan(false, false, time.Second)
	m.CheckRan(false, true, 10*time.Second)
	m.Graded(grading.TriggerSubmit, 12*time.Second)
	m.Graded(grading.TriggerCandidate, time.Second)
	out := scrape(t, m)
	for _, want := range []string{
		`examlab_checks_total{outcome="passed"} 1`,
		`examlab_checks_total{outcome="failed"} 2`,
		`examlab_checks_total{outcome="timed_out"} 1`,
		`examlab_grading_duration_seconds_count{trigger="submit"} 1`,
		`examlab_grading_duration_seconds_sum{trigger="submit"} 12`,
		`examlab_grading_duration_seconds_count{trigger="candidate"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the scrape lacks %s", want)
		}
	}
	var none *metrics.Metrics
	none.CheckRan(true, false, 0) // a nil Metrics records nothing and does not panic
	none.Graded("submit", 0)
}
