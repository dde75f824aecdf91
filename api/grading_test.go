package api_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// These tests grade labs of the in-memory runtime (testlab.Graded), with
// the platform's real store, queue and workers on a private redis-server:
// what the API makes of results, marks and a candidate's checks. That the
// checks judge real containers with the grader's own tools is the grading
// package's and the runtimes' to show.

// gradingStack runs the platform on testdata/checks.yaml.
func gradingStack(t *testing.T) (*testlab.Stack, testlab.Graded) {
	t.Helper()
	examFile, err := filepath.Abs("testdata/checks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// A known address, so that pages come from the configured public URL.
	addr := freeAddr(t)
	rt := testlab.NewGraded()
	st := testlab.Start(t, testlab.Options{
		Platform: platform.Options{Runtime: rt},
		Config: func(c *config.Config) {
			c.ExamFile = examFile
			c.Listen, c.PublicURL = addr, "http://"+addr
		},
	})
	return st, rt
}

// The check commands, expected outputs and hidden names of checks.yaml:
// none may ever reach a candidate.
var checkSecrets = []string{"cat /root/done.txt", "test -f", "^yes$", "secret-marker-check", "/.examlab"}

// inNode runs a shell line in a node of the session's lab, as the
// candidate would in a terminal.
func inNode(t *testing.T, rt lab.Runner, id, node, line string) {
	t.Helper()
	if out, code, err := lab.Output(context.Background(), rt, id, node, "sh", "-c", line); err != nil || code != 0 {
		t.Fatalf("%s in %s: %d %v %s", line, node, code, err, out)
	}
}

// raw sends a request and returns the status and the body as it came.
func raw(t *testing.T, c *testlab.Client, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.Base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func noSecrets(t *testing.T, what string, body []byte) {
	t.Helper()
	for _, s := range checkSecrets {
		if bytes.Contains(body, []byte(s)) {
			t.Errorf("%s holds %q: %s", what, s, body)
		}
	}
}

type checkAnswer struct {
	Task   string `json:"task"`
	Passed bool   `json:"passed"`
	Checks []struct {
		Name   string `json:"name"`
		Passed bool   `json:"passed"`
	} `json:"checks"`
	Hidden *struct {
		Passed int `json:"passed"`
		Total  int `json:"total"`
	} `json:"hidden"`
	Remaining int    `json:"remaining"`
	Limit     int    `json:"limit"`
	Error     string `json:"error"`
}

func TestCheckMyWork(t *testing.T) {
	st, rt := gradingStack(t)
	c := st.Client()
	id := c.Login(t, "ada@example.com")
	path := "/api/session/" + id + "/tasks/t1-marker/check"

	// Before the lab is live there is nothing to check, and nothing is counted.
	code, body := raw(t, c, "POST", path, nil)
	if code != http.StatusConflict {
		t.Fatalf("check before the lab is up: %d %s", code, body)
	}
	c.StartLab(t, id)

	check := func(wantCode int) checkAnswer {
		t.Helper()
		code, body := raw(t, c, "POST", path, nil)
		noSecrets(t, "the check's answer", body)
		var a checkAnswer
		if err := json.Unmarshal(body, &a); err != nil || code != wantCode {
			t.Fatalf("check: %d %s (%v), want %d", code, body, err, wantCode)
		}
		return a
	}
	a := check(http.StatusOK)
	names := []string{}
	for _, ch := range a.Checks {
		names = append(names, ch.Name)
		if ch.Passed {
			t.Errorf("check %q passed before any work", ch.Name)
		}
	}
	if a.Passed || !slices.Equal(names, []string{"tokyo says yes", "osaka is ready"}) || a.Hidden == nil ||
		a.Hidden.Total != 1 || a.Hidden.Passed != 0 || a.Remaining != 1 || a.Limit != 2 {
		t.Fatalf("first check = %+v", a)
	}

	inNode(t, rt, id, "tokyo", "echo yes > /root/done.txt")
	inNode(t, rt, id, "osaka", "touch /root/ready")
	a = check(http.StatusOK)
	if !a.Passed || a.Hidden.Passed != 1 || a.Remaining != 0 {
		t.Fatalf("check after the work = %+v", a)
	}
	for _, ch := range a.Checks {
		if !ch.Passed {
			t.Errorf("check %q failed after the work", ch.Name)
		}
	}
	a = check(http.StatusTooManyRequests)
	if a.Remaining != 0 || !strings.Contains(a.Error, "used all 2 checks") {
		t.Fatalf("a third check = %+v", a)
	}

	var left struct {
		Enabled   bool           `json:"enabled"`
		Limit     int            `json:"limit"`
		Remaining map[string]int `json:"remaining"`
	}
	if code, err := c.Do("GET", "/api/session/"+id+"/checks", nil, &left); err != nil || code != 200 ||
		!left.Enabled || left.Limit != 2 || len(left.Remaining) != 1 || left.Remaining["t1-marker"] != 0 {
		t.Fatalf("checks left: %d %v %+v", code, err, left)
	}

	// Bad input: plain 4xx, nothing counted.
	for _, tc := range []struct {
		name, path string
		want       int
	}{
		{"a task without checks", "/api/session/" + id + "/tasks/t2-choice/check", http.StatusBadRequest},
		{"an unknown task", "/api/session/" + id + "/tasks/t9-nope/check", http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := raw(t, c, "POST", tc.path, nil)
			var e struct{ Error string }
			json.Unmarshal(body, &e)
			if code != tc.want || e.Error == "" {
				t.Fatalf("%d %s, want %d with a message", code, body, tc.want)
			}
		})
	}
	other := st.Client()
	other.Login(t, "bob@example.com")
	if code, body := raw(t, other, "POST", path, nil); code != http.StatusForbidden {
		t.Fatalf("someone else's session: %d %s", code, body)
	}
	admin := st.Admin()
	if code, body := raw(t, admin, "POST", path, nil); code != http.StatusForbidden {
		t.Fatalf("an admin pressing the candidate's button: %d %s", code, body)
	}

	// The exam and the page's data never hold a check either.
	for _, p := range []string{"/api/exam", "/api/session/" + id + "/checks", "/api/session/" + id + "/status"} {
		_, body := raw(t, c, "GET", p, nil)
		noSecrets(t, p, body)
	}

	// The candidate's checks are audited but are not the session's results.
	d := getDetails(t, admin, id)
	if n := auditCount(d, "candidate", "check-my-work"); n != 2 {
		t.Errorf("%d check-my-work audit entries, want 2", n)
	}
	if _, err := st.Store.LatestResults(context.Background(), id); err == nil {
		t.Errorf("a candidate's check wrote the session's results")
	}
}

func TestCheckMyWorkOff(t *testing.T) {
	st := memStack(t, nil) // two-nodes.yaml: no checks, candidate_checks 0
	c := st.Client()
	id := c.Login(t, "ada@example.com")
	c.StartLab(t, id)
	code, body := raw(t, c, "POST", "/api/session/"+id+"/tasks/t1-hostname/check", nil)
	if code != http.StatusNotFound || !strings.Contains(string(body), "not available") {
		t.Fatalf("check in an exam without it: %d %s", code, body)
	}
}

type gradingDetails struct {
	Grading struct {
		Results *grading.Results      `json:"results"`
		History []*grading.Results    `json:"history"`
		Marks   map[string]store.Mark `json:"marks"`
		Score   struct {
			Score    int `json:"score"`
			MaxScore int `json:"max_score"`
		} `json:"score"`
	} `json:"grading"`
}

func TestRegradeMarksAndExport(t *testing.T) {
	st, rt := gradingStack(t)
	admin := st.Admin()
	ctx := context.Background()

	type cand struct {
		email, name string
		c           *testlab.Client
		id          string
	}
	people := []*cand{
		{email: "ada@example.com", name: "Ada Lovelace"},
		{email: "bob@example.com", name: "Bob, \"the builder\""},
		{email: "cy@example.com", name: "=HYPERLINK(\"x\")\nsecond line"},
	}
	for _, p := range people {
		p.c = st.Client()
		var out struct {
			SessionID string `json:"session_id"`
			Token     string `json:"token"`
		}
		if code, err := p.c.Do("POST", "/api/login", map[string]string{"email": p.email, "name": p.name}, &out); err != nil || code != 200 {
			t.Fatalf("login %s: %d %v", p.email, code, err)
		}
		p.c.Token, p.id = out.Token, out.SessionID
		p.c.StartLab(t, p.id)
		time.Sleep(5 * time.Millisecond) // distinct creation times order the export
	}
	ada, bob, cy := people[0], people[1], people[2]
	answer := func(p *cand, task, value string) {
		t.Helper()
		if code, err := p.c.Do("PUT", "/api/session/"+p.id+"/answers/"+task, map[string]string{"value": value}, nil); err != nil || code != 200 {
			t.Fatalf("answer %s: %d %v", task, code, err)
		}
	}
	regrade := func(p *cand, want int) *grading.Results {
		t.Helper()
		var res grading.Results
		code, err := admin.Do("POST", "/api/admin/session/"+p.id+"/regrade", nil, &res)
		if err != nil || code != want {
			t.Fatalf("regrade %s: %d %v, want %d", p.email, code, err, want)
		}
		return &res
	}

	// Ada does everything; her first regrade comes before her work.
	if r := regrade(ada, 200); r.Score != 0 || r.Trigger != grading.TriggerRegrade || r.ExamVersion != "2026.1" {
		t.Fatalf("regrade before any work: %+v", r)
	}
	inNode(t, rt, ada.id, "tokyo", "echo yes > /root/done.txt")
	inNode(t, rt, ada.id, "osaka", "touch /root/ready")
	answer(ada, "t2-choice", "beta")
	answer(ada, "t3-essay", "Static routes via g1.")
	r := regrade(ada, 200)
	if r.Score != 30 || r.MaxScore != 40 {
		t.Fatalf("Ada's regrade: score %d of %d, want 30 of 40 (checks 20, choice 10)", r.Score, r.MaxScore)
	}
	for _, tr := range r.Tasks {
		for _, cr := range tr.Checks {
			if !cr.Passed || cr.ExitCode != 0 || cr.Node == "" {
				t.Errorf("check %q of Ada: %+v", cr.Name, cr)
			}
		}
	}
	// Bob gets tokyo right and the choice wrong.
	inNode(t, rt, bob.id, "tokyo", "echo yes > /root/done.txt")
	answer(bob, "t2-choice", "alpha")
	if r := regrade(bob, 200); r.Score != 15 {
		t.Fatalf("Bob's regrade: %d, want 15 (tokyo 10, hidden 5)", r.Score)
	}
	// Cy answers the choice right but is never graded.
	answer(cy, "t2-choice", "beta")

	// Manual marks: bad input first.
	markPath := "/api/admin/session/" + ada.id + "/marks/"
	for _, tc := range []struct {
		name, task string
		body       any
		want       int
	}{
		{"an unknown task", "t9-nope", map[string]any{"points": 1}, 404},
		{"a task its checks score", "t1-marker", map[string]any{"points": 1}, 400},
		{"a choice task", "t2-choice", map[string]any{"points": 1}, 400},
		{"too many points", "t3-essay", map[string]any{"points": 11}, 400},
		{"negative points", "t3-essay", map[string]any{"points": -1}, 400},
		{"no points", "t3-essay", map[string]any{"note": "x"}, 400},
		{"points as text", "t3-essay", map[string]any{"points": "7"}, 400},
		{"an unknown field", "t3-essay", map[string]any{"points": 1, "grade": "A"}, 400},
		{"a note too long", "t3-essay", map[string]any{"points": 1, "note": strings.Repeat("n", store.MaxMarkNote+1)}, 413},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := raw(t, admin, "PUT", markPath+tc.task, tc.body)
			var e struct{ Error string }
			json.Unmarshal(body, &e)
			if code != tc.want || e.Error == "" || strings.Contains(e.Error, "internal") {
				t.Fatalf("%d %s, want %d with a plain message", code, body, tc.want)
			}
		})
	}
	if code, body := raw(t, st.Client(), "PUT", markPath+"t3-essay", map[string]any{"points": 5}); code != 401 {
		t.Fatalf("a mark without admin credentials: %d %s", code, body)
	}
	var marked struct {
		Mark  store.Mark `json:"mark"`
		Score int        `json:"score"`
	}
	if code, err := admin.Do("PUT", markPath+"t3-essay", map[string]any{"points": 7, "note": "clear, misses g2"}, &marked); err != nil || code != 200 || marked.Score != 37 {
		t.Fatalf("mark: %d %v %+v, want Ada's score 37", code, err, marked)
	}
	var gd gradingDetails
	if code, err := admin.Do("GET", "/api/admin/session/"+ada.id+"/details", nil, &gd); err != nil || code != 200 {
		t.Fatal(code, err)
	}
	if len(gd.Grading.History) != 2 || gd.Grading.History[0].Score != 0 || gd.Grading.Results.Score != 30 ||
		gd.Grading.Marks["t3-essay"].Note != "clear, misses g2" || gd.Grading.Score.Score != 37 {
		t.Fatalf("Ada's grading details: %+v", gd.Grading)
	}
	if d := getDetails(t, admin, ada.id); auditCount(d, "admin", "regrade") != 2 || auditCount(d, "admin", "mark") != 1 {
		t.Fatalf("Ada's audit: %+v", d.Audit)
	}

	// The export, field by field.
	resp := fetch(t, st.URL+"/api/admin/results.csv", st.AdminToken)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") {
		t.Fatalf("results.csv: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	data, _ := io.ReadAll(resp.Body)
	recs, err := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(data, []byte("\ufeff")))).ReadAll()
	if err != nil {
		t.Fatalf("results.csv does not parse: %v\n%s", err, data)
	}
	graded := func(p *cand) string {
		res, err := st.Store.LatestResults(ctx, p.id)
		if err != nil {
			t.Fatal(err)
		}
		return res.GradedAt.UTC().Format("2006-01-02T15:04:05Z")
	}
	want := [][]string{
		{"email", "name", "session", "status", "score", "max_score", "t1-marker", "t2-choice", "t3-essay", "graded_at"},
		{ada.email, "Ada Lovelace", ada.id, "ready", "37", "40", "20", "10", "7", graded(ada)},
		{bob.email, "Bob, \"the builder\"", bob.id, "ready", "15", "40", "15", "0", "", graded(bob)},
		{cy.email, "'=HYPERLINK(\"x\")\nsecond line", cy.id, "ready", "10", "40", "", "10", "", ""},
	}
	if len(recs) != len(want) {
		t.Fatalf("results.csv has %d records, want %d:\n%s", len(recs), len(want), data)
	}
	for i := range want {
		if !slices.Equal(recs[i], want[i]) {
			t.Errorf("results.csv record %d:\n got %q\nwant %q", i, recs[i], want[i])
		}
	}

	var js struct {
		Tasks    []string `json:"tasks"`
		Sessions []struct {
			Email    string         `json:"email"`
			Name     string         `json:"name"`
			Session  string         `json:"session"`
			Status   string         `json:"status"`
			Score    int            `json:"score"`
			MaxScore int            `json:"max_score"`
			Tasks    map[string]int `json:"tasks"`
			GradedAt string         `json:"graded_at"`
		} `json:"sessions"`
	}
	if code, err := admin.Do("GET", "/api/admin/results.json", nil, &js); err != nil || code != 200 || len(js.Sessions) != 3 {
		t.Fatalf("results.json: %d %v %+v", code, err, js)
	}
	if s := js.Sessions[1]; s.Email != bob.email || s.Name != bob.name || s.Score != 15 || s.Tasks["t1-marker"] != 15 ||
		s.Tasks["t2-choice"] != 0 || len(s.Tasks) != 2 || s.GradedAt != graded(bob) {
		t.Errorf("results.json Bob = %+v", s)
	}
	if s := js.Sessions[2]; s.Name != cy.name || s.Score != 10 || s.GradedAt != "" {
		t.Errorf("results.json Cy (raw name, as given) = %+v", s)
	}

	// The listing: scores, sorted and filtered.
	var list struct {
		Sessions []struct {
			Email string `json:"email"`
			Score *int   `json:"score"`
		} `json:"sessions"`
	}
	emails := func(q string) []string {
		t.Helper()
		if code, err := admin.Do("GET", "/api/admin/sessions?"+q, nil, &list); err != nil || code != 200 {
			t.Fatalf("sessions?%s: %d %v", q, code, err)
		}
		var out []string
		for _, s := range list.Sessions {
			out = append(out, s.Email)
		}
		return out
	}
	for _, tc := range []struct{ q string }{{"sort=score&order=desc"}} {
		if got := emails(tc.q); !slices.Equal(got, []string{ada.email, bob.email, cy.email}) {
			t.Errorf("sessions?%s = %v", tc.q, got)
		}
	}
	if got := emails("passed=yes"); !slices.Equal(got, []string{ada.email}) {
		t.Errorf("passed (pass mark 25) = %v", got)
	}
	if got := emails("passed=no&sort=score"); !slices.Equal(got, []string{bob.email}) {
		t.Errorf("not passed = %v (Cy was never graded or marked: no score)", got)
	}
	if got := emails("score_min=10&score_max=20"); !slices.Equal(got, []string{bob.email}) {
		t.Errorf("scores 10 to 20 = %v", got)
	}
	if got := emails("passed=yes&pass_mark=10&sort=score&order=asc"); !slices.Equal(got, []string{bob.email, ada.email}) {
		t.Errorf("passed at 10 = %v", got)
	}
	for _, q := range []string{"score_min=x", "score_min=30&score_max=10", "passed=maybe", "pass_mark=10", "sort=points"} {
		if code, body := raw(t, admin, "GET", "/api/admin/sessions?"+q, nil); code != 400 {
			t.Errorf("sessions?%s: %d %s, want 400", q, code, body)
		}
	}

	// Submitted, Ada's lab is graded before the archive and kept in it;
	// once cleaned up, a regrade runs in a review lab.
	if code, err := ada.c.Do("POST", "/api/session/"+ada.id+"/submit", nil, nil); err != nil || code >= 300 {
		t.Fatalf("submit: %d %v", code, err)
	}
	ada.c.WaitStatus(t, ada.id, testlab.ArchiveTimeout, "completed")
	res, err := st.Store.LatestResults(ctx, ada.id)
	if err != nil || res.Trigger != grading.TriggerSubmit || res.Score != 30 {
		t.Fatalf("results after the submit: %+v, %v", res, err)
	}
	m, err := st.Store.Manifest(ctx, ada.id)
	if err != nil || m.Results == nil || m.Results.Name != store.ResultsFile || m.Results.SHA256 == "" {
		t.Fatalf("the archive's manifest does not hold results.json: %+v, %v", m, err)
	}
	// Its lab gone, a regrade is queued to run in a review lab restored
	// from the archive (api/review_test.go runs one on real containers).
	code, body := raw(t, admin, "POST", "/api/admin/session/"+ada.id+"/regrade", nil)
	if code != http.StatusAccepted || !strings.Contains(string(body), `"in_review_lab":true`) {
		t.Fatalf("regrade of a completed session: %d %s", code, body)
	}
	if code, body := raw(t, admin, "DELETE", "/api/admin/session/"+ada.id+"/review", nil); code != http.StatusAccepted {
		t.Fatalf("end the review lab: %d %s", code, body)
	}
	if code, body := raw(t, admin, "POST", "/api/admin/session/nosuchsessio/regrade", nil); code != 404 {
		t.Fatalf("regrade of a missing session: %d %s", code, body)
	}
}
