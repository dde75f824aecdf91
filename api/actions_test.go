package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// TestAdminRoutesRefuseOthers walks every admin route three times: with no
// credentials (401), with a candidate's token (403) and as the admin (2xx).
// The admin pass runs the real actions against a real lab.
func TestAdminRoutesRefuseOthers(t *testing.T) {
	st := startStack(t, nil)
	cand, a := readyLab(t, st, "ann@example.com")
	other := st.Client()
	b := other.Login(t, "bob@example.com") // a session without a lab, for the ending actions
	if code, err := cand.Do("POST", "/api/session/"+a+"/terminal/tokyo/history", map[string]any{"commands": []string{"hostname"}}, nil); err != nil || code != 200 {
		t.Fatalf("post history: %d %v", code, err)
	}
	admin := st.Admin()

	routes := []struct {
		method, path string
		body         any
		want         int
	}{
		{"GET", "/api/admin/sessions?status=ready", nil, 200},
		{"GET", "/api/admin/session/" + a + "/details", nil, 200},
		{"GET", "/api/admin/session/" + a + "/files/terminal-logs/tokyo.json", nil, 200},
		{"POST", "/api/admin/session/" + a + "/snapshot", nil, 202},
		{"POST", "/api/session/" + a + "/snapshot", nil, 202},
		{"POST", "/api/admin/session/" + a + "/extend", map[string]any{"minutes": 5, "reason": "late start"}, 200},
		{"POST", "/api/admin/session/" + a + "/nodes/osaka/reset", nil, 202},
		{"POST", "/api/admin/session/" + a + "/terminals/tokyo/watch", nil, 200},
		{"POST", "/api/admin/session/" + b + "/submit", nil, 202},
		{"POST", "/api/admin/session/" + b + "/cleanup", nil, 202},
		{"GET", "/api/admin/retention?days=30", nil, 200},
		{"GET", "/metrics", nil, 200},
		{"GET", "/admin/monitor/", nil, 200},
		{"GET", "/admin/monitor/api/queues", nil, 200},
		{"POST", "/admin/monitor/api/queues/low:pause", nil, 204},
	}
	callers := []struct {
		name   string
		client *testlab.Client
		want   func(admin int) int
	}{
		{"no credentials", st.Client(), func(int) int { return http.StatusUnauthorized }},
		{"candidate token", cand, func(int) int { return http.StatusForbidden }},
		{"admin token", admin, func(w int) int { return w }},
	}
	eng := testlab.NewEngine(t)
	containerIDs := func() map[string]string {
		ids := map[string]string{}
		for _, n := range []string{"tokyo", "osaka"} {
			ids[n], _ = eng.Inspect(t, lab.ContainerName(a, n))["Id"].(string)
		}
		return ids
	}
	before := containerIDs()
	for _, who := range callers {
		t.Run(who.name, func(t *testing.T) {
			for _, r := range routes {
				code, err := who.client.Do(r.method, r.path, r.body, nil)
				if err != nil {
					// Non-JSON answers (the monitor's page, metrics) are fine here.
					if !strings.Contains(err.Error(), "decode") {
						t.Fatalf("%s %s: %v", r.method, r.path, err)
					}
				}
				if want := who.want(r.want); code != want {
					t.Errorf("%s %s: %d, want %d", r.method, r.path, code, want)
				}
			}
		})
	}

	// Every action left its audit entry, and the workers finished theirs.
	d := waitAudit(t, admin, a, "worker", "node-reset-done")
	d = waitAudit(t, admin, a, "worker", "snapshot-done")
	for _, action := range []string{"snapshot", "extend-deadline", "reset-node", "watch-terminal"} {
		if auditCount(d, "admin", action) == 0 {
			t.Errorf("session %s: no admin %q audit entry: %+v", a, action, d.Audit)
		}
	}
	if n := auditCount(d, "admin", "snapshot"); n != 2 {
		t.Errorf("two snapshot requests left %d audit entries", n)
	}
	db := getDetails(t, admin, b)
	for _, action := range []string{"force-submit", "cleanup-after-archive"} {
		if auditCount(db, "admin", action) == 0 {
			t.Errorf("session %s: no admin %q audit entry: %+v", b, action, db.Audit)
		}
	}
	other.WaitStatus(t, b, testlab.ArchiveTimeout, "completed")

	t.Run("reset gave osaka a fresh container", func(t *testing.T) {
		after := containerIDs()
		if after["osaka"] == "" || after["osaka"] == before["osaka"] {
			t.Errorf("osaka container %q, before %q: want a new one", after["osaka"], before["osaka"])
		}
		if after["tokyo"] == "" || after["tokyo"] != before["tokyo"] {
			t.Errorf("tokyo was replaced too: %q → %q", before["tokyo"], after["tokyo"])
		}
	})

	t.Run("extend moved the deadline and its index", func(t *testing.T) {
		var e struct {
			Detail struct {
				Before   time.Time `json:"deadline_before"`
				Deadline time.Time `json:"deadline"`
			} `json:"detail"`
		}
		for _, x := range d.Audit {
			if x.Action == "extend-deadline" {
				e.Detail.Before, _ = time.Parse(time.RFC3339Nano, x.Detail["deadline_before"].(string))
				e.Detail.Deadline, _ = time.Parse(time.RFC3339Nano, x.Detail["deadline"].(string))
			}
		}
		if got := e.Detail.Deadline.Sub(e.Detail.Before); got != 5*time.Minute {
			t.Fatalf("deadline moved by %s, want 5m", got)
		}
		if !d.Session.Deadline.Equal(e.Detail.Deadline) {
			t.Fatalf("session deadline %s, audit says %s", d.Session.Deadline, e.Detail.Deadline)
		}
		ctx := context.Background()
		due, err := st.Store.DueDeadlines(ctx, e.Detail.Deadline.Add(-time.Second), 100)
		if err != nil || contains(due, a) {
			t.Fatalf("due a second before the new deadline: %v %v", due, err)
		}
		due, err = st.Store.DueDeadlines(ctx, e.Detail.Deadline, 100)
		if err != nil || !contains(due, a) {
			t.Fatalf("not due at the new deadline: %v %v", due, err)
		}
	})

	t.Run("snapshot downloads match the manifest", func(t *testing.T) {
		if d.Manifest == nil || len(d.Manifest.Files) != 4 {
			t.Fatalf("manifest = %+v, want a tar and a log per node", d.Manifest)
		}
		for _, f := range d.Manifest.Files {
			resp := fetch(t, st.URL+"/api/admin/session/"+a+"/files/snapshots/"+f.Name, st.AdminToken)
			if resp.StatusCode != 200 {
				t.Fatalf("download %s: %s", f.Name, resp.Status)
			}
			if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename=`+f.Name {
				t.Errorf("download %s: Content-Disposition %q", f.Name, cd)
			}
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if sum := hex.EncodeToString(h.Sum(nil)); n != f.Size || sum != f.SHA256 || resp.Header.Get("X-Checksum-Sha256") != sum {
				t.Errorf("download %s: %d bytes sha256 %s (header %s), manifest %d %s", f.Name, n, sum, resp.Header.Get("X-Checksum-Sha256"), f.Size, f.SHA256)
			}
		}
	})

	t.Run("monitor paused the queue for real", func(t *testing.T) {
		qs, err := st.Inspector.GetQueueInfo("low")
		if err != nil || !qs.Paused {
			t.Fatalf("low queue after pause through the monitor: %+v %v", qs, err)
		}
		if err := st.Inspector.UnpauseQueue("low"); err != nil {
			t.Fatal(err)
		}
	})
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// TestAdminActionsRefuseBadInput: every malformed or out-of-place request
// gets a 4xx that says why, and nothing changes.
func TestAdminActionsRefuseBadInput(t *testing.T) {
	st := memStack(t, nil)
	c := st.Client()
	id := c.Login(t, "cy@example.com") // created: no lab yet
	done := st.Client()
	ended := done.Login(t, "dee@example.com")
	admin := st.Admin()
	code, err := admin.Do("POST", "/api/admin/session/"+ended+"/submit", nil, nil)
	must(t, code, err, 202, "submit")
	done.WaitStatus(t, ended, testlab.ArchiveTimeout, "completed")

	cases := []struct {
		name         string
		method, path string
		body         any
		want         int
	}{
		{"extend by zero", "POST", "/api/admin/session/" + id + "/extend", map[string]any{"minutes": 0}, 400},
		{"extend by two days", "POST", "/api/admin/session/" + id + "/extend", map[string]any{"minutes": 2880}, 400},
		{"extend below a minute in all", "POST", "/api/admin/session/" + id + "/extend", map[string]any{"minutes": -30}, 400},
		{"extend with text minutes", "POST", "/api/admin/session/" + id + "/extend", `{"minutes":"ten"}`, 400},
		{"extend with no body", "POST", "/api/admin/session/" + id + "/extend", nil, 400},
		{"extend with unknown field", "POST", "/api/admin/session/" + id + "/extend", `{"minutes":5,"admin":true}`, 400},
		{"extend an ended session", "POST", "/api/admin/session/" + ended + "/extend", map[string]any{"minutes": 5}, 409},
		{"submit an ended session", "POST", "/api/admin/session/" + ended + "/submit", nil, 409},
		{"reset a node of a lab not up", "POST", "/api/admin/session/" + id + "/nodes/tokyo/reset", nil, 409},
		{"reset a node not in the exam", "POST", "/api/admin/session/" + id + "/nodes/kyoto/reset", nil, 404},
		{"reset a malformed node", "POST", "/api/admin/session/" + id + "/nodes/Tokyo!/reset", nil, 400},
		{"watch without a lab", "POST", "/api/admin/session/" + id + "/terminals/tokyo/watch", nil, 409},
		{"snapshot without a lab", "POST", "/api/admin/session/" + id + "/snapshot", nil, 409},
		{"unknown session", "POST", "/api/admin/session/zzzzzzzzzzzz/submit", nil, 404},
		{"malformed session id", "POST", "/api/admin/session/..%2Fetc/submit", nil, 400},
		{"download from another folder", "GET", "/api/admin/session/" + ended + "/files/answers/t1-hostname.json", nil, 404},
		{"download a dot-dot name", "GET", "/api/admin/session/" + ended + "/files/snapshots/..%2Fmetadata.json", nil, 400},
		{"download a hidden name", "GET", "/api/admin/session/" + ended + "/files/snapshots/.manifest.json.tmp", nil, 400},
		{"download a missing file", "GET", "/api/admin/session/" + ended + "/files/snapshots/nothing.tar", nil, 404},
		{"download from an unknown session", "GET", "/api/admin/session/zzzzzzzzzzzz/files/snapshots/manifest.json", nil, 404},
		{"retention with zero days", "GET", "/api/admin/retention?days=0", nil, 400},
		{"retention with text days", "GET", "/api/admin/retention?days=week", nil, 400},
		{"retention off and no days", "GET", "/api/admin/retention", nil, 400},
		{"sessions sorted by password", "GET", "/api/admin/sessions?sort=password", nil, 400},
		{"sessions in a made-up state", "GET", "/api/admin/sessions?status=paused", nil, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				Error string `json:"error"`
			}
			code, err := admin.Do(tc.method, tc.path, tc.body, &out)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.want || out.Error == "" {
				t.Fatalf("%d %q, want %d with a reason", code, out.Error, tc.want)
			}
		})
	}
	d := getDetails(t, admin, id)
	if d.Session.Status != "created" || d.Session.Duration != 30*60 || len(d.Audit) != 0 {
		t.Fatalf("refused requests changed the session: %+v, audit %+v", d.Session, d.Audit)
	}
}

// TestOpsEndpoints: health and readiness answer without credentials (they
// reveal nothing), metrics need the admin on the API, and a process's ops
// listener serves all three for worker-only deployments.
func TestOpsEndpoints(t *testing.T) {
	st := memStack(t, func(c *config.Config) { c.OpsListen = "127.0.0.1:0" })
	st.Client().Login(t, "ops@example.com")
	ops := "http://" + st.OpsAddr()
	if st.OpsAddr() == "" {
		t.Fatal("ops listener not started")
	}
	cases := []struct {
		name, url, token string
		want             int
		body             string
	}{
		{"api healthz", st.URL + "/healthz", "", 200, `"status":"ok"`},
		{"api readyz", st.URL + "/readyz", "", 200, `"checks":{`},
		{"api metrics without admin", st.URL + "/metrics", "", 401, "admin credentials required"},
		{"api metrics as admin", st.URL + "/metrics", st.AdminToken, 200, `examlab_sessions{state="created"} 1`},
		{"ops healthz", ops + "/healthz", "", 200, `"role":"serve"`},
		{"ops readyz", ops + "/readyz", "", 200, `"redis":"ok"`},
		{"ops metrics", ops + "/metrics", "", 200, `examlab_queue_tasks{queue="critical",state="pending"}`},
		{"ops has no admin api", ops + "/api/admin/sessions", st.AdminToken, 404, "no such route"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := fetch(t, tc.url, tc.token)
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want || !strings.Contains(string(b), tc.body) {
				t.Fatalf("%d %s, want %d containing %q", resp.StatusCode, b, tc.want, tc.body)
			}
		})
	}
	t.Run("readyz fails when redis is gone", func(t *testing.T) {
		st.Redis.Close() // the platform's own client; the probe reports it
		resp := fetch(t, ops+"/readyz", "")
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 503 || !strings.Contains(string(b), `"redis":"failing"`) || strings.Contains(string(b), "closed") {
			t.Fatalf("%d %s, want 503 naming redis without the error text", resp.StatusCode, b)
		}
	})
}
