package grading_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
)

// These tests score with fakeRunner, a runner in memory that answers each
// check's snippet with what the test scripts for it: they run in
// milliseconds and reach failures a real node rarely shows. What needs a
// kernel (killing, tampering, the engine's streams) is in grading_test.go.

// answer is what fakeRunner does for one snippet.
type answer struct {
	out   string
	code  int
	delay time.Duration // before the process ends
	// hang: the process never ends and its output never closes, as an
	// exec the runtime lost would.
	hang bool
	// flood: this many bytes of output, made as they are read.
	flood int64
	err   error // from Exec itself
	// slowStart: Exec does not return until its context ends, as an
	// engine too busy to start the process.
	slowStart bool
}

type fakeRunner struct {
	answers map[string]answer // by node + "\x00" + snippet
	nodeErr map[string]error  // Exec fails for every check of the node

	mu      sync.Mutex
	running map[string]int // processes running per node
	maxRun  map[string]int // the most ever running at once per node
	calls   []lab.ExecRequest
}

var _ grading.Runner = (*fakeRunner)(nil)

func newFake() *fakeRunner {
	return &fakeRunner{answers: map[string]answer{}, nodeErr: map[string]error{}, running: map[string]int{}, maxRun: map[string]int{}}
}

func (f *fakeRunner) on(node, run string, a answer) *fakeRunner {
	f.answers[node+"\x00"+run] = a
	return f
}

func (f *fakeRunner) Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error) {
	f.mu.Lock()
	f.calls = append(f.calls, req)
	f.mu.Unlock()
	if err := f.nodeErr[node]; err != nil {
		return nil, fmt.Errorf("exec in %s: %w", node, err)
	}
	// grading.Command: busybox sh -c WRAPPER check RUN MARKER SECONDS.
	run, marker := req.Cmd[5], req.Cmd[6]
	a, ok := f.answers[node+"\x00"+run]
	if !ok {
		return nil, fmt.Errorf("fake: nothing scripted for %q in %s", run, node)
	}
	if a.err != nil {
		return nil, a.err
	}
	if a.slowStart {
		<-ctx.Done()
		return nil, fmt.Errorf("exec in %s: %w", node, ctx.Err())
	}
	f.mu.Lock()
	f.running[node]++
	f.maxRun[node] = max(f.maxRun[node], f.running[node])
	f.mu.Unlock()
	p := &fakeProcess{a: a, closed: make(chan struct{}), end: func() {
		f.mu.Lock()
		f.running[node]--
		f.mu.Unlock()
	}}
	// As the node's wrapper does: the output cut after 4097 bytes, then
	// the exit code on the marker's line. A hanging process never reports.
	var out io.Reader = strings.NewReader(a.out)
	if a.flood > 0 {
		out = io.LimitReader(zeros{}, a.flood)
	}
	// A check's group killed at its timeout (137 after running a while),
	// or a wrapper the engine could not start, never reports; a snippet
	// the kernel kills at once does, through the wrapper that outlives it.
	tail := fmt.Sprintf("\n%s%d\n", marker, a.code)
	if (a.code == 137 && a.delay > 0) || (a.code >= 126 && strings.Contains(a.out, grading.Busybox)) {
		tail = ""
	}
	p.r = io.MultiReader(io.LimitReader(out, grading.MaxOutput+1), strings.NewReader(tail))
	return p, nil
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = 'y'
	}
	return len(b), nil
}

type fakeProcess struct {
	a      answer
	r      io.Reader
	closed chan struct{}
	once   sync.Once
	ended  sync.Once
	end    func()
}

func (p *fakeProcess) Read(b []byte) (int, error) {
	if p.a.hang {
		<-p.closed
		return 0, errors.New("use of closed connection")
	}
	n, err := p.r.Read(b)
	if err == io.EOF && p.a.delay > 0 {
		select {
		case <-time.After(p.a.delay):
		case <-p.closed:
			return n, errors.New("use of closed connection")
		}
		p.a.delay = 0
	}
	return n, err
}

