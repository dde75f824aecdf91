package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/changeset"
	"github.com/examlab/examlab/lab"
)

// twoNodes is a flat lab of two nodes with the capabilities a candidate
// usually has: enough to chown and chmod, not to make device files.
const twoNodes = `
id: two-nodes
title: Two nodes
duration: 30m
tasks:
  - {id: t1, title: Anything, kind: text, prompt: Change files.}
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 64, cpus: 0.5, pids: 128}
    capabilities: [CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID, KILL]
  nodes:
    - {name: alpha, role: branch}
    - {name: beta, role: branch}
`

// captureTimeout bounds one capture of a test lab.
const captureTimeout = 2 * time.Minute

// tarEntry is one entry of a captured tar, as the tests look at it.
type tarEntry struct {
	typ      byte
	mode     int64
	uid, gid int
	body     string
	link     string
}

func (e tarEntry) String() string {
	return fmt.Sprintf("type %c mode %o owner %d:%d body %q link %q", e.typ, e.mode, e.uid, e.gid, e.body, e.link)
}

// readTar lists a tar's entries by name; bodies of files over 4 KiB are
// left out.
func readTar(t testing.TB, data []byte) map[string]tarEntry {
	t.Helper()
	out := map[string]tarEntry{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		e := tarEntry{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid, link: h.Linkname}
		if h.Size <= 4<<10 {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			e.body = string(b)
		}
		if _, dup := out[h.Name]; dup {
			t.Errorf("%q appears twice", h.Name)
		}
		out[h.Name] = e
	}
}

// memorySaver keeps each node's snapshot in memory, for tests.
type memorySaver struct {
	tars map[string][]byte
	// before runs before each node's write.
	before func(node string)
}

func (m *memorySaver) save(node string, write func(io.Writer) error) error {
	if m.tars == nil {
		m.tars = map[string][]byte{}
	}
	if m.before != nil {
		m.before(node)
	}
	var buf bytes.Buffer
	if err := write(&buf); err != nil {
		return err
	}
	m.tars[node] = buf.Bytes()
	return nil
}

func capture(t testing.TB, r *Runtime, spec lab.Spec, mode lab.SnapshotMode, s *memorySaver) []lab.NodeCapture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), captureTimeout)
	defer cancel()
	var nodes []string
	for _, n := range spec.Nodes {
		nodes = append(nodes, n.Name)
	}
	caps, err := r.Capture(ctx, spec.SessionID, nodes, mode, s.save)
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	return caps
}

// candidateWork changes alpha's files in every way a candidate can. It
// returns the entries the change set must hold besides the directories
// the changes lie in.
const candidateWork = `set -e
cd /root
printf 'added\n' > added.txt
chown 1000:1001 added.txt
ln added.txt added.hard
ln -s /etc/motd motd.link
printf 'nl\n' > "line
break"
printf 'latin1\n' > "$(printf 'caf\351')"
mkfifo pipe
chmod 0600 pipe
printf 'changed\n' >> /etc/motd
chmod 0640 /etc/issue.net
rm /etc/issue
rm -rf /etc/skel
mkdir /etc/skel
printf 'only\n' > /etc/skel/only
`

