package labtest

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// TestMemory runs the contract suite against the in-memory runtime: what
// makes it a double the other packages' tests can trust.
func TestMemory(t *testing.T) {
	// A node delay lets the suite catch the first provision halfway.
	m := NewMemory(MemoryOptions{NodeDelay: 10 * time.Millisecond})
	Run(t, Harness{
		Runtime:   m,
		Inventory: func(t testing.TB, sessionID string) Inventory { return m.Inventory(sessionID) },
		Crash: func(t testing.TB, sessionID, node string) {
			if err := m.Crash(sessionID, node); err != nil {
				t.Fatal(err)
			}
		},
		Addresses:       true,
		CrashKeepsFiles: true,
	})
}

// memoryLab provisions the default exam's lab on a fresh Memory.
func memoryLab(t *testing.T) (*Memory, lab.Spec) {
	t.Helper()
	m := NewMemory(MemoryOptions{})
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: NewSessionID()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Provision(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	return m, spec
}

func TestMemoryShell(t *testing.T) {
	cases := []struct {
		name string
		cmd  []string
		out  string
		code int
	}{
		{"echo", []string{"echo", "a", "b"}, "a b\n", 0},
		{"echo -n", []string{"echo", "-n", "x"}, "x", 0},
		{"hostname", []string{"hostname"}, "tokyo\n", 0},
		{"hostname -i", []string{"hostname", "-i"}, "10.99.1.2\n", 0},
		{"unknown command", []string{"nmap"}, "sh: 1: nmap: not found\n", 127},
		{"sh -c list", []string{"sh", "-c", "echo a; false || echo b && echo c"}, "a\nb\nc\n", 0},
		{"and stops at a failure", []string{"sh", "-c", "false && echo never"}, "", 1},
		{"exit ends the script", []string{"sh", "-c", "exit 4; echo never"}, "", 4},
		{"quotes", []string{"sh", "-c", `echo 'a  b' "c;d" e\ f`}, "a  b c;d e f\n", 0},
		{"write and read back", []string{"sh", "-c", "echo one > /tmp/f; echo two >> /tmp/f; cat /tmp/f"}, "one\ntwo\n", 0},
		{"relative paths start in /root", []string{"sh", "-c", "echo x > w; cat /root/w; pwd"}, "x\n/root\n", 0},
		{"stderr redirection", []string{"sh", "-c", "echo e >&2 2>/dev/null; cat nope 2>/dev/null; echo done"}, "e\ndone\n", 0},
		{"stderr into a file", []string{"sh", "-c", "cat nope 2> /tmp/err; cat /tmp/err"}, "cat: nope: No such file or directory\n", 0},
		{"2>&1 into a file", []string{"sh", "-c", "cat nope > /tmp/o 2>&1; cat /tmp/o"}, "cat: nope: No such file or directory\n", 0},
		{"missing directory", []string{"sh", "-c", "echo x > /no/f"}, "sh: 1: cannot create /no/f: Directory nonexistent\n", 2},
		{"input redirection", []string{"sh", "-c", "echo in > /tmp/i; cat < /tmp/i"}, "in\n", 0},
		{"test and touch", []string{"sh", "-c", "test -e /root/m || echo absent; touch /root/m; [ -f /root/m ] && echo present"}, "absent\npresent\n", 0},
		{"mkdir, ls and rm", []string{"sh", "-c", "mkdir -p /srv/a/b; touch /srv/a/f; ls /srv/a; rm -r /srv/a; test -d /srv/a"}, "b\nf\n", 1},
		{"env runs a command", []string{"env", "A=1", "printenv", "A"}, "1\n", 0},
		{"stty needs a terminal", []string{"stty", "size"}, "stty: 'standard input': Inappropriate ioctl for device\n", 1},
		{"syntax error", []string{"sh", "-c", "echo a |"}, "sh: 1: syntax error: '|' is not supported\n", 2},
		{"arithmetic", []string{"sh", "-c", "echo x-$((6*7)) $((2+3*(4-1))) $((7/2)) $((-3%2))"}, "x-42 11 3 -1\n", 0},
		{"variables", []string{"sh", "-c", `X=4; export Y=2; echo $X ${Y} "$X$Y" '$X' $((X*Y)) $((X-$Y))`}, "4 2 42 $X 8 2\n", 0},
		{"exit status", []string{"sh", "-c", "false; echo $?; true; echo $?"}, "1\n0\n", 0},
		{"assignment for one command", []string{"sh", "-c", "A=1 printenv A; printenv A || echo unset"}, "1\nunset\n", 0},
		{"division by zero", []string{"sh", "-c", "echo $((1/0))"}, "sh: 1: arithmetic expression: division by zero\n", 2},
		{"a lone dollar", []string{"sh", "-c", "echo $ 5$"}, "$ 5$\n", 0},
	}
	m, spec := memoryLab(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, code, err := lab.Output(context.Background(), m, spec.SessionID, "tokyo", tc.cmd...)
			if err != nil {
				t.Fatal(err)
			}
			if out != tc.out || code != tc.code {
				t.Errorf("%q: got %q exit %d, want %q exit %d", tc.cmd, out, code, tc.out, tc.code)
			}
		})
	}
}

