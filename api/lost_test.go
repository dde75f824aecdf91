package api_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/testlab"
)

// lostHosts is the in-memory runtime whose hosts can be lost: the labs it
// is told of report every node lost, with a reason that names the client,
// until they are destroyed (a fresh lab lands on a healthy host).
type lostHosts struct {
	*labtest.Memory
	mu   sync.Mutex
	lost map[string]bool
}

func (l *lostHosts) lose(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost[id] = true
}

func (l *lostHosts) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	out, err := l.Memory.Status(ctx, spec)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil && l.lost[spec.SessionID] {
		for i := range out {
			out[i].State, out[i].Detail = lab.StateLost, "client client2 is down since 12:03:04 UTC; allocation 0a1b2c3d is lost"
			out[i].ClientNode = "client2"
		}
	}
	return out, err
}

func (l *lostHosts) Destroy(ctx context.Context, id string) error {
	l.mu.Lock()
	delete(l.lost, id)
	l.mu.Unlock()
	return l.Memory.Destroy(ctx, id)
}

// candidateView is what the candidate's status answer says of a paused lab.
type candidateView struct {
	Status    string           `json:"status"`
	Paused    bool             `json:"paused"`
	Error     string           `json:"error"`
	Remaining int64            `json:"remaining_seconds"`
	Nodes     []lab.NodeStatus `json:"nodes"`
}

