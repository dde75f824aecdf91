package labtest

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

func (s *suite) testPing(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
	defer cancel()
	if err := s.rt.Ping(ctx); err != nil {
		t.Error(err)
	}
}

func (s *suite) testStatus(t *testing.T) {
	for _, spec := range []lab.Spec{s.main, s.other} {
		for i, n := range s.status(t, spec) {
			if want := spec.Nodes[i].Name; n.Name != want {
				t.Errorf("node %d of %s is %s, want %s", i, spec.SessionID, n.Name, want)
			}
			if n.State != lab.StateRunning || n.StartedAt.IsZero() || n.Container == "" {
				t.Errorf("node %s of %s: state %s started %v container %q",
					n.Name, spec.SessionID, n.State, n.StartedAt, n.Container)
			}
		}
	}
}

func (s *suite) testAddresses(t *testing.T) {
	if !s.h.Addresses {
		t.Skip("not claimed (Harness.Addresses): the runtime's Status does not know the nodes' addresses")
	}
	for _, spec := range []lab.Spec{s.main, s.other} {
		for _, n := range s.status(t, spec) {
			if n.IP == "" {
				t.Errorf("node %s of %s has no address", n.Name, spec.SessionID)
			}
		}
	}
}

func (s *suite) testHostname(t *testing.T) {
	for _, n := range s.main.Nodes {
		t.Run(n.Name, func(t *testing.T) {
			out, code := s.run(t, s.main.SessionID, n.Name, "hostname")
			if code != 0 || strings.TrimSpace(out) != n.Name {
				t.Errorf("hostname = %q (exit %d), want %q", out, code, n.Name)
			}
		})
	}
}

