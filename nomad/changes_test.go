package nomad_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/testlab"
)

// captureTimeout bounds one capture of a small lab.
const captureTimeout = 2 * time.Minute

// member is what the capture tests compare of one tar entry.
type member struct {
	typ     byte
	mode    int64
	link    string
	content string
	mtime   time.Time
}

func members(t *testing.T, b []byte) map[string]member {
	t.Helper()
	out := map[string]member{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read change set: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = member{typ: h.Typeflag, mode: h.Mode, link: h.Linkname, content: string(body), mtime: h.ModTime}
	}
}

// captureAll captures nodes of the lab in changes mode into memory.
func captureAll(t *testing.T, rt *nomad.Runtime, id string, nodes []string, during func(node string)) (map[string][]byte, []lab.NodeCapture, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), captureTimeout)
	defer cancel()
	out := map[string][]byte{}
	caps, err := rt.Capture(ctx, id, nodes, lab.SnapshotChanges, func(node string, write func(io.Writer) error) error {
		if during != nil {
			during(node)
		}
		var buf bytes.Buffer
		if err := write(&buf); err != nil {
			return err
		}
		out[node] = buf.Bytes()
		return nil
	})
	return out, caps, err
}

// nodeState is what the tests read of a node's live container from the
// engine: whether it is paused, and where its writable layer is. The
// container is found by the session's and node's labels, which the fake's
// and a real client's containers carry alike.
type nodeState struct {
	Paused, Running bool
	Upper           string
}

func inspectNode(t *testing.T, eng *testlab.Engine, id, node string) nodeState {
	t.Helper()
	for _, c := range eng.Containers(t, id) {
		if c.Labels[lab.LabelNode] != node || (c.State != "running" && c.State != "paused") {
			continue
		}
		raw, err := json.Marshal(eng.Inspect(t, c.ID))
		if err != nil {
			t.Fatal(err)
		}
		var ic struct {
			State       struct{ Paused, Running bool }
			GraphDriver struct{ Data map[string]string }
		}
		if err := json.Unmarshal(raw, &ic); err != nil {
			t.Fatal(err)
		}
		return nodeState{Paused: ic.State.Paused, Running: ic.State.Running, Upper: ic.GraphDriver.Data["UpperDir"]}
	}
	t.Fatalf("node %s of %s has no live container", node, id)
	return nodeState{}
}

// ticks is how many lines the node's ticking loop has written, read on
// the host from the node's writable layer: nothing that reads it runs in
// the node, which may be frozen.
func ticks(t *testing.T, eng *testlab.Engine, id, node string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(inspectNode(t, eng, id, node).Upper, "root", "ticks"))
	if err != nil {
		t.Fatalf("read %s's ticks: %v", node, err)
	}
	return bytes.Count(b, []byte("\n"))
}

// candidateWork is what the tests' candidate does in tokyo: a file added,
// one changed, one chmod-ed, a symlink, a hard link, and one deleted.
const candidateWork = `set -e
echo added > /root/added.txt
echo changed >> /etc/motd
chmod 0600 /etc/issue
ln -s /etc/motd /root/motd-link
ln /root/added.txt /root/added-link
rm /etc/issue.net
`

// TestCaptureChangesThroughNomad archives, on a flat and a segmented lab,
// what the candidate changed in a node, read on the client by the lab's
// labnet-watch agent: exactly the files added, changed, chmod-ed,
// symlinked, hard-linked and deleted. The lab is frozen while it is
// captured (a loop appending to a file in a node does not advance) and
// runs again afterwards; a capture whose stream breaks still thaws it.
func TestCaptureChangesThroughNomad(t *testing.T) {
	env := newFakeEnv(t)
	for _, flat := range []bool{false, true} {
		name := "segmented"
		if flat {
			name = "flat"
		}
		t.Run(name, func(t *testing.T) {
			edit := func(*exam.Exam) {}
			if flat {
				edit = func(ex *exam.Exam) { *ex = *labtest.Flatten(ex) }
			}
			spec := segmentedLab(t, env.rt, edit)
			if spec.Segmented() == flat {
				t.Fatalf("lab is segmented=%v", spec.Segmented())
			}
			checkCaptureChanges(t, env.rt, spec, func(id string) int {
				thaws := 0
				for _, e := range env.fake.Execs() {
					if e.Task == jobspecs.NomadLabnetWatch && len(e.Command) > 4 && e.Command[2] == nomad.VerbThaw && e.Command[4] == id {
						thaws++
					}
				}
				return thaws
			})
			if !flat {
				checkAgentExecsChecked(t, env, spec)
			}
		})
	}
}