// TestLostLabThroughTheAPI runs the platform on a runtime whose hosts can
// be lost: the lost-lab sweep marks the session within its period; the
// candidate reads plain words and a stopped clock; the admin list and page
// show the lab lost with the reason; re-provision and archive-reachable
// are admin-only, refuse (409) where they do not apply, and do their work.
func TestLostLabThroughTheAPI(t *testing.T) {
	rt := &lostHosts{Memory: labtest.NewMemory(labtest.MemoryOptions{}), lost: map[string]bool{}}
	examFile, err := filepath.Abs("testdata/two-nodes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	st := testlab.Start(t, testlab.Options{
		Platform: platform.Options{Runtime: rt},
		Config:   func(c *config.Config) { c.ExamFile = examFile },
	})
	admin := st.Admin()
	cand, a := readyLab(t, st, "ann@example.com")
	_, b := readyLab(t, st, "bob@example.com")
	waiting := st.Client().Login(t, "cy@example.com")

	// Nothing is lost yet, and a session without a lab has nothing to
	// archive: the actions refuse in plain words.
	var refusal struct {
		Error string `json:"error"`
	}
	code, err := admin.Do("POST", "/api/admin/session/"+a+"/reprovision", nil, &refusal)
	if code != 409 || err != nil || !strings.Contains(refusal.Error, "not lost") {
		t.Errorf("reprovision of a healthy lab: %d %q %v, want 409 saying it is not lost", code, refusal.Error, err)
	}
	code, err = admin.Do("POST", "/api/admin/session/"+waiting+"/archive-reachable", nil, &refusal)
	if code != 409 || err != nil || !strings.Contains(refusal.Error, "only a ready session") {
		t.Errorf("archive-reachable of a session without a lab: %d %q %v, want 409", code, refusal.Error, err)
	}
	for _, path := range []string{"/reprovision", "/archive-reachable"} {
		if code, _ := cand.Do("POST", "/api/admin/session/"+a+path, nil, nil); code != 403 {
			t.Errorf("a candidate's POST %s: %d, want 403", path, code)
		}
		if code, _ := st.Client().Do("POST", "/api/admin/session/"+a+path, nil, nil); code != 401 {
			t.Errorf("an anonymous POST %s: %d, want 401", path, code)
		}
	}

	rt.lose(a)
	waitAudit(t, admin, a, "scheduler", "lab-lost")

	var v candidateView
	if code, err := cand.Do("GET", "/api/session/"+a+"/status", nil, &v); code != 200 || err != nil {
		t.Fatalf("candidate status: %d %v", code, err)
	}
	if v.Status != "ready" || !v.Paused || v.Error != session.NoticeLabUnavailable || v.Remaining <= 0 {
		t.Errorf("the candidate sees %+v; want ready, paused, told %q, with time left", v, session.NoticeLabUnavailable)
	}
	for _, n := range v.Nodes {
		if strings.Contains(n.Detail, "client") || n.ClientNode != "" || n.AllocID != "" {
			t.Errorf("the candidate is shown the runtime's words: %+v", n)
		}
	}
	// The clock stands still.
	time.Sleep(1100 * time.Millisecond)
	var again candidateView
	cand.Do("GET", "/api/session/"+a+"/status", nil, &again)
	if again.Remaining != v.Remaining {
		t.Errorf("remaining moved from %d to %d while paused", v.Remaining, again.Remaining)
	}

	var list struct {
		Sessions []struct {
			ID       string `json:"id"`
			LabState string `json:"lab_state"`
		} `json:"sessions"`
	}
	if code, err := admin.Do("GET", "/api/admin/sessions?status=ready", nil, &list); code != 200 || err != nil {
		t.Fatalf("admin list: %d %v", code, err)
	}
	states := map[string]string{}
	for _, s := range list.Sessions {
		states[s.ID] = s.LabState
	}
	if states[a] != "lost" || states[b] != "" {
		t.Errorf("admin list lab states %v; want %s lost and %s healthy", states, a, b)
	}
	var page struct {
		Nodes    []lab.NodeStatus `json:"nodes"`
		Metadata struct {
			Trouble session.Trouble `json:"lab_trouble"`
		} `json:"metadata"`
	}
	if code, err := admin.Do("GET", "/api/admin/session/"+a+"/details", nil, &page); code != 200 || err != nil {
		t.Fatalf("admin details: %d %v", code, err)
	}
	if page.Metadata.Trouble.State != lab.StateLost || !strings.Contains(page.Metadata.Trouble.Reason, "client client2 is down") {
		t.Errorf("admin page trouble %+v", page.Metadata.Trouble)
	}
	for _, n := range page.Nodes {
		if n.State != lab.StateLost || !strings.Contains(n.Detail, "client client2 is down") {
			t.Errorf("admin page node %s: %s %q", n.Name, n.State, n.Detail)
		}
	}

	if code, err := admin.Do("POST", "/api/admin/session/"+a+"/reprovision", nil, nil); code != 202 || err != nil {
		t.Fatalf("reprovision: %d %v", code, err)
	}
	d := waitAudit(t, admin, a, "scheduler", "lab-reprovisioned")
	if auditCount(d, "admin", "reprovision") != 1 {
		t.Error("the admin's reprovision is not in the audit log")
	}
	var after candidateView
	cand.Do("GET", "/api/session/"+a+"/status", nil, &after)
	if after.Paused || after.Error != "" || after.Status != "ready" || after.Remaining < v.Remaining {
		t.Errorf("after reprovision the candidate sees %+v; want ready, running, with the %ds left when it stopped", after, v.Remaining)
	}
	if code, _ := admin.Do("POST", "/api/admin/session/"+a+"/reprovision", nil, nil); code != 409 {
		t.Errorf("a second reprovision of a healthy lab: %d, want 409", code)
	}

	// The other lab is lost too, and archived as far as it can be reached.
	rt.lose(b)
	waitAudit(t, admin, b, "scheduler", "lab-lost")
	if code, err := admin.Do("POST", "/api/admin/session/"+b+"/archive-reachable", nil, nil); code != 202 || err != nil {
		t.Fatalf("archive-reachable: %d %v", code, err)
	}
	d = waitAudit(t, admin, b, "admin", "archive-reachable")
	deadline := time.Now().Add(auditTimeout)
	for d.Manifest == nil && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		d = getDetails(t, admin, b)
	}
	if d.Manifest == nil || len(d.Manifest.Missing) != 2 {
		t.Fatalf("manifest after archive-reachable: %+v, want both nodes missing", d.Manifest)
	}
	if code, _ := admin.Do("POST", "/api/admin/session/"+b+"/archive-reachable", nil, nil); code != 409 {
		t.Errorf("archive-reachable of a submitted session: %d, want 409", code)
	}
}
