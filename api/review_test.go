package api_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/relay"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
	"github.com/examlab/examlab/workers"
)

// reviewTimeout bounds a review lab's restore: a lab provisioned and two
// nodes' archives (full exports of the lab image) applied, on a busy host.
const reviewTimeout = 5 * time.Minute

// reviewWork is what the candidate does in every node: a file changed
// (content, mode, owner), a directory with a setuid file and a symlink
// added, an image file deleted, and a directory deleted and made again
// (the image's contents of it gone).
const reviewWork = `set -e
printf 'changed\n' > /etc/motd; chmod 0640 /etc/motd; chown 1000:1000 /etc/motd
mkdir -p /opt/app; printf '#!/bin/sh\n' > /opt/app/run.sh; chmod 4755 /opt/app/run.sh; ln -s /etc/motd /opt/app/link
rm /etc/issue
rm -rf /etc/skel; mkdir /etc/skel; echo only > /etc/skel/only
`

// nodeState lists every path under /etc, /opt and /root with its mode,
// owner, type, link target, size and time (to the second, as archives keep
// it) and every file's sha256, but the files the engine makes in every
// container.
func nodeState(t *testing.T, rt lab.Runner, id, node string) string {
	t.Helper()
	out, code, err := lab.Output(context.Background(), rt, id, node, "sh", "-c",
		`find /etc /opt /root -xdev \( -path /etc/hosts -o -path /etc/hostname -o -path /etc/resolv.conf -o -path /etc/mtab \) -prune -o -printf '%p|%m|%U|%G|%y|%l|%s|%T@\n' | sort
find /etc /opt /root -xdev -type f ! -path /etc/hosts ! -path /etc/hostname ! -path /etc/resolv.conf -print0 | sort -z | xargs -0 sha256sum`)
	if err != nil || code != 0 {
		t.Fatalf("state of %s in %s: %d %v %s", node, id, code, err, out)
	}
	return regexp.MustCompile(`\|([0-9]+)\.[0-9]+\n`).ReplaceAllString(out, "|$1\n")
}

type reviewAnswer struct {
	Review  *store.Review `json:"review"`
	Created bool          `json:"created"`
	Error   string        `json:"error"`
	Queued  bool          `json:"queued"`
	InLab   bool          `json:"in_review_lab"`
}

// waitReview polls the session's review lab until done says so.
func waitReview(t *testing.T, admin *testlab.Client, id string, done func(*store.Review) bool) *store.Review {
	t.Helper()
	deadline := time.Now().Add(reviewTimeout)
	for {
		var a reviewAnswer
		if code, err := admin.Do("GET", "/api/admin/session/"+id+"/review", nil, &a); err != nil || code != 200 {
			t.Fatalf("review lab of %s: %d %v", id, code, err)
		}
		if done(a.Review) {
			return a.Review
		}
		if a.Review != nil && a.Review.Status == store.ReviewFailed {
			t.Fatalf("review lab failed: %s", a.Review.Detail)
		}
		if time.Now().After(deadline) {
			t.Fatalf("review lab of %s: still %+v after %s", id, a.Review, reviewTimeout)
		}
		time.Sleep(time.Second)
	}
}

func readyReview(rv *store.Review) bool { return rv != nil && rv.Status == store.ReviewReady }

// startReview asks for a review lab and waits until it is ready.
func startReview(t *testing.T, admin *testlab.Client, id string) *store.Review {
	t.Helper()
	var a reviewAnswer
	code, err := admin.Do("POST", "/api/admin/session/"+id+"/review", nil, &a)
	if err != nil || code != http.StatusAccepted || !a.Created || a.Review == nil {
		t.Fatalf("start review lab: %d %+v %v", code, a, err)
	}
	if a.Review.ID == id || lab.Short(a.Review.ID) == lab.Short(id) {
		t.Fatalf("the review lab took the session's own id %s", a.Review.ID)
	}
	return waitReview(t, admin, id, readyReview)
}