func (p *fakeProcess) Write(b []byte) (int, error)                  { return len(b), nil }
func (p *fakeProcess) CloseWrite() error                            { return nil }
func (p *fakeProcess) Resize(ctx context.Context, _ lab.Size) error { return nil }
func (p *fakeProcess) Wait(ctx context.Context) (int, error) {
	if p.a.hang {
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-p.closed:
			return -1, errors.New("connection closed")
		}
	}
	p.ended.Do(p.end)
	return p.a.code, nil
}
func (p *fakeProcess) Close() error {
	p.once.Do(func() { close(p.closed) })
	p.ended.Do(p.end)
	return nil
}

// parseExam parses an exam of the given tasks on nodes a and b.
func parseExam(t testing.TB, tasks string) *exam.Exam {
	t.Helper()
	ex, err := exam.Parse([]byte(`
id: fake
title: Fake
duration: 30m
tasks:
` + tasks + `
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 64, cpus: 0.25, pids: 128}
    capabilities: [NET_RAW]
  nodes:
    - {name: a, role: branch}
    - {name: b, role: branch}
`))
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

const scoringTasks = `
  - id: t1
    title: Write
    kind: text
    prompt: Write.
    points: 10
  - id: t2
    title: Pick
    kind: choice
    prompt: Pick.
    options: [up, down]
    correct: down
    points: 5
  - id: t3
    title: Route
    kind: command
    prompt: Route.
    checks:
      - {name: exit only, node: a, run: exit-only, points: 1}
      - {name: exit 3 wanted, node: a, run: exit-three, expect: {exit: 3}, points: 2}
      - {name: output, node: b, run: output, expect: {output: '^forwarding=1$'}, points: 4, hidden: true}
      - {name: wrong output, node: b, run: wrong-output, expect: {output: '^1$'}, points: 8}
      - {name: right output wrong exit, node: b, run: right-output-wrong-exit, expect: {output: '^1$'}, points: 16}
`

func grade(t *testing.T, rt grading.Runner, ex *exam.Exam, opts grading.Options) *grading.Results {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := grading.Grade(ctx, rt, ex, "s1", opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// check returns the result of the named check.
func check(t testing.TB, res *grading.Results, name string) grading.CheckResult {
	t.Helper()
	for _, tr := range res.Tasks {
		for _, c := range tr.Checks {
			if c.Name == name {
				return c
			}
		}
	}
	t.Fatalf("no check %q in the results", name)
	return grading.CheckResult{}
}

func task(t testing.TB, res *grading.Results, id string) grading.TaskResult {
	t.Helper()
	for _, tr := range res.Tasks {
		if tr.ID == id {
			return tr
		}
	}
	t.Fatalf("no task %q in the results", id)
	return grading.TaskResult{}
}

func TestScoring(t *testing.T) {
	ex := parseExam(t, scoringTasks)
	rt := newFake().
		on("a", "exit-only", answer{out: "anything\n"}).
		on("a", "exit-three", answer{code: 3}).
		on("b", "output", answer{out: "\n  forwarding=1 \n\n"}).
		on("b", "wrong-output", answer{out: "0\n"}).
		on("b", "right-output-wrong-exit", answer{out: "1\n", code: 1})
	res := grade(t, rt, ex, grading.Options{Answers: map[string]string{"t1": "prose", "t2": "down"}, Trigger: grading.TriggerSubmit})

	for _, tc := range []struct {
		name   string
		passed bool
		points int
		code   int
	}{
		{"exit only", true, 1, 0},
		{"exit 3 wanted", true, 2, 3},
		{"output", true, 4, 0},
		{"wrong output", false, 0, 0},
		{"right output wrong exit", false, 0, 1},
	} {
		c := check(t, res, tc.name)
		if c.Passed != tc.passed || c.Points != tc.points || c.ExitCode != tc.code || c.Error != "" || c.TimedOut {
			t.Errorf("%s = %+v, want passed %v, %d points, exit %d", tc.name, c, tc.passed, tc.points, tc.code)
		}
	}
	if c := check(t, res, "output"); !c.Hidden || c.Node != "b" || c.MaxPoints != 4 || c.Output != "\n  forwarding=1 \n\n" {
		t.Errorf("output check = %+v, want hidden, node b, 4 max points and the output as it came", c)
	}
	if tr := task(t, res, "t1"); !tr.Manual || tr.Points != 0 || tr.MaxPoints != 10 || tr.Answer != "prose" {
		t.Errorf("text task = %+v, want manual, 0 of 10, with its answer", tr)
	}
	if tr := task(t, res, "t2"); tr.Manual || tr.Points != 5 || tr.Answer != "down" {
		t.Errorf("choice task = %+v, want 5 points for the correct option", tr)
	}
	if tr := task(t, res, "t3"); tr.Points != 7 || tr.MaxPoints != 31 {
		t.Errorf("t3 = %d of %d points, want 7 of 31", tr.Points, tr.MaxPoints)
	}
	if res.Score != 12 || res.MaxScore != 46 || res.SessionID != "s1" || res.ExamID != "fake" || res.Trigger != grading.TriggerSubmit {
		t.Errorf("results = score %d of %d, session %q, exam %q, trigger %q; want 12 of 46, s1, fake, submit", res.Score, res.MaxScore, res.SessionID, res.ExamID, res.Trigger)
	}
	if res.ExamVersion != ex.Fingerprint() || res.GradedAt.IsZero() || res.GradedAt.Location() != time.UTC {
		t.Errorf("version %q at %v, want %q in UTC", res.ExamVersion, res.GradedAt, ex.Fingerprint())
	}
}

func TestChoiceScoring(t *testing.T) {
	ex := parseExam(t, scoringTasks)
	rt := newFake()
	for _, tc := range []struct {
		name    string
		answers map[string]string
		want    int
	}{
		{"correct", map[string]string{"t2": "down"}, 5},
		{"wrong", map[string]string{"t2": "up"}, 0},
		{"not answered", nil, 0},
		{"close but not the option", map[string]string{"t2": "down "}, 0},
		{"another task's answer", map[string]string{"t1": "down"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := grade(t, rt, ex, grading.Options{Tasks: []string{"t1", "t2"}, Answers: tc.answers})
			if tr := task(t, res, "t2"); tr.Points != tc.want || res.Score != tc.want {
				t.Errorf("t2 = %+v, score %d; want %d", tr, res.Score, tc.want)
			}
			if len(res.Tasks) != 2 || res.MaxScore != 15 {
				t.Errorf("graded %d tasks worth %d, want t1 and t2 worth 15", len(res.Tasks), res.MaxScore)
			}
		})
	}
	if len(rt.calls) != 0 {
		t.Errorf("grading only t1 and t2 ran %d checks", len(rt.calls))
	}
}

func TestCommandUsesTheGradersTools(t *testing.T) {
	c := exam.Check{Run: "sysctl -n net.ipv4.ip_forward", Timeout: exam.Duration{Duration: 1500 * time.Millisecond}}
	cmd := grading.Command(c, "examlab-exit-x=")
	if cmd[0] != grading.Busybox || !strings.HasPrefix(grading.Busybox, grading.ToolsDir+"/") {
		t.Errorf("command %q does not start with the grader's busybox", cmd)
	}
	if cmd[5] != c.Run || cmd[6] != "examlab-exit-x=" || cmd[7] != "2" {
		t.Errorf("command %q: want the snippet, the marker and its timeout rounded up to 2 seconds", cmd)
	}
	for _, e := range grading.Env {
		if path, ok := strings.CutPrefix(e, "PATH="); ok && path != grading.ToolsDir+"/bin" {
			t.Errorf("PATH = %q, want the grader's applets only", path)
		}
	}
	rt := newFake().on("a", "x", answer{})
	ex := parseExam(t, `
  - id: t1
    title: X
    kind: command
    prompt: X.
    checks: [{name: x, node: a, run: x, points: 1}]`)
	grade(t, rt, ex, grading.Options{})
	if len(rt.calls) != 1 || rt.calls[0].TTY || !slices.Equal(rt.calls[0].Env, grading.Env) || rt.calls[0].Cmd[0] != grading.Busybox {
		t.Errorf("exec requests = %+v, want one without a TTY, with the grader's env and busybox", rt.calls)
	}
}

const twoNodeTasks = `
  - id: t1
    title: Both
    kind: command
    prompt: Both.
    checks:
      - {name: a1, node: a, run: a1, points: 1, timeout: 1s}
      - {name: a2, node: a, run: a2, points: 1, timeout: 1s}
      - {name: b1, node: b, run: b1, points: 1, timeout: 1s}
      - {name: b2, node: b, run: b2, points: 1, timeout: 1s}
`

// TestNodesAtOnceChecksInTurn: a node's checks run one after another, the
// nodes at once, so a grading lasts as long as its slowest node.
func TestNodesAtOnceChecksInTurn(t *testing.T) {
	const each = 300 * time.Millisecond
	ex := parseExam(t, twoNodeTasks)
	rt := newFake()
	for _, c := range []string{"a1", "a2", "b1", "b2"} {
		rt.on(c[:1], c, answer{delay: each})
	}
	start := time.Now()
	res := grade(t, rt, ex, grading.Options{})
	took := time.Since(start)
	if res.Score != 4 {
		t.Errorf("score %d, want 4", res.Score)
	}
	if took < 2*each || took >= 4*each {
		t.Errorf("grading took %s; want about %s (two nodes at once, two checks each in turn)", took, 2*each)
	}
	if rt.maxRun["a"] != 1 || rt.maxRun["b"] != 1 {
		t.Errorf("at most %v checks ran at once per node, want 1", rt.maxRun)
	}
	for _, n := range []string{"a1", "b2"} {
		if d := check(t, res, n).DurationMS; d < each.Milliseconds() {
			t.Errorf("%s took %dms, want at least %s", n, d, each)
		}
	}
}

type counter struct{ ran, failed, timedOut atomic.Int32 }

func (c *counter) CheckRan(passed, timedOut bool, d time.Duration) {
	c.ran.Add(1)
	if !passed {
		c.failed.Add(1)
	}
	if timedOut {
		c.timedOut.Add(1)
	}
}

func TestChecksThatCannotRun(t *testing.T) {
	defer grading.SetGrace(200 * time.Millisecond)()
	ex := parseExam(t, twoNodeTasks)
	t.Run("a node that is gone", func(t *testing.T) {
		rt := newFake().on("a", "a1", answer{}).on("a", "a2", answer{code: 1})
		rt.nodeErr["b"] = lab.ErrNotFound
		res := grade(t, rt, ex, grading.Options{})
		for _, n := range []string{"b1", "b2"} {
			if c := check(t, res, n); c.Passed || c.Points != 0 || c.Error != "node b is gone" || c.ExitCode != -1 {
				t.Errorf("%s = %+v, want 0 points because node b is gone", n, c)
			}
		}
		if !check(t, res, "a1").Passed || check(t, res, "a2").Passed || res.Score != 1 {
			t.Errorf("a's checks did not run as usual: %+v", res.Tasks)
		}
	})
	t.Run("a node that is stopped", func(t *testing.T) {
		rt := newFake().on("a", "a1", answer{}).on("a", "a2", answer{})
		rt.nodeErr["b"] = lab.ErrNotRunning
		res := grade(t, rt, ex, grading.Options{})
		if c := check(t, res, "b1"); c.Error != "node b is not running" {
			t.Errorf("b1 = %+v", c)
		}
		if res.Score != 2 {
			t.Errorf("score %d, want a's 2", res.Score)
		}
	})
	t.Run("an exec the runtime loses", func(t *testing.T) {
		rt := newFake().on("a", "a1", answer{hang: true}).on("a", "a2", answer{}).on("b", "b1", answer{}).on("b", "b2", answer{})
		obs := &counter{}
		start := time.Now()
		res := grade(t, rt, ex, grading.Options{Observer: obs})
		if took := time.Since(start); took > 1*time.Second+200*time.Millisecond+time.Second {
			t.Errorf("grading took %s; a lost exec must end at its timeout and grace", took)
		}
		if c := check(t, res, "a1"); !c.TimedOut || c.Error != "timed out" || c.Points != 0 {
			t.Errorf("a1 = %+v, want timed out", c)
		}
		if res.Score != 3 {
			t.Errorf("score %d, want the other three checks' 3", res.Score)
		}
		if obs.ran.Load() != 4 || obs.failed.Load() != 1 || obs.timedOut.Load() != 1 {
			t.Errorf("observer heard %d runs, %d failed, %d timed out; want 4, 1, 1", obs.ran.Load(), obs.failed.Load(), obs.timedOut.Load())
		}
	})
	t.Run("an engine too busy to start the check", func(t *testing.T) {
		defer grading.SetStartLimit(300 * time.Millisecond)()
		rt := newFake().on("a", "a1", answer{slowStart: true}).on("a", "a2", answer{}).on("b", "b1", answer{}).on("b", "b2", answer{})
		res := grade(t, rt, ex, grading.Options{})
		if c := check(t, res, "a1"); !c.TimedOut || c.Error != "timed out: a did not start the check within 300ms" {
			t.Errorf("a1 = %+v, want timed out before it started", c)
		}
		if res.Score != 3 {
			t.Errorf("score %d, want the other three checks' 3", res.Score)
		}
	})
	t.Run("killed at the timeout", func(t *testing.T) {
		rt := newFake().on("a", "a1", answer{code: 137, delay: 1100 * time.Millisecond}).on("a", "a2", answer{code: 137}).on("b", "b1", answer{}).on("b", "b2", answer{})
		res := grade(t, rt, ex, grading.Options{})
		if c := check(t, res, "a1"); !c.TimedOut || c.Error != "timed out" {
			t.Errorf("a1, killed after its 1s = %+v, want timed out", c)
		}
		// Killed at once: by the kernel for memory, say, not the timeout.
		if c := check(t, res, "a2"); c.TimedOut || c.Passed || c.ExitCode != 137 {
			t.Errorf("a2, killed at once = %+v, want a failure with exit 137", c)
		}
	})
	t.Run("tools missing", func(t *testing.T) {
		rt := newFake().on("a", "a1", answer{code: 127, out: "OCI runtime exec failed: exec: \"" + grading.Busybox + "\": stat " + grading.Busybox + ": no such file or directory"}).
			on("a", "a2", answer{code: 127}).on("b", "b1", answer{}).on("b", "b2", answer{})
		res := grade(t, rt, ex, grading.Options{})
		if c := check(t, res, "a1"); c.Error != "the grader's tools are missing in a" {
			t.Errorf("a1 = %+v", c)
		}
		if c := check(t, res, "a2"); c.Error != "" || c.Passed {
			t.Errorf("a2, a snippet's own exit 127 = %+v, want a plain failure", c)
		}
	})
	t.Run("grading cancelled", func(t *testing.T) {
		rt := newFake().on("a", "a1", answer{hang: true}).on("a", "a2", answer{}).on("b", "b1", answer{hang: true}).on("b", "b2", answer{})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if _, err := grading.Grade(ctx, rt, ex, "s1", grading.Options{}); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Grade = %v, want the context's error", err)
		}
	})
}

// TestOutputFloodIsCut: output past MaxOutput is read and dropped, never
// kept: a gigabyte costs the grader no more memory than a line.
func TestOutputFloodIsCut(t *testing.T) {
	ex := parseExam(t, `
  - id: t1
    title: Flood
    kind: command
    prompt: Flood.
    checks: [{name: flood, node: a, run: yes, points: 1, expect: {output: '^y+$'}}]`)
	rt := newFake().on("a", "yes", answer{flood: 1 << 30})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res := grade(t, rt, ex, grading.Options{})
	runtime.ReadMemStats(&after)
	c := check(t, res, "flood")
	if len(c.Output) != grading.MaxOutput || !c.Truncated || !c.Passed {
		t.Errorf("flood kept %d bytes, truncated %v, passed %v; want %d, true, true", len(c.Output), c.Truncated, c.Passed, grading.MaxOutput)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("grading a 1 GiB flood allocated %d MiB", alloc>>20)
	}
	rt = newFake().on("a", "yes", answer{out: strings.Repeat("y", grading.MaxOutput)})
	if c := check(t, grade(t, rt, ex, grading.Options{}), "flood"); c.Truncated || len(c.Output) != grading.MaxOutput {
		t.Errorf("exactly %d bytes: kept %d, truncated %v", grading.MaxOutput, len(c.Output), c.Truncated)
	}
}