func TestCaptureChanges(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	// Before anything is done, what the lab itself changed.
	var base memorySaver
	capture(t, r, spec, lab.SnapshotChanges, &base)
	baseline := readTar(t, base.tars["alpha"])
	t.Logf("the lab's own changes before any work: %v", baseline)

	mustSh(t, r, spec.SessionID, "alpha", candidateWork)
	if out, code := sh(t, r, spec.SessionID, "alpha", "mknod /root/null2 c 1 3"); code == 0 {
		t.Errorf("the node could make a device without CAP_MKNOD: %s", out)
	}
	var s memorySaver
	caps := capture(t, r, spec, lab.SnapshotChanges, &s)

	got := readTar(t, s.tars["alpha"])
	motd := mustSh(t, r, spec.SessionID, "alpha", "cat /etc/motd")
	want := map[string]tarEntry{
		"root/":                              {typ: tar.TypeDir, mode: 0o700},
		"root/added.txt":                     {typ: tar.TypeReg, mode: 0o644, uid: 1000, gid: 1001, body: "added\n"},
		"root/added.hard":                    {typ: tar.TypeLink, mode: 0o644, uid: 1000, gid: 1001, link: "root/added.txt"},
		"root/motd.link":                     {typ: tar.TypeSymlink, mode: 0o777, link: "/etc/motd"},
		"root/line\nbreak":                   {typ: tar.TypeReg, mode: 0o644, body: "nl\n"},
		"root/caf\xe9":                       {typ: tar.TypeReg, mode: 0o644, body: "latin1\n"},
		"root/pipe":                          {typ: tar.TypeFifo, mode: 0o600},
		"etc/":                               {typ: tar.TypeDir, mode: 0o755},
		"etc/motd":                           {typ: tar.TypeReg, mode: 0o644, body: motd},
		"etc/issue.net":                      {typ: tar.TypeReg, mode: 0o640, body: mustSh(t, r, spec.SessionID, "alpha", "cat /etc/issue.net")},
		"etc/.wh.issue":                      {typ: tar.TypeReg},
		"etc/skel/":                          {typ: tar.TypeDir, mode: 0o755},
		"etc/skel/" + changeset.OpaqueMarker: {typ: tar.TypeReg},
		"etc/skel/only":                      {typ: tar.TypeReg, mode: 0o644, body: "only\n"},
	}
	// The hard link may be stored under either name: the engine writes
	// whichever it reaches first as the file.
	if e, ok := got["root/added.txt"]; ok && e.typ == tar.TypeLink {
		want["root/added.hard"], want["root/added.txt"] = tarEntry{typ: tar.TypeReg, mode: 0o644, uid: 1000, gid: 1001, body: "added\n"},
			tarEntry{typ: tar.TypeLink, mode: 0o644, uid: 1000, gid: 1001, link: "root/added.hard"}
	}
	for name, e := range baseline {
		if _, ok := want[name]; !ok {
			want[name] = e
		}
	}
	var diff []string
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			diff = append(diff, fmt.Sprintf("missing %q: %v", name, w))
		case g.String() != w.String() && !(strings.HasSuffix(name, "/") && g.typ == w.typ && g.mode == w.mode):
			diff = append(diff, fmt.Sprintf("%q: %v, want %v", name, g, w))
		}
	}
	for name, g := range got {
		if _, ok := want[name]; !ok {
			diff = append(diff, fmt.Sprintf("unexpected %q: %v", name, g))
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 {
		t.Errorf("alpha's change set differs (baseline %d entries):\n%s", len(baseline), strings.Join(diff, "\n"))
	}

	if len(caps) != 2 {
		t.Fatalf("captures %+v, want two", caps)
	}
	a := caps[0]
	if a.Node != "alpha" || a.Mode != lab.SnapshotChanges || a.Fallback != "" || !strings.HasPrefix(a.Image, "sha256:") || a.Bytes != int64(len(s.tars["alpha"])) {
		t.Errorf("alpha's capture %+v", a)
	}
	// Seven paths added (skel's new file among them); motd, issue.net,
	// their folder etc, root and the replaced skel modified; issue deleted.
	if a.Added != 7 || a.Modified != 5 || a.Deleted != 1 || a.Skipped != 0 {
		t.Errorf("alpha's counts: %d added, %d modified, %d deleted, %d skipped", a.Added, a.Modified, a.Deleted, a.Skipped)
	}
	if b := caps[1]; b.Node != "beta" || b.Bytes > 64<<10 {
		t.Errorf("beta, left alone, captured %+v", b)
	}
	assertNoCaptureContainers(t, r, spec.SessionID)
	assertRunning(t, r, spec)
}

// TestCaptureReportsSockets: a socket cannot go in a tar; the capture
// leaves it out and names it.
func TestCaptureReportsSockets(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	// A listening unix socket; the file stays after its server is killed.
	mustSh(t, r, spec.SessionID, "beta", `(nc -lU /root/app.sock >/dev/null 2>&1 &) ; for i in 1 2 3 4 5 6 7 8 9 10; do [ -S /root/app.sock ] && break; sleep 0.2; done; [ -S /root/app.sock ]`)
	var s memorySaver
	caps := capture(t, r, spec, lab.SnapshotChanges, &s)
	b := caps[1]
	if b.Skipped != 1 || !slices.Equal(b.SkippedPaths, []string{strconv.Quote("root/app.sock")}) {
		t.Errorf("beta's capture %+v, want root/app.sock skipped", b)
	}
	if _, ok := readTar(t, s.tars["beta"])["root/app.sock"]; ok {
		t.Error("the socket is in the tar")
	}
}

// TestCaptureFreezesTheLab: every node is paused while any is captured,
// a process writing in a loop leaves a file of whole lines, and the lab
// runs again afterwards.
func TestCaptureFreezesTheLab(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	mustSh(t, r, spec.SessionID, "alpha", `setsid sh -c 'i=0; while :; do echo "line $i end"; i=$((i+1)); done >> /root/loop.log' </dev/null >/dev/null 2>&1 &`)
	time.Sleep(300 * time.Millisecond)
	t.Logf("loop.log before the capture: %s lines", strings.TrimSpace(mustSh(t, r, spec.SessionID, "alpha", "wc -l < /root/loop.log")))
	var paused [][]bool
	s := memorySaver{before: func(string) {
		var p []bool
		for _, n := range spec.Nodes {
			c, err := r.client.inspectContainer(context.Background(), n.Container)
			if err != nil {
				t.Error(err)
			}
			p = append(p, c.State.Paused)
		}
		paused = append(paused, p)
	}}
	capture(t, r, spec, lab.SnapshotChanges, &s)
	if !slices.EqualFunc(paused, [][]bool{{true, true}, {true, true}}, slices.Equal) {
		t.Errorf("nodes paused while each was captured: %v, want all of them each time", paused)
	}
	log := readTar(t, s.tars["alpha"])["root/loop.log"]
	if log.typ != tar.TypeReg {
		t.Fatalf("loop.log not captured: %+v", log)
	}
	// Large files' bodies are not read by readTar: read it again.
	body := tarBody(t, s.tars["alpha"], "root/loop.log")
	lines := strings.Split(body, "\n")
	if len(lines) < 2 || lines[len(lines)-1] != "" {
		t.Fatalf("loop.log does not end in a whole line: ...%q", body[max(0, len(body)-40):])
	}
	for i, l := range lines[:len(lines)-1] {
		if l != fmt.Sprintf("line %d end", i) {
			t.Fatalf("loop.log line %d is %q", i, l)
		}
	}
	assertRunning(t, r, spec)
	n1 := mustSh(t, r, spec.SessionID, "alpha", "wc -l < /root/loop.log")
	time.Sleep(200 * time.Millisecond)
	if n2 := mustSh(t, r, spec.SessionID, "alpha", "wc -l < /root/loop.log"); n1 == n2 {
		t.Errorf("the loop stopped after the capture: %s lines, then %s", strings.TrimSpace(n1), strings.TrimSpace(n2))
	}
}

// TestCaptureFailureThaws: a save that fails mid-stream fails the
// capture, and the lab is running, with no capture container left.
func TestCaptureFailureThaws(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	mustSh(t, r, spec.SessionID, "alpha", "head -c 1048576 /dev/urandom > /root/big")
	full := errors.New("no space left on device")
	ctx, cancel := context.WithTimeout(context.Background(), captureTimeout)
	defer cancel()
	_, err := r.Capture(ctx, spec.SessionID, []string{"alpha", "beta"}, lab.SnapshotChanges, func(node string, write func(io.Writer) error) error {
		return write(&failAfter{n: 64 << 10, err: full})
	})
	if !errors.Is(err, full) {
		t.Fatalf("capture: %v, want the writer's error", err)
	}
	assertNoCaptureContainers(t, r, spec.SessionID)
	assertRunning(t, r, spec)
}

// TestCaptureFull: full mode is the node's whole filesystem.
func TestCaptureFull(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	mustSh(t, r, spec.SessionID, "alpha", "echo work > /root/work.txt")
	var s memorySaver
	caps := capture(t, r, spec, lab.SnapshotFull, &s)
	got := readTar(t, s.tars["alpha"])
	if got["root/work.txt"].body != "work\n" || got["etc/os-release"].typ != tar.TypeSymlink && got["etc/os-release"].typ != tar.TypeReg {
		t.Errorf("full capture lacks the candidate's or the image's files: work %+v, os-release %+v", got["root/work.txt"], got["etc/os-release"])
	}
	if caps[0].Mode != lab.SnapshotFull || caps[0].Fallback != "" || caps[0].Bytes != int64(len(s.tars["alpha"])) {
		t.Errorf("alpha's capture %+v", caps[0])
	}
	assertRunning(t, r, spec)
}

// TestCaptureMissingNodeAndLeftover: a node without a container is
// missing; a capture container a crash left behind is replaced, and
// Destroy removes one.
func TestCaptureMissingNodeAndLeftover(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	ctx, cancel := context.WithTimeout(context.Background(), captureTimeout)
	defer cancel()
	alpha, err := r.node(ctx, spec.SessionID, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.createCapture(ctx, alpha, alpha.GraphDriver.Data["UpperDir"]); err != nil {
		t.Fatal(err)
	}
	var s memorySaver
	caps, err := r.Capture(ctx, spec.SessionID, []string{"alpha", "gone"}, lab.SnapshotChanges, s.save)
	if err != nil {
		t.Fatal(err)
	}
	if len(caps) != 2 || caps[0].Missing || !caps[1].Missing || caps[1].Node != "gone" {
		t.Errorf("captures %+v, want alpha and a missing gone", caps)
	}
	assertNoCaptureContainers(t, r, spec.SessionID)
	if _, err := r.createCapture(ctx, alpha, alpha.GraphDriver.Data["UpperDir"]); err != nil {
		t.Fatal(err)
	}
	if err := r.Destroy(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	if conts, nets := sessionResources(t, r, spec.SessionID); len(conts)+len(nets) != 0 {
		t.Errorf("destroy left %d containers, %d networks", len(conts), len(nets))
	}
}

func tarBody(t testing.TB, data []byte, name string) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in the tar: %v", name, err)
		}
		if h.Name == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
}

func assertNoCaptureContainers(t testing.TB, r *Runtime, sessionID string) {
	t.Helper()
	conts, _ := sessionResources(t, r, sessionID)
	for _, c := range conts {
		if c.Labels[lab.LabelPart] == lab.PartCapture {
			t.Errorf("capture container %v left behind", c.Names)
		}
	}
}

func assertRunning(t testing.TB, r *Runtime, spec lab.Spec) {
	t.Helper()
	for _, n := range spec.Nodes {
		c, err := r.client.inspectContainer(context.Background(), n.Container)
		if err != nil {
			t.Fatal(err)
		}
		if !c.State.Running || c.State.Paused {
			t.Errorf("%s after the capture: running %v, paused %v", n.Name, c.State.Running, c.State.Paused)
		}
	}
}

// failAfter accepts n bytes, then fails every write.
type failAfter struct {
	n   int
	err error
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k := f.n
		f.n = 0
		return k, f.err
	}
	f.n -= len(p)
	return len(p), nil
}
