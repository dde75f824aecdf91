package platform_test

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

var nodeNames = exam.Default().NodeNames()

// TestCandidateLifecycle walks one candidate through the whole product on
// real Redis and real containers: login, start, eight nodes wired as the
// shipped exam draws them, work, answers, submit, archive, cleanup, admin
// review; then the same email again.
func TestCandidateLifecycle(t *testing.T) {
	ex := exam.Default()
	st := testlab.Start(t, testlab.Options{})
	eng := testlab.NewEngine(t)
	ctx := context.Background()
	c := st.Client()
	id := c.Login(t, "ada@example.com")
	t.Cleanup(func() { st.Runtime.Destroy(context.Background(), id) })

	if _, err := os.Stat(filepath.Join(st.Config.StateDir, "sessions", id, "metadata.json")); err != nil {
		t.Fatalf("state dir not created: %v", err)
	}
	s := c.StartLab(t, id)

	// Eight running containers with the product's names, at the addresses
	// the exam gives them, and the lab's switch; no engine network.
	if len(s.Nodes) != 8 {
		t.Fatalf("status reports %d nodes", len(s.Nodes))
	}
	for i, n := range s.Nodes {
		node, _ := ex.Node(n.Name)
		if n.Name != nodeNames[i] || n.State != "running" || n.Container != lab.ContainerName(id, n.Name) || n.IP != node.HostAddress().String() {
			t.Errorf("node %d = %+v", i, n)
		}
	}
	cs := eng.Containers(t, id)
	if len(cs) != 9 {
		t.Fatalf("engine has %d containers for the session, want 8 nodes and the switch: %s", len(cs), testlab.Summary(cs))
	}
	for _, ct := range cs {
		if ct.State != "running" || ct.Labels[lab.LabelManaged] != "true" {
			t.Errorf("container %v: %s %v", ct.Names, ct.State, ct.Labels)
		}
		if ct.Labels[lab.LabelPart] == lab.PartSwitch {
			continue
		}
		// The switch plugs the nodes into the lab's segments; the engine
		// gives them no network, so none is shared with anything else.
		if mode := eng.Inspect(t, ct.ID)["HostConfig"].(map[string]any)["NetworkMode"]; mode != "none" {
			t.Errorf("container %v: network mode %v, want none", ct.Names, mode)
		}
	}
	if nets := eng.Networks(t, id); len(nets) != 0 {
		t.Errorf("networks = %+v; a segmented lab has none in the engine", nets)
	}
	hc := eng.Inspect(t, lab.ContainerName(id, "tokyo"))["HostConfig"].(map[string]any)
	if hc["Privileged"] != false || hc["Memory"].(float64) != 128<<20 || hc["PidsLimit"].(float64) != 256 || hc["NanoCpus"].(float64) != 0.25e9 {
		t.Errorf("tokyo limits: privileged=%v memory=%v pids=%v cpus=%v", hc["Privileged"], hc["Memory"], hc["PidsLimit"], hc["NanoCpus"])
	}
	if fmt.Sprint(hc["CapDrop"]) != "[ALL]" {
		t.Errorf("tokyo CapDrop = %v, want [ALL]", hc["CapDrop"])
	}

	// Terminals by exec: each node is its role.
	for _, n := range nodeNames {
		out, code, err := lab.Output(ctx, st.Runtime, id, n, "hostname")
		if err != nil || code != 0 || strings.TrimSpace(out) != n {
			t.Errorf("hostname in %s = %q (exit %d, %v)", n, out, code, err)
		}
	}
	if _, code, _ := lab.Output(ctx, st.Runtime, id, "tokyo", "ip", "link", "add", "d0", "type", "dummy"); code == 0 {
		t.Errorf("tokyo changed its links without NET_ADMIN")
	}
	tokyo, _ := ex.Node("tokyo")
	if out, _, err := lab.Output(ctx, st.Runtime, id, "tokyo", "cat", "/etc/motd"); err != nil || out != tokyo.Files[0].Content {
		t.Errorf("tokyo's /etc/motd = %q (%v), want the exam's %q", out, err, tokyo.Files[0].Content)
	}
	checkExamTasks(t, st, ex, id)
	if _, code, err := lab.Output(ctx, st.Runtime, id, "tokyo", "sh", "-c", "echo candidate-work > /root/work.txt"); code != 0 || err != nil {
		t.Fatalf("write work file: %d %v", code, err)
	}

	// Answers are acknowledged once durable.
	var saved store.Answer
	code, err := c.Do("PUT", "/api/session/"+id+"/answers/t1-addressing", map[string]any{"value": "g4: eth0 10.0.0.4/24"}, &saved)
	if err != nil || code != 200 || saved.Revision != 1 || saved.SavedAt.IsZero() {
		t.Fatalf("save answer: %d %v %+v", code, err, saved)
	}
	if b, err := os.ReadFile(filepath.Join(st.Config.StateDir, "sessions", id, "answers", "t1-addressing.json")); err != nil || !strings.Contains(string(b), "g4: eth0 10.0.0.4/24") {
		t.Fatalf("answer file: %s %v", b, err)
	}

	// Submit: archive then cleanup.
	if code, err := c.Do("POST", "/api/session/"+id+"/submit", nil, nil); err != nil || code != 202 {
		t.Fatalf("submit: %d %v", code, err)
	}
	c.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")

	snapDir := filepath.Join(st.Config.StateDir, "sessions", id, store.SnapshotDir)
	var m store.Manifest
	b, err := os.ReadFile(filepath.Join(snapDir, store.ManifestName))
	if err != nil || json.Unmarshal(b, &m) != nil {
		t.Fatalf("manifest: %v", err)
	}
	if len(m.Files) != 16 || len(m.Missing) != 0 {
		t.Fatalf("manifest lists %d files, missing %v; want 8 tars and 8 logs", len(m.Files), m.Missing)
	}
	for _, f := range m.Files {
		data, err := os.ReadFile(filepath.Join(snapDir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Errorf("%s: size %d sha %x, manifest says %d %s", f.Name, len(data), sum, f.Size, f.SHA256)
		}
	}
	if got := tarFile(t, filepath.Join(snapDir, lab.ContainerName(id, "tokyo")+".tar"), "root/work.txt"); got != "candidate-work\n" {
		t.Errorf("tokyo's archive holds work.txt = %q", got)
	}
	if log, _ := os.ReadFile(filepath.Join(snapDir, lab.ContainerName(id, "osaka")+".log")); !strings.Contains(string(log), "osaka") {
		t.Errorf("osaka's log does not mention it: %q", log)
	}
	if cs := eng.Containers(t, id); len(cs) != 0 {
		t.Errorf("containers left after cleanup: %s", testlab.Summary(cs))
	}
	if nets := eng.Networks(t, id); len(nets) != 0 {
		t.Errorf("network left after cleanup: %+v", nets)
	}

	// The admin sees everything that was kept.
	var det struct {
		Session   testlab.Session `json:"session"`
		Answers   []store.Answer  `json:"answers"`
		Snapshots []store.File    `json:"snapshots"`
		Nodes     []lab.NodeStatus
	}
	if code, err := st.Admin().Do("GET", "/api/admin/session/"+id+"/details", nil, &det); err != nil || code != 200 {
		t.Fatalf("details: %d %v", code, err)
	}
	if det.Session.Status != "completed" || len(det.Answers) != 1 || det.Answers[0].SavedAt.IsZero() || len(det.Snapshots) != 17 {
		t.Errorf("details: status %s, %d answers, %d snapshot files", det.Session.Status, len(det.Answers), len(det.Snapshots))
	}
	for _, f := range det.Snapshots {
		if f.Name != store.ManifestName && f.SHA256 == "" {
			t.Errorf("snapshot %s listed without checksum", f.Name)
		}
	}

	// The same candidate again: their one session, completed; only once
	// an admin frees their roster entry do they get a fresh one, which
	// runs too.
	if again := c.Login(t, "ada@example.com"); again != id {
		t.Fatalf("sign-in after completion made session %s, want the completed %s", again, id)
	}
	done, err := st.Store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Store.ResetEntry(context.Background(), done.SittingID, done.EntryID); err != nil {
		t.Fatalf("reset the roster entry: %v", err)
	}
	id2 := c.Login(t, "ada@example.com")
	if id2 == id {
		t.Fatal("sign-in after a reset returned the completed session")
	}
	t.Cleanup(func() { st.Runtime.Destroy(context.Background(), id2) })
	c.StartLab(t, id2)
	if code, err := c.Do("POST", "/api/session/"+id2+"/submit", nil, nil); err != nil || code != 202 {
		t.Fatalf("submit second session: %d %v", code, err)
	}
	c.WaitStatus(t, id2, testlab.ArchiveTimeout, "completed")
}

func tarFile(t *testing.T, path, name string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}

// TestConcurrentCandidatesAreIsolated runs three candidates at once: each
// gets a complete lab of its own, at the same addresses as the others, and
// no lab reaches another.
func TestConcurrentCandidatesAreIsolated(t *testing.T) {
	st := testlab.Start(t, testlab.Options{})
	ctx := context.Background()
	const n = 3
	clients := make([]*testlab.Client, n)
	ids := make([]string, n)
	for i := range clients {
		clients[i] = st.Client()
		ids[i] = clients[i].Login(t, fmt.Sprintf("cand%d@example.com", i))
		id := ids[i]
		t.Cleanup(func() { st.Runtime.Destroy(context.Background(), id) })
	}
	sessions := make([]testlab.Session, n)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sessions[i] = clients[i].StartLab(t, ids[i])
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Every lab has the same addresses, so each gateway g1 takes one more
	// on tokyo's LAN, its lab's own: tokyo must reach its own lab's and
	// none of the others'.
	extra := func(i int) string { return fmt.Sprintf("192.168.10.%d", 100+i) }
	for i, id := range ids {
		nodes, err := st.Runtime.Status(ctx, mustSpec(t, id))
		if err != nil || !lab.AllRunning(nodes) {
			t.Fatalf("session %d: %v %+v", i, err, nodes)
		}
		if nodes[0].IP != "192.168.10.10" {
			t.Errorf("session %d: tokyo is at %q, want the exam's 192.168.10.10", i, nodes[0].IP)
		}
		if out, _, _ := lab.Output(ctx, st.Runtime, id, "kyoto", "hostname"); strings.TrimSpace(out) != "kyoto" {
			t.Errorf("session %d kyoto hostname = %q", i, out)
		}
		if _, code, _ := lab.Output(ctx, st.Runtime, id, "phoenix", "ping", "-c1", "-W3", "tokyo"); code != 0 {
			t.Errorf("session %d: phoenix cannot reach its own tokyo", i)
		}
		if out, code, err := lab.Output(ctx, st.Runtime, id, "g1", "ip", "addr", "add", extra(i)+"/24", "dev", "eth0"); code != 0 || err != nil {
			t.Fatalf("session %d: add %s to g1: exit %d %v\n%s", i, extra(i), code, err, out)
		}
	}
	for i := range ids {
		if out, code, _ := lab.Output(ctx, st.Runtime, ids[i], "tokyo", "ping", "-c1", "-W2", extra(i)); code != 0 {
			t.Errorf("session %d's tokyo cannot reach its own g1 at %s:\n%s", i, extra(i), out)
		}
		j := (i + 1) % n
		if out, code, _ := lab.Output(ctx, st.Runtime, ids[i], "tokyo", "ping", "-c1", "-W2", extra(j)); code == 0 {
			t.Errorf("session %d's tokyo reached session %d's g1 at %s:\n%s", i, j, extra(j), out)
		}
	}
	// Candidates are independent: one submitting leaves the others running.
	if code, _ := clients[0].Do("POST", "/api/session/"+ids[0]+"/submit", nil, nil); code != 202 {
		t.Fatalf("submit: %d", code)
	}
	clients[0].WaitStatus(t, ids[0], testlab.ArchiveTimeout, "completed")
	for i := 1; i < n; i++ {
		if s := clients[i].Status(t, ids[i]); s.Status != "ready" {
			t.Errorf("session %d is %s after another candidate submitted", i, s.Status)
		}
		if out, _, _ := lab.Output(ctx, st.Runtime, ids[i], "tokyo", "hostname"); strings.TrimSpace(out) != "tokyo" {
			t.Errorf("session %d lost its lab: %q", i, out)
		}
	}
}

func mustSpec(t *testing.T, id string) lab.Spec {
	t.Helper()
	l, err := lab.NewSpec(exam.Default(), lab.Session{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return l
}