// TestReviewLab restores a finished session's lab from its archive — the
// change sets the archive task captured — and finds the candidate's state
// in every node (a full export's restore is proved in package changeset); it runs under its
// own names with admin terminals only, a regrade after the exam grades in
// it, the reaper leaves it alone while it lives and removes it once it
// expires, and an admin ends one early. An incomplete archive is refused
// with what is missing.
func TestReviewLab(t *testing.T) {
	requireLabImage(t)
	examFile, err := filepath.Abs("testdata/checks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	st := testlab.Start(t, testlab.Options{Config: func(c *config.Config) {
		c.ExamFile = examFile
		c.ExpireEvery = time.Second
		c.ReapEvery = time.Hour // the test runs the reaper itself
	}})
	ctx := context.Background()
	eng := testlab.NewEngine(t)
	cand, id := readyLab(t, st, "review@example.com")
	admin := st.Admin()
	inNode(t, st.Runtime, id, "tokyo", reviewWork+"echo yes > /root/done.txt")
	inNode(t, st.Runtime, id, "osaka", reviewWork+"touch /root/ready")
	want := map[string]string{}
	for _, n := range []string{"tokyo", "osaka"} {
		want[n] = nodeState(t, st.Runtime, id, n)
	}

	// Review labs are for sessions that have ended.
	code, body := raw(t, admin, "POST", "/api/admin/session/"+id+"/review", nil)
	if code != http.StatusConflict || !strings.Contains(string(body), "the session is ready") {
		t.Fatalf("review lab of a live session: %d %s, want 409", code, body)
	}
	if code, err := cand.Do("POST", "/api/session/"+id+"/submit", nil, nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("submit: %d %v", code, err)
	}
	cand.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")

	// Only admins: no credential, and a candidate's.
	if code, _ := raw(t, st.Client(), "POST", "/api/admin/session/"+id+"/review", nil); code != http.StatusUnauthorized {
		t.Errorf("review lab without credentials: %d, want 401", code)
	}
	if code, _ := raw(t, cand, "POST", "/api/admin/session/"+id+"/review", nil); code != http.StatusForbidden {
		t.Errorf("review lab with a candidate's token: %d, want 403", code)
	}
	if code, _ := raw(t, admin, "POST", "/api/admin/session/zzzzzzzzzzzz/review", nil); code != http.StatusNotFound {
		t.Errorf("review lab of an unknown session: %d, want 404", code)
	}

	// From the archive as the platform wrote it: change sets.
	if m, err := st.Store.Manifest(ctx, id); err != nil || m.Mode != lab.SnapshotChanges {
		t.Fatalf("the archive's manifest: %+v %v, want mode changes", m, err)
	}
	rv := startReview(t, admin, id)
	if rv.Mode != "changes" {
		t.Errorf("review lab mode %q, want changes", rv.Mode)
	}
	t.Cleanup(func() { st.Runtime.Destroy(context.Background(), rv.ID) })
	for n, w := range want {
		if got := nodeState(t, st.Runtime, rv.ID, n); got != w {
			t.Errorf("%s of the review lab (change sets) differs from the candidate's:\n%s", n, lineDiff(w, got))
		}
	}
	conts := eng.Containers(t, rv.ID)
	if len(conts) != 2 {
		t.Fatalf("review lab containers: %+v", conts)
	}
	for _, c := range conts {
		if !strings.HasPrefix(c.Names[0], "/exam-"+lab.Short(rv.ID)+"-") || c.Labels[workers.LabelReviewOf] != id || c.Labels[workers.LabelReview] != "true" {
			t.Errorf("review container %v labels %v", c.Names, c.Labels)
		}
	}
	if left := eng.Containers(t, id); len(left) != 0 {
		t.Errorf("the candidate's containers are back: %+v", left)
	}
	if again := startAgain(t, admin, id); again.ID != rv.ID {
		t.Errorf("a second ask started another review lab %s beside %s", again.ID, rv.ID)
	}

	// The reaper leaves a live review lab alone.
	removed, err := st.Handlers.ReapOnce(ctx)
	if err != nil || slices.Contains(removed, rv.ID) || len(eng.Containers(t, rv.ID)) != 2 {
		t.Fatalf("reaper on a live review lab: removed %v, %v", removed, err)
	}

	// Admin terminals reach its nodes; a candidate's credential does not.
	wsURL := "ws" + strings.TrimPrefix(st.URL, "http") + "/ws/admin/review/" + rv.ID + "/terminal/tokyo"
	runInTerminal(t, wsURL, http.Header{"Authorization": {"Bearer " + admin.Token}}, "cat /root/done.txt /etc/skel/only", "only")
	if code, _ := refusedTerminal(t, wsURL, http.Header{"Authorization": {"Bearer " + cand.Token}}); code != relay.CloseForbidden {
		t.Errorf("candidate's token on a review terminal: close %d, want %d", code, relay.CloseForbidden)
	}
	liveURL := "ws" + strings.TrimPrefix(st.URL, "http") + "/ws/admin/review/" + id + "/terminal/tokyo"
	if code, _ := refusedTerminal(t, liveURL, http.Header{"Authorization": {"Bearer " + admin.Token}}); code != relay.CloseNotFound {
		t.Errorf("a session's own id as a review lab: close %d, want %d", code, relay.CloseNotFound)
	}

	// A regrade after the exam grades in the running review lab.
	var rg reviewAnswer
	if code, err := admin.Do("POST", "/api/admin/session/"+id+"/regrade", nil, &rg); err != nil || code != http.StatusAccepted || !rg.InLab || rg.Review.ID != rv.ID {
		t.Fatalf("regrade after the exam: %d %+v %v", code, rg, err)
	}
	done := waitReview(t, admin, id, func(r *store.Review) bool { return r != nil && r.Regrade != nil && r.Regrade.State == "done" })
	res, err := st.Store.LatestResults(ctx, id)
	if err != nil || res.Trigger != grading.TriggerRegrade || res.SessionID != id || !strings.Contains(res.Note, "review lab "+rv.ID) || res.Score != 20 || done.Regrade.Score != 20 {
		t.Fatalf("results of the regrade: %+v %v", res, err)
	}

	// Past its time the reaper ends it and removes its lab.
	if _, err := st.Store.UpdateReview(ctx, rv.ID, func(r *store.Review) error {
		r.ExpiresAt = time.Now().Add(-time.Second) // a fixture: its time ran out
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	removed, err = st.Handlers.ReapOnce(ctx)
	if err != nil || !slices.Contains(removed, rv.ID) || len(eng.Containers(t, rv.ID)) != 0 {
		t.Fatalf("reaper on an expired review lab: removed %v, %v, containers %+v", removed, err, eng.Containers(t, rv.ID))
	}
	if r, err := st.Store.Review(ctx, rv.ID); err != nil || r.Status != store.ReviewEnded || r.EndedBy != "reaper" {
		t.Fatalf("expired review lab: %+v %v", r, err)
	}
	d := getDetails(t, admin, id)
	for _, a := range []string{"review-start", "review-ready", "review-terminal-opened", "regrade", "review-ended"} {
		if !slices.ContainsFunc(d.Audit, func(e store.AuditEntry) bool { return e.Action == a }) {
			t.Errorf("no %q in the session's audit log", a)
		}
	}

	// A second review lab of the same archive, which an admin ends early.
	rv2 := startReview(t, admin, id)
	t.Cleanup(func() { st.Runtime.Destroy(context.Background(), rv2.ID) })
	if rv2.ID == rv.ID {
		t.Fatalf("the second review lab took the first one's id %s", rv.ID)
	}
	for n, w := range want {
		if got := nodeState(t, st.Runtime, rv2.ID, n); got != w {
			t.Errorf("%s of the second review lab differs from the candidate's:\n%s", n, lineDiff(w, got))
		}
	}
	// An admin ends it early.
	if code, err := admin.Do("DELETE", "/api/admin/session/"+id+"/review", nil, nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("end review lab: %d %v", code, err)
	}
	waitReview(t, admin, id, func(r *store.Review) bool { return r == nil })
	if r, _ := st.Store.Review(ctx, rv2.ID); r == nil || r.Status != store.ReviewEnded || len(eng.Containers(t, rv2.ID)) != 0 {
		t.Fatalf("ended review lab: %+v, containers %+v", r, eng.Containers(t, rv2.ID))
	}

	// An incomplete archive is refused, naming what is missing.
	dir, _ := st.Store.Path(id, store.SnapshotDir)
	tokyo := filepath.Join(dir, lab.ContainerName(id, "tokyo")+".tar")
	manifest := filepath.Join(dir, store.ManifestName)
	for _, tc := range []struct {
		name  string
		spoil func() (undo func())
		want  string
	}{
		{"one byte changed", func() func() {
			return flipByte(t, tokyo)
		}, lab.ContainerName(id, "tokyo") + ".tar of node tokyo has sha256"},
		{"a tar deleted", func() func() {
			return moveAside(t, tokyo)
		}, lab.ContainerName(id, "tokyo") + ".tar of node tokyo is missing"},
		{"no manifest", func() func() {
			return moveAside(t, manifest)
		}, "the session has no snapshot manifest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			undo := tc.spoil()
			defer undo()
			code, body := raw(t, admin, "POST", "/api/admin/session/"+id+"/review", nil)
			if code != http.StatusConflict || !strings.Contains(string(body), tc.want) {
				t.Fatalf("review lab from a spoilt archive: %d %s, want 409 naming %q", code, body, tc.want)
			}
		})
	}
	if live, _ := st.Store.LiveReviews(ctx); len(live) != 0 {
		t.Errorf("refused review labs were recorded: %+v", live)
	}
}