func (s *suite) testExec(t *testing.T) {
	sid := s.main.SessionID
	t.Run("stdin streams in and end of input reaches the process", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
		defer cancel()
		p, err := s.rt.Exec(ctx, sid, "tokyo", lab.ExecRequest{Cmd: []string{"cat"}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := io.WriteString(p, "hello examlab\n"); err != nil {
			t.Fatal(err)
		}
		if err := p.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != "hello examlab\n" {
			t.Errorf("cat echoed %q", out)
		}
		if code, err := p.Wait(ctx); err != nil || code != 0 {
			t.Errorf("wait: %d %v", code, err)
		}
	})
	t.Run("stdout and stderr merge and the exit code comes back", func(t *testing.T) {
		out, code := s.run(t, sid, "tokyo", "sh", "-c", "echo out; echo err >&2; exit 3")
		if code != 3 || !strings.Contains(out, "out\n") || !strings.Contains(out, "err\n") {
			t.Errorf("got %q exit %d", out, code)
		}
	})
	t.Run("environment is passed", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
		defer cancel()
		p, err := s.rt.Exec(ctx, sid, "osaka", lab.ExecRequest{Cmd: []string{"printenv", "EXAMLAB_X"}, Env: []string{"EXAMLAB_X=42"}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		b, _ := io.ReadAll(p)
		if strings.TrimSpace(string(b)) != "42" {
			t.Errorf("printenv EXAMLAB_X = %q, want 42", b)
		}
	})
}

// screen collects a terminal's output for the suite to wait on.
type screen struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (s *screen) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(b)
}

// shows reports whether text has appeared as a line of output. The
// terminal echoes the command line itself; only what ends in a line break
// of its own counts.
func (s *screen) shows(text string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Contains(s.buf.String(), text+"\r\n")
}

func (s *screen) waitFor(t *testing.T, ctx context.Context, text string) {
	t.Helper()
	for ctx.Err() == nil {
		if s.shows(text) {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(pollInterval):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Fatalf("terminal never showed %q; it shows %q", text, s.buf.String())
}

func (s *suite) testTTY(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
	defer cancel()
	p, err := s.rt.Exec(ctx, s.main.SessionID, "kyoto", lab.ExecRequest{
		Cmd:  []string{"/bin/sh"},
		TTY:  true,
		Size: TTYSize,
		Env:  []string{"TERM=xterm"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	term := &screen{}
	go func() { _, _ = io.Copy(term, p) }()
	size := func(sz lab.Size) string { return fmt.Sprintf("%d %d", sz.Rows, sz.Cols) }

	if _, err := io.WriteString(p, "stty size\n"); err != nil {
		t.Fatal(err)
	}
	term.waitFor(t, ctx, size(TTYSize))
	if err := p.Resize(ctx, TTYResize); err != nil {
		t.Fatal(err)
	}
	// A runtime may carry the size and the keystrokes on separate paths
	// (Nomad's exec stream does), so ask until the new size shows.
	for ctx.Err() == nil && !term.shows(size(TTYResize)) {
		if _, err := io.WriteString(p, "stty size\n"); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4 && !term.shows(size(TTYResize)); i++ {
			time.Sleep(pollInterval)
		}
	}
	term.waitFor(t, ctx, size(TTYResize))
	if _, err := io.WriteString(p, "exit 3\n"); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(ctx); err != nil || code != 3 {
		t.Errorf("wait = %d, %v; want 3", code, err)
	}
}

func (s *suite) testNotFound(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
	defer cancel()
	sid := s.main.SessionID
	never := NewSessionID()
	cases := []struct {
		name string
		call func() error
	}{
		{"exec in an unknown node", func() error {
			_, err := s.rt.Exec(ctx, sid, "nowhere", lab.ExecRequest{Cmd: []string{"true"}})
			return err
		}},
		{"exec in a path-like node name", func() error {
			_, err := s.rt.Exec(ctx, sid, "../tokyo", lab.ExecRequest{Cmd: []string{"true"}})
			return err
		}},
		{"exec in a lab never created", func() error {
			_, err := s.rt.Exec(ctx, never, "tokyo", lab.ExecRequest{Cmd: []string{"true"}})
			return err
		}},
		{"logs of an unknown node", func() error { return s.rt.Logs(ctx, sid, "nowhere", io.Discard) }},
		{"export of an unknown node", func() error { return s.rt.ExportFS(ctx, sid, "nowhere", io.Discard) }},
		{"export of a lab never created", func() error { return s.rt.ExportFS(ctx, never, "tokyo", io.Discard) }},
		{"reset of an unknown node", func() error { return s.rt.ResetNode(ctx, s.main, "nowhere") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, lab.ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		})
	}
}

// TarEntries reads a tar stream (an export) into name → content, content
// only for regular files up to 64 KiB.
func TarEntries(t testing.TB, r io.Reader) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		out[name] = ""
		if h.Typeflag == tar.TypeReg && h.Size <= 64<<10 {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read %s from tar: %v", name, err)
			}
			out[name] = string(b)
		}
	}
}

func (s *suite) testExport(t *testing.T) {
	sid := s.main.SessionID
	if _, code := s.run(t, sid, "phoenix", "sh", "-c", "echo answer-42 > /root/work.txt"); code != 0 {
		t.Fatalf("write work file: exit %d", code)
	}
	ctx, cancel := context.WithTimeout(s.ctx, provisionTimeout)
	defer cancel()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(s.rt.ExportFS(ctx, sid, "phoenix", pw)) }()
	defer pr.Close()
	entries := TarEntries(t, pr)

	if got := entries["root/work.txt"]; got != "answer-42\n" {
		t.Errorf("export holds root/work.txt = %q, want the work written", got)
	}
	if _, ok := entries["etc/hostname"]; !ok {
		t.Errorf("export has no etc/hostname (%d entries)", len(entries))
	}
	if _, ok := entries["etc/debian_version"]; s.h.Containers && !ok {
		t.Errorf("export lacks the image's etc/debian_version (%d entries)", len(entries))
	}
	for name := range entries {
		for _, dir := range append([]string{"proc", "sys"}, s.h.NotExported...) {
			if strings.HasPrefix(name, dir+"/") && name != dir+"/" {
				t.Errorf("export holds %s, below %s/", name, dir)
			}
		}
	}
}

// logBlockLines and logLineLen shape the block testLogs has a node write:
// more than a few frames of any exec or log stream.
const (
	logBlockLines = 600
	logLineLen    = 1000
)

// testLogs: a node's logs hold what its main process wrote to stdout and
// to stderr, whole.
func (s *suite) testLogs(t *testing.T) {
	if out, code := s.run(t, s.main.SessionID, "tokyo", "sh", "-c", "echo examlab-log-out >/proc/1/fd/1; echo examlab-log-err >/proc/1/fd/2"); code != 0 {
		t.Fatalf("writing to tokyo's output: exit %d: %s", code, out)
	}
	ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
	defer cancel()
	p, err := s.rt.Exec(ctx, s.main.SessionID, "tokyo", lab.ExecRequest{Cmd: []string{"sh", "-c", "cat >/proc/1/fd/1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	line := strings.Repeat("x", logLineLen) + "\n"
	if _, err := io.WriteString(p, strings.Repeat(line, logBlockLines)); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if out, _ := io.ReadAll(p); len(out) > 0 {
		t.Errorf("cat into tokyo's output said %q", out)
	}
	if code, err := p.Wait(ctx); err != nil || code != 0 {
		t.Fatalf("writing a block to tokyo's output: exit %d %v", code, err)
	}
	// The engine writes a container's output to its log on its own time:
	// what the exec wrote may take a moment to be there.
	var missing []string
	for {
		var buf strings.Builder
		if err := s.rt.Logs(ctx, s.main.SessionID, "tokyo", &buf); err != nil {
			t.Fatal(err)
		}
		logs := buf.String()
		missing = missing[:0]
		for _, want := range []string{"examlab node tokyo ready", "examlab-log-out\n", "examlab-log-err\n"} {
			if !strings.Contains(logs, want) {
				missing = append(missing, fmt.Sprintf("%q", want))
			}
		}
		if n := strings.Count(logs, strings.Repeat("x", logLineLen)+"\n"); n != logBlockLines {
			missing = append(missing, fmt.Sprintf("%d of the %d lines written (%d bytes of logs)", logBlockLines-n, logBlockLines, len(logs)))
		}
		if len(missing) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("logs of tokyo lack %s", strings.Join(missing, ", "))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *suite) testLabs(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
	defer cancel()
	ids, err := s.rt.Labs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{s.main.SessionID, s.other.SessionID} {
		if !contains(ids, want) {
			t.Errorf("labs %v lack %s", ids, want)
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func (s *suite) testCapabilities(t *testing.T) {
	if !s.h.Containers {
		t.Skip("not claimed (Harness.Containers): the nodes are not Linux containers")
	}
	for _, node := range []string{"tokyo", "g1"} {
		t.Run(node, func(t *testing.T) {
			n, _ := s.main.Node(node)
			want := capMask(t, n.CapAdd)
			out, _ := s.run(t, s.main.SessionID, node, "grep", "CapEff", "/proc/self/status")
			f := strings.Fields(out)
			if len(f) != 2 {
				t.Fatalf("unexpected output %q", out)
			}
			var got uint64
			if _, err := fmt.Sscanf(f[1], "%x", &got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("CapEff = %#x, want %#x (%v)", got, want, n.CapAdd)
			}
		})
	}
}

// capBits numbers the capabilities exams may grant, as in linux/capability.h.
var capBits = map[string]uint{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5,
	"SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10,
	"NET_ADMIN": 12, "NET_RAW": 13, "SYS_CHROOT": 18, "MKNOD": 27,
	"AUDIT_WRITE": 29,
}

func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	var m uint64
	for _, c := range caps {
		bit, ok := capBits[strings.TrimPrefix(c, "CAP_")]
		if !ok {
			t.Fatalf("unknown capability %s", c)
		}
		m |= 1 << bit
	}
	return m
}

// The crash and spec-change subtests repair the small lab: what they
// prove does not depend on the lab's size, and a runtime that replaces a
// whole lab to repair one node (Nomad) does it eight times faster there.

func (s *suite) testCrash(t *testing.T) {
	if s.h.Crash == nil {
		t.Skip("no Harness.Crash: the implementation cannot crash a node behind the runtime's back")
	}
	sid, node := s.other.SessionID, s.other.Nodes[0].Name
	if _, code := s.run(t, sid, node, "touch", "/root/before-crash"); code != 0 {
		t.Fatal("touch failed")
	}
	s.h.Crash(t, sid, node)

	ctx, cancel := context.WithTimeout(s.ctx, provisionTimeout)
	defer cancel()
	if _, err := s.rt.Exec(ctx, sid, node, lab.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, lab.ErrNotRunning) {
		t.Errorf("exec in a crashed node: %v, want ErrNotRunning", err)
	}
	if st := s.status(t, s.other); st[0].State == lab.StateRunning {
		t.Errorf("crashed %s shows as running", node)
	}
	if err := s.rt.Provision(ctx, s.other); err != nil {
		t.Fatalf("provision after a crash: %v", err)
	}
	s.converged(t, s.other)
	if !lab.AllRunning(s.status(t, s.other)) {
		t.Error("not every node runs after the provision")
	}
	if out, code := s.run(t, sid, node, "hostname"); code != 0 || strings.TrimSpace(out) != node {
		t.Errorf("hostname in %s after the crash = %q (exit %d)", node, out, code)
	}
	if s.h.CrashKeepsFiles {
		if _, code := s.run(t, sid, node, "test", "-e", "/root/before-crash"); code != 0 {
			t.Errorf("%s lost /root/before-crash: it was replaced, not restarted", node)
		}
	}
}

func (s *suite) testSpecChange(t *testing.T) {
	sid, node := s.other.SessionID, s.other.Nodes[0].Name
	if _, code := s.run(t, sid, node, "touch", "/root/before-change"); code != 0 {
		t.Fatal("touch failed")
	}
	changed := s.other
	changed.Nodes = append([]lab.Node(nil), s.other.Nodes...)
	changed.Nodes[0].MemoryMB += 32
	ctx, cancel := context.WithTimeout(s.ctx, provisionTimeout)
	defer cancel()
	if err := s.rt.Provision(ctx, changed); err != nil {
		t.Fatalf("provision of the changed spec: %v", err)
	}
	s.other = changed
	s.converged(t, changed)
	if !lab.AllRunning(s.status(t, changed)) {
		t.Error("not every node runs after the provision")
	}
	if _, code := s.run(t, sid, node, "test", "-e", "/root/before-change"); code == 0 {
		t.Errorf("%s kept its files despite a new memory limit: it was not replaced", node)
	}
}

func (s *suite) testReset(t *testing.T) {
	sid := s.main.SessionID
	// A peer of the reset node reaches it again; in a segmented lab not
	// every node reaches every other before the candidate routes them.
	stay, reset := peers(t, s.main)
	for _, node := range []string{reset, stay} {
		if _, code := s.run(t, sid, node, "touch", "/root/marker"); code != 0 {
			t.Fatalf("touch in %s failed", node)
		}
	}
	ctx, cancel := context.WithTimeout(s.ctx, provisionTimeout)
	defer cancel()
	if err := s.rt.ResetNode(ctx, s.main, reset); err != nil {
		t.Fatal(err)
	}
	if _, code := s.run(t, sid, reset, "test", "-e", "/root/marker"); code == 0 {
		t.Errorf("%s's marker survived the reset", reset)
	}
	if _, code := s.run(t, sid, stay, "test", "-e", "/root/marker"); code != 0 {
		t.Errorf("%s lost its marker in %s's reset", stay, reset)
	}
	if out, code := s.run(t, sid, reset, "hostname"); code != 0 || strings.TrimSpace(out) != reset {
		t.Errorf("hostname in %s after the reset = %q (exit %d)", reset, out, code)
	}
	if s.h.Network {
		if out, _ := s.run(t, sid, stay, "ping", "-c1", "-W2", reset); !strings.Contains(out, "1 received") {
			t.Errorf("%s unreachable by name from %s after reset: %s", reset, stay, out)
		}
	}
	s.converged(t, s.main)
}

func (s *suite) testDestroy(t *testing.T) {
	ctx, cancel := context.WithTimeout(s.ctx, provisionTimeout)
	defer cancel()
	sid := s.main.SessionID
	for i := range 2 {
		if err := s.rt.Destroy(ctx, sid); err != nil {
			t.Fatalf("destroy #%d: %v", i+1, err)
		}
	}
	if inv := s.h.Inventory(t, sid); len(inv.Nodes) != 0 || len(inv.Others) != 0 {
		t.Errorf("destroy left %+v", inv)
	}
	for _, n := range s.status(t, s.main) {
		if n.State != lab.StatePending {
			t.Errorf("%s is %s after destroy, want pending", n.Name, n.State)
		}
	}
	if _, err := s.rt.Exec(ctx, sid, "tokyo", lab.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, lab.ErrNotFound) {
		t.Errorf("exec in a destroyed lab: %v, want ErrNotFound", err)
	}
	ids, err := s.rt.Labs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if contains(ids, sid) || !contains(ids, s.other.SessionID) {
		t.Errorf("labs after destroying %s: %v; want it gone and %s kept", sid, ids, s.other.SessionID)
	}

	never := newSpec(t, exam.Default())
	if err := s.rt.Destroy(ctx, never.SessionID); err != nil {
		t.Errorf("destroy of a lab never created: %v", err)
	}
	for _, n := range s.status(t, never) {
		if n.State != lab.StatePending {
			t.Errorf("%s of a lab never created is %s, want pending", n.Name, n.State)
		}
	}

	if err := s.rt.Destroy(ctx, s.other.SessionID); err != nil {
		t.Fatal(err)
	}
	if inv := s.h.Inventory(t, s.other.SessionID); len(inv.Nodes) != 0 || len(inv.Others) != 0 {
		t.Errorf("destroy of the other lab left %+v", inv)
	}
}