func TestMemorySleepEndsWithClose(t *testing.T) {
	m, spec := memoryLab(t)
	ctx := context.Background()
	p, err := m.Exec(ctx, spec.SessionID, "tokyo", lab.ExecRequest{Cmd: []string{"sleep", "60"}})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := p.Wait(wctx); err != nil {
		t.Fatalf("sleep outlived its process: %v", err)
	}
	if _, err := p.Write([]byte("late")); err == nil {
		t.Error("input written after the end was accepted")
	}
}

func TestMemoryReadFileAndErrors(t *testing.T) {
	m, spec := memoryLab(t)
	ctx := context.Background()
	if _, code, err := lab.Output(ctx, m, spec.SessionID, "osaka", "sh", "-c", "echo hi > /root/x"); err != nil || code != 0 {
		t.Fatalf("write: %d %v", code, err)
	}
	if b, err := m.ReadFile(spec.SessionID, "osaka", "/root/x"); err != nil || string(b) != "hi\n" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	if _, err := m.ReadFile(spec.SessionID, "tokyo", "/root/x"); err == nil {
		t.Error("a file written in osaka shows in tokyo")
	}
	if err := m.Provision(ctx, lab.Spec{SessionID: "BAD"}); err == nil {
		t.Error("provision of an invalid session id succeeded")
	}
	pctx, cancel := context.WithCancel(ctx)
	cancel()
	slow := NewMemory(MemoryOptions{NodeDelay: time.Hour})
	if err := slow.Provision(pctx, spec); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled provision: %v", err)
	}
	if err := m.Crash(spec.SessionID, "nowhere"); !errors.Is(err, lab.ErrNotFound) {
		t.Errorf("crash of an unknown node: %v", err)
	}
	var logs strings.Builder
	if err := m.Logs(ctx, spec.SessionID, "g1", &logs); err != nil || strings.Count(logs.String(), "examlab node g1 ready") != 1 {
		t.Errorf("logs = %q, %v", logs.String(), err)
	}
	if err := m.ExportFS(ctx, spec.SessionID, "g1", io.Discard); err != nil {
		t.Error(err)
	}
}

// TestMemoryTerminal: a shell on a terminal echoes what is typed, keeps its
// variables from line to line, and sees its size.
func TestMemoryTerminal(t *testing.T) {
	m, spec := memoryLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := m.Exec(ctx, spec.SessionID, "g2", lab.ExecRequest{Cmd: []string{"bash"}, TTY: true, Size: lab.Size{Rows: 24, Cols: 80}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	io.WriteString(p, "export X=42\necho X is $X; stty size\nexit 5\n")
	out, err := io.ReadAll(p)
	if err != nil {
		t.Fatal(err)
	}
	// Typed ahead, the echo and the prompts interleave as on any terminal.
	screen := strings.ReplaceAll(string(out), "# ", "")
	for _, want := range []string{"export X=42\r\n", "echo X is $X; stty size\r\n", "X is 42\r\n24 80\r\n"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen %q lacks %q", out, want)
		}
	}
	if code, err := p.Wait(ctx); err != nil || code != 5 {
		t.Errorf("wait: %d %v", code, err)
	}
}
