package api_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// TestDeadlinePassedSessionIsArchived: nobody submits; the server's
// expiry sweep (every second here) notices the deadline, submits, archives
// and removes the lab, and the session ends expired with everything the
// candidate did kept.
func TestDeadlinePassedSessionIsArchived(t *testing.T) {
	st := startStack(t, nil)
	c, id := readyLab(t, st, "late@example.com")
	code, err := c.Do("PUT", "/api/session/"+id+"/answers/t1-hostname", map[string]any{"value": "tokyo"}, nil)
	must(t, code, err, 200, "save answer")
	code, err = c.Do("POST", "/api/session/"+id+"/terminal/tokyo/history", map[string]any{"commands": []string{"hostname"}}, nil)
	must(t, code, err, 200, "post history")

	// Let the deadline pass: the record and its deadline index move together.
	ctx := context.Background()
	if _, err := st.Store.Update(ctx, id, func(s *session.Session) error {
		s.Deadline = time.Now().Add(-time.Second)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.WaitStatus(t, id, expireTimeout, "expired")

	d := getDetails(t, st.Admin(), id)
	if d.Session.Status != "expired" {
		t.Fatalf("status %s, want expired", d.Session.Status)
	}
	if len(d.Answers) != 1 || string(d.Answers[0].Value) != `"tokyo"` {
		t.Fatalf("answers after expiry: %+v", d.Answers)
	}
	if h := d.Histories["tokyo"]; len(h.Entries) != 1 || h.Entries[0].Command != "hostname" {
		t.Fatalf("tokyo history after expiry: %+v", h)
	}
	if d.Manifest == nil || d.Manifest.Reason != "deadline" || len(d.Manifest.Missing) != 0 {
		t.Fatalf("manifest = %+v, want a deadline archive of every node", d.Manifest)
	}
	want := map[string]bool{}
	for _, n := range []string{"tokyo", "osaka"} {
		want["exam-"+id[:8]+"-"+n+".tar"] = true
		want["exam-"+id[:8]+"-"+n+".log"] = true
	}
	for _, f := range d.Manifest.Files {
		if !want[f.Name] {
			t.Errorf("unexpected file %s in manifest", f.Name)
		}
		delete(want, f.Name)
		info, err := os.Stat(filepath.Join(st.Config.StateDir, "sessions", id, store.SnapshotDir, f.Name))
		if err != nil || info.Size() != f.Size || len(f.SHA256) != 64 {
			t.Errorf("%s on disk: %v, %v; manifest says %d bytes", f.Name, info, err, f.Size)
		}
		// A change set of a node nobody wrote in is little more than a
		// tar's end; it is never empty.
		if strings.HasSuffix(f.Name, ".tar") && f.Size < 1024 {
			t.Errorf("%s is %d bytes: not a tar", f.Name, f.Size)
		}
	}
	if len(want) != 0 {
		t.Errorf("manifest lacks %v", want)
	}
	if d.Manifest.Mode != lab.SnapshotChanges || len(d.Manifest.Nodes) != 2 {
		t.Errorf("manifest mode %q, nodes %+v: want each node's changes", d.Manifest.Mode, d.Manifest.Nodes)
	}
	for _, n := range d.Manifest.Nodes {
		if n.Mode != lab.SnapshotChanges || !strings.HasPrefix(n.Image, "sha256:") {
			t.Errorf("node %s captured as %+v, want its changes against its image", n.Node, n)
		}
	}
	if n := auditCount(d, "scheduler", "deadline-submit"); n != 1 {
		t.Errorf("%d deadline-submit audit entries, want 1", n)
	}
	if cs := testlab.NewEngine(t).Containers(t, id); len(cs) != 0 {
		t.Errorf("expired session still has containers: %s", testlab.Summary(cs))
	}
}

// TestReaperRemovesLabOfDeletedSession: a lab whose session record is
// gone is found by the periodic reaper (every second here) and removed,
// containers and network.
func TestReaperRemovesLabOfDeletedSession(t *testing.T) {
	st := startStack(t, nil)
	_, id := readyLab(t, st, "gone@example.com")
	eng := testlab.NewEngine(t)
	if cs := eng.Containers(t, id); len(cs) != 2 {
		t.Fatalf("lab has %d containers, want 2: %s", len(cs), testlab.Summary(cs))
	}
	ctx := context.Background()
	sess, err := st.Store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Delete(ctx, sess); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(reapTimeout)
	for {
		cs, ns := eng.Containers(t, id), eng.Networks(t, id)
		if len(cs) == 0 && len(ns) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the orphan lab still has %s and %d networks", reapTimeout, testlab.Summary(cs), len(ns))
		}
		time.Sleep(250 * time.Millisecond)
	}
}
