package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/testlab"
)

// TestGradingRealLab grades real containers with the grader's own tools
// (the runtime's read-only /.examlab): a candidate's check fails before
// the work and passes after it, an admin's regrade scores the live lab,
// and at the deadline the lab is graded before it is archived.
func TestGradingRealLab(t *testing.T) {
	requireLabImage(t)
	examFile, err := filepath.Abs("testdata/checks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	st := testlab.Start(t, testlab.Options{Config: func(c *config.Config) {
		c.ExamFile = examFile
		c.ExpireEvery = time.Second
		c.ReapEvery = time.Minute
	}})
	c, id := readyLab(t, st, "real-grading@example.com")
	admin := st.Admin()
	ctx := context.Background()

	check := func(want bool, left int) {
		t.Helper()
		code, body := raw(t, c, "POST", "/api/session/"+id+"/tasks/t1-marker/check", nil)
		noSecrets(t, "the check's answer", body)
		var a checkAnswer
		if err := json.Unmarshal(body, &a); err != nil || code != http.StatusOK || a.Passed != want || a.Remaining != left {
			t.Fatalf("check my work: %d %s, want passed %v with %d left", code, body, want, left)
		}
	}
	check(false, 1)
	inNode(t, st.Runtime, id, "tokyo", "echo yes > /root/done.txt")
	inNode(t, st.Runtime, id, "osaka", "touch /root/ready")
	check(true, 0)

	var res grading.Results
	if code, err := admin.Do("POST", "/api/admin/session/"+id+"/regrade", nil, &res); err != nil || code != 200 {
		t.Fatalf("regrade: %d %v", code, err)
	}
	for _, tr := range res.Tasks {
		for _, cr := range tr.Checks {
			if !cr.Passed || cr.Error != "" {
				t.Errorf("check %q on the real lab: %+v", cr.Name, cr)
			}
		}
	}
	if res.Score != 20 {
		t.Fatalf("regrade: score %d of %d, want 20 (the checks, no choice answered)", res.Score, res.MaxScore)
	}

	// The deadline passes: the expiry sweep submits, the archive grades.
	if _, err := st.Store.Update(ctx, id, func(s *session.Session) error {
		s.Deadline = time.Now().Add(-time.Second) // a fixture: the clock ran out
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.WaitStatus(t, id, testlab.ArchiveTimeout, "expired")
	last, err := st.Store.LatestResults(ctx, id)
	if err != nil || last.Trigger != grading.TriggerDeadline || last.Score != 20 {
		t.Fatalf("results after the deadline: %+v, %v", last, err)
	}
	h, _ := st.Store.ResultsHistory(ctx, id)
	if len(h) != 2 {
		t.Errorf("%d gradings kept, want the regrade and the deadline's", len(h))
	}
	m, err := st.Store.Manifest(ctx, id)
	if err != nil || m.Results == nil || m.Reason != session.ByDeadline {
		t.Fatalf("manifest: %+v, %v", m, err)
	}
	if !last.GradedAt.Before(m.CreatedAt.Add(time.Second)) {
		t.Errorf("graded at %s, after the snapshot of %s", last.GradedAt, m.CreatedAt)
	}
}