// checkAgentExecsChecked: the fake runs nothing in labnet-watch but the
// job's examlab running an agent verb for this lab, as the runtime sends
// it; and the agent's guard thaws a lab left frozen.
func checkAgentExecsChecked(t *testing.T, env *fakeEnv, spec lab.Spec) {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: env.fake.URL()})
	if err != nil {
		t.Fatal(err)
	}
	stubs, _, err := c.Jobs().Allocations(jobspecs.JobName(spec.SessionID), false, nil)
	if err != nil || len(stubs) == 0 {
		t.Fatalf("allocations of %s: %v", spec.SessionID, err)
	}
	alloc, _, err := c.Allocations().Info(stubs[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	const bin = "/usr/local/bin/examlab"
	good := []string{bin, "labnet", "thaw", "-session", spec.SessionID, "-alloc", alloc.ID}
	for _, cmd := range [][]string{
		{"/bin/sh", "-c", "id"},
		{"/tmp/examlab", "labnet", "thaw", "-session", spec.SessionID, "-alloc", alloc.ID},
		{bin, "labnet", "down", "-session", spec.SessionID, "-alloc", alloc.ID},
		{bin, "labnet", "thaw", "-session", "nother000000", "-alloc", alloc.ID},
		{bin, "labnet", "capture", "-session", spec.SessionID, "-alloc", alloc.ID, "-node", "nosuch"},
		{bin, "labnet", "capture", "-session", spec.SessionID, "-alloc", alloc.ID},
		{bin, "labnet", "logs", "-session", spec.SessionID, "-alloc", alloc.ID, "-node", "../tokyo"},
		{bin, "labnet", "logs", "-session", spec.SessionID, "-alloc", alloc.ID},
		append(append([]string(nil), good...), "-node", "tokyo"),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
		code, err := c.Allocations().Exec(ctx, alloc, jobspecs.NomadLabnetWatch, false, cmd, strings.NewReader(""), io.Discard, io.Discard, nil, nil)
		cancel()
		if err == nil {
			t.Errorf("the fake ran %q in labnet-watch (exit %d)", cmd, code)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	var out bytes.Buffer
	if code, err := c.Allocations().Exec(ctx, alloc, jobspecs.NomadLabnetWatch, false, good, strings.NewReader(""), &out, io.Discard, nil, nil); err != nil || code != 0 {
		t.Errorf("%q in labnet-watch: exit %d %v", good, code, err)
	}

	// A lab frozen by a worker that never thawed it is thawed by its
	// labnet-watch's guard once it has been frozen too long.
	eng := testlab.NewEngine(t)
	if err := env.rt.Freeze(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	guard := env.agent.NewFreezeGuard(spec.SessionID, alloc.ID, time.Minute)
	t0 := time.Now()
	for _, at := range []time.Duration{0, 59 * time.Second} {
		if thawed, err := guard.Check(ctx, t0.Add(at)); err != nil || len(thawed) != 0 {
			t.Errorf("guard %s after the freeze: thawed %v, %v", at, thawed, err)
		}
	}
	for _, n := range spec.Nodes {
		if !inspectNode(t, eng, spec.SessionID, n.Name).Paused {
			t.Errorf("node %s runs within the guard's minute", n.Name)
		}
	}
	thawed, err := guard.Check(ctx, t0.Add(61*time.Second))
	if err != nil || len(thawed) != len(spec.Nodes) {
		t.Errorf("guard a minute after the freeze: thawed %v, %v; want every node", thawed, err)
	}
	for _, n := range spec.Nodes {
		if inspectNode(t, eng, spec.SessionID, n.Name).Paused {
			t.Errorf("node %s is still frozen after the guard's minute", n.Name)
		}
	}
}

// checkCaptureChanges is the capture test on a provisioned-to-be lab of
// the three-segment exam (flat or not) through rt; thaws, when set, counts
// the thaws of a session the cluster received.
func checkCaptureChanges(t *testing.T, rt *nomad.Runtime, spec lab.Spec, thaws func(id string) int) {
	eng := testlab.NewEngine(t)
	id := spec.SessionID
	nodes := provisionLab(t, rt, spec)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()

	before, _, err := captureAll(t, rt, id, []string{"tokyo"}, nil)
	if err != nil {
		t.Fatalf("capture before the candidate's work: %v", err)
	}
	if out, code, err := lab.Output(ctx, rt, id, "tokyo", "sh", "-c", candidateWork); err != nil || code != 0 {
		t.Fatalf("candidate's work in tokyo: exit %d %v\n%s", code, err, out)
	}
	// A loop the candidate left running in osaka.
	if out, code, err := lab.Output(ctx, rt, id, "osaka", "sh", "-c",
		"setsid sh -c 'while :; do echo tick >> /root/ticks; sleep 0.05; done' </dev/null >/dev/null 2>&1 &"); err != nil || code != 0 {
		t.Fatalf("start the loop in osaka: exit %d %v\n%s", code, err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ticks(t, eng, id, "osaka") < 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}

	frozenTicks := -1
	after, caps, err := captureAll(t, rt, id, nodes, func(node string) {
		for _, n := range nodes {
			if c := inspectNode(t, eng, id, n); !c.Paused {
				t.Errorf("node %s runs while %s is captured", n, node)
			}
		}
		now := ticks(t, eng, id, "osaka")
		if frozenTicks >= 0 && now != frozenTicks {
			t.Errorf("osaka's loop went on from %d to %d ticks during the capture", frozenTicks, now)
		}
		frozenTicks = now
		time.Sleep(300 * time.Millisecond)
	})
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	t.Logf("osaka's loop stood at %d ticks through the capture", frozenTicks)
	if len(caps) != len(nodes) {
		t.Fatalf("%d captures for %d nodes: %+v", len(caps), len(nodes), caps)
	}
	for i, c := range caps {
		if c.Node != nodes[i] || c.Missing || c.Mode != lab.SnapshotChanges || c.Fallback != "" || c.Image == "" ||
			c.Bytes != int64(len(after[c.Node])) {
			t.Errorf("capture of %s: %+v (%d bytes read)", nodes[i], c, len(after[nodes[i]]))
		}
	}

	var total int64
	for _, c := range caps {
		total += c.Bytes
	}
	t.Logf("%d nodes captured in %d bytes; tokyo: %+v", len(caps), total, caps[0])
	old, got := members(t, before["tokyo"]), members(t, after["tokyo"])
	var changed []string
	for n, m := range got {
		if o, ok := old[n]; !ok || o.typ != m.typ || o.mode != m.mode || o.link != m.link || o.content != m.content || !o.mtime.Equal(m.mtime) {
			changed = append(changed, n)
		}
	}
	sort.Strings(changed)
	t.Logf("tokyo's change set gained %q", changed)
	want := []string{"etc/", "etc/.wh.issue.net", "etc/issue", "etc/motd", "root/", "root/added-link", "root/added.txt", "root/motd-link"}
	if strings.Join(changed, " ") != strings.Join(want, " ") {
		t.Errorf("tokyo's change set gained %q, want %q", changed, want)
	}
	for n := range old {
		if _, ok := got[n]; !ok {
			t.Errorf("%q of the first capture is gone from the second", n)
		}
	}
	if m := got["etc/motd"]; m.typ != tar.TypeReg || !strings.HasSuffix(m.content, "changed\n") {
		t.Errorf("etc/motd = %+v", m)
	}
	if m := got["etc/issue"]; m.typ != tar.TypeReg || m.mode != 0o600 {
		t.Errorf("etc/issue = %+v, want mode 0600", m)
	}
	if m := got["root/motd-link"]; m.typ != tar.TypeSymlink || m.link != "/etc/motd" {
		t.Errorf("root/motd-link = %+v", m)
	}
	a, l := got["root/added.txt"], got["root/added-link"]
	if !(a.typ == tar.TypeReg && a.content == "added\n" && l.typ == tar.TypeLink && l.link == "root/added.txt") &&
		!(l.typ == tar.TypeReg && l.content == "added\n" && a.typ == tar.TypeLink && a.link == "root/added-link") {
		t.Errorf("root/added.txt = %+v, root/added-link = %+v: want one file and a hard link to it", a, l)
	}
	if m := got["etc/.wh.issue.net"]; m.typ != tar.TypeReg || m.content != "" {
		t.Errorf("etc/.wh.issue.net = %+v, want an empty whiteout", m)
	}
	if c := caps[0]; c.Deleted < 1 || c.Added < 3 || c.Modified < 3 {
		t.Errorf("tokyo's counts %+v: want at least 3 added, 3 modified, 1 deleted", c)
	}

	// Thawed: the loop goes on, and a live snapshot sees it.
	time.Sleep(500 * time.Millisecond)
	if now := ticks(t, eng, id, "osaka"); now <= frozenTicks {
		t.Errorf("osaka's loop stands at %d ticks after the capture, as during it", now)
	}
	for _, n := range nodes {
		if c := inspectNode(t, eng, id, n); c.Paused || !c.Running {
			t.Errorf("node %s after the capture: %+v", n, c)
		}
	}

	// A capture whose stream breaks at the second node thaws the lab.
	broken := errors.New("the archive's disk is full")
	_, err = rt.Capture(ctx, id, nodes, lab.SnapshotChanges, func(node string, write func(io.Writer) error) error {
		if node == nodes[0] {
			return write(io.Discard)
		}
		return write(&failingWriter{after: 1024, err: broken})
	})
	if !errors.Is(err, broken) {
		t.Fatalf("broken capture = %v, want the writer's error", err)
	}
	t.Logf("broken capture: %v", err)
	for _, n := range nodes {
		if c := inspectNode(t, eng, id, n); c.Paused {
			t.Errorf("node %s is still frozen after a broken capture", n)
		}
	}
	before2 := ticks(t, eng, id, "osaka")
	time.Sleep(500 * time.Millisecond)
	if now := ticks(t, eng, id, "osaka"); now <= before2 {
		t.Errorf("osaka's loop stands at %d ticks after a broken capture", now)
	}
	if thaws != nil {
		if n := thaws(id); n < 3 {
			t.Errorf("%d thaws of %s reached the agent, want one per capture (3)", n, id)
		}
	}
}

// failingWriter accepts after bytes, then fails.
type failingWriter struct {
	after int
	err   error
}

func (f *failingWriter) Write(b []byte) (int, error) {
	if len(b) > f.after {
		n := f.after
		f.after = 0
		return n, f.err
	}
	f.after -= len(b)
	return len(b), nil
}