// startAgain asks for the session's review lab while one runs.
func startAgain(t *testing.T, admin *testlab.Client, id string) *store.Review {
	t.Helper()
	var a reviewAnswer
	code, err := admin.Do("POST", "/api/admin/session/"+id+"/review", nil, &a)
	if err != nil || code != http.StatusOK || a.Created {
		t.Fatalf("ask again: %d %+v %v, want 200 with the running one", code, a, err)
	}
	return a.Review
}

func flipByte(t *testing.T, path string) func() {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, 600)
	f.WriteAt([]byte{b[0] ^ 0xff}, 600)
	return func() {
		f, _ := os.OpenFile(path, os.O_RDWR, 0)
		f.WriteAt(b, 600)
		f.Close()
	}
}

func moveAside(t *testing.T, path string) func() {
	t.Helper()
	if err := os.Rename(path, path+".aside"); err != nil {
		t.Fatal(err)
	}
	return func() { os.Rename(path+".aside", path) }
}

// lineDiff lists the lines only one side has.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for _, l := range w {
		if !slices.Contains(g, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestReviewLabCapacity: a review lab counts against the deployment's lab
// limit like any lab — beyond it the request is refused in plain words and
// nothing is recorded — and its end frees the slot. (In-memory runtime:
// the logic only; TestReviewLab restores real containers.)
func TestReviewLabCapacity(t *testing.T) {
	st := memStack(t, func(c *config.Config) { c.MaxLabs = 1 })
	admin := st.Admin()
	var ids []string
	for _, email := range []string{"one@example.com", "two@example.com"} {
		c := st.Client()
		id := c.Login(t, email)
		c.StartLab(t, id)
		if code, err := c.Do("POST", "/api/session/"+id+"/submit", nil, nil); err != nil || code != http.StatusAccepted {
			t.Fatalf("submit: %d %v", code, err)
		}
		c.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
		ids = append(ids, id)
	}
	var q struct {
		Running int `json:"running"`
	}
	// A session reads completed a moment before its cleanup gives the
	// slot back (see TestCapacityQueue): wait for the slot.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, err := admin.Do("GET", "/api/admin/queue", nil, &q); err != nil || code != 200 {
			t.Fatalf("queue: %d %v", code, err)
		}
		if q.Running == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after both sessions completed, %d labs still hold slots", q.Running)
		}
	}
	var a reviewAnswer
	if code, err := admin.Do("POST", "/api/admin/session/"+ids[0]+"/review", nil, &a); err != nil || code != http.StatusAccepted {
		t.Fatalf("first review lab: %d %+v %v", code, a, err)
	}
	code, body := raw(t, admin, "POST", "/api/admin/session/"+ids[1]+"/review", nil)
	if code != http.StatusConflict || !strings.Contains(string(body), "all 1 lab slots of this deployment are in use") {
		t.Fatalf("a review lab beyond the limit: %d %s, want 409 in words", code, body)
	}
	if code, err := admin.Do("GET", "/api/admin/queue", nil, &q); err != nil || code != 200 || q.Running != 1 {
		t.Fatalf("queue: %d %+v %v, want the review lab running", code, q, err)
	}
	if code, err := admin.Do("DELETE", "/api/admin/session/"+ids[0]+"/review", nil, nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("end: %d %v", code, err)
	}
	waitReview(t, admin, ids[0], func(r *store.Review) bool { return r == nil })
	if code, err := admin.Do("POST", "/api/admin/session/"+ids[1]+"/review", nil, &a); err != nil || code != http.StatusAccepted {
		t.Fatalf("a review lab once the slot is free: %d %+v %v", code, a, err)
	}
}
