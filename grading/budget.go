package grading

import (
	"time"

	"github.com/examlab/examlab/exam"
)

// budgetMargin covers what a grading does besides its checks: starting
// the execs and scoring.
const budgetMargin = 30 * time.Second

// Budget is the longest a grading of ex (or of the tasks named, when any)
// can take: the nodes run at once and each runs its checks in turn, so it
// is the largest per-node sum of check timeouts, each with the grace the
// grader allows past it, plus a margin. A context with this timeout bounds
// a grading without ever cutting a check short.
func Budget(ex *exam.Exam, tasks ...string) time.Duration {
	want := map[string]bool{}
	for _, id := range tasks {
		want[id] = true
	}
	perNode := map[string]time.Duration{}
	var longest time.Duration
	for _, t := range ex.Tasks {
		if len(want) > 0 && !want[t.ID] {
			continue
		}
		for _, c := range t.Checks {
			d := c.Timeout.Duration
			if d <= 0 {
				d = exam.DefaultCheckTimeout
			}
			perNode[c.Node] += d + grace
			longest = max(longest, perNode[c.Node])
		}
	}
	return longest + budgetMargin
}
