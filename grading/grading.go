// Package grading judges a candidate's lab: it runs the exam's checks in
// the lab's nodes with tools the grader brings, scores choice answers, and
// produces the results an exam team reads and a candidate may appeal.
package grading

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// ToolsDir is where every node of a lab has the grader's tools: a
// read-only mount the runtime provides, which a candidate who is root in
// the node can neither change nor hide. Checks run its busybox as their
// shell, with its applets (ToolsDir/bin) as their only PATH, so a
// replaced /bin/sh, sysctl or ping in the node changes nothing.
const ToolsDir = "/.examlab"

// Busybox is the grader's static busybox inside a node.
const Busybox = ToolsDir + "/busybox"

// MaxOutput is how much of a check's standard output is kept; the rest is
// read and thrown away, never buffered.
const MaxOutput = 4 << 10

// Triggers of a grading.
const (
	TriggerSubmit    = "submit"
	TriggerDeadline  = "deadline"
	TriggerRegrade   = "regrade"
	TriggerCandidate = "candidate"
)

// Results are one grading of one session.
type Results struct {
	SessionID   string    `json:"session_id"`
	ExamID      string    `json:"exam_id"`
	ExamVersion string    `json:"exam_version"`
	Trigger     string    `json:"trigger"`
	GradedAt    time.Time `json:"graded_at"`
	DurationMS  int64     `json:"duration_ms"`
	// Score counts checks and choice answers; manual marks of text
	// answers are added where they are shown (Total).
	Score    int          `json:"score"`
	MaxScore int          `json:"max_score"`
	Tasks    []TaskResult `json:"tasks"`
	// Note says where the checks ran when it was not the session's own
	// lab (a review lab restored from its archive).
	Note string `json:"note,omitempty"`
}

// TaskResult is one task's part of the results.
type TaskResult struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Points    int    `json:"points"`
	MaxPoints int    `json:"max_points"`
	// Manual: the task is marked by a person (a text answer, or a task
	// with neither checks nor a correct option).
	Manual bool          `json:"manual,omitempty"`
	Answer string        `json:"answer,omitempty"`
	Checks []CheckResult `json:"checks,omitempty"`
}

// CheckResult is one check's outcome.
type CheckResult struct {
	Name       string `json:"name"`
	Node       string `json:"node"`
	Passed     bool   `json:"passed"`
	Points     int    `json:"points"`
	MaxPoints  int    `json:"max_points"`
	ExitCode   int    `json:"exit_code"`
	Output     string `json:"output"`
	Truncated  bool   `json:"truncated,omitempty"`
	DurationMS int64  `json:"duration_ms"`
	TimedOut   bool   `json:"timed_out,omitempty"`
	// Error says why the check could not run (a node that is gone).
	Error  string `json:"error,omitempty"`
	Hidden bool   `json:"hidden,omitempty"`
}

// Runner starts processes in a lab's nodes: a lab.Runtime.
type Runner interface {
	Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error)
}

// Observer hears of every check run, for metrics, from the goroutines of
// several nodes at once.
type Observer interface {
	CheckRan(passed, timedOut bool, d time.Duration)
}

// Options of one grading.
type Options struct {
	// Tasks limits the grading to these task ids; empty means all.
	Tasks []string
	// Answers are the candidate's answers by task id, for choice scoring.
	Answers map[string]string
	// Trigger is recorded in the results.
	Trigger  string
	Now      func() time.Time
	Observer Observer
	// LabID is the lab the checks run in when it is not the session's
	// own id (a lab claimed from a warm pool: session.Session.Lab).
	LabID string
}

// Grade runs the checks of ex (or of opts.Tasks) in the session's lab and
// scores its choice answers. Each node runs its checks one after another
// and the nodes run at once, so a grading lasts at most the longest node's
// sum of timeouts. A check that cannot run scores 0 with the reason; the
// others still run. Grade itself fails only when ctx ends first.
func Grade(ctx context.Context, rt Runner, ex *exam.Exam, sessionID string, opts Options) (*Results, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	start := now()
	want := map[string]bool{}
	for _, id := range opts.Tasks {
		want[id] = true
	}
	res := &Results{SessionID: sessionID, ExamID: ex.ID, ExamVersion: ex.Fingerprint(), Trigger: opts.Trigger}
	// A job is one check and where its result goes.
	type job struct {
		task, check int
		c           exam.Check
	}
	byNode := map[string][]job{}
	var nodes []string
	for _, t := range ex.Tasks {
		if len(want) > 0 && !want[t.ID] {
			continue
		}
		tr := TaskResult{ID: t.ID, Kind: t.Kind, MaxPoints: t.Points}
		switch {
		case len(t.Checks) > 0:
			tr.Checks = make([]CheckResult, len(t.Checks))
			for j, c := range t.Checks {
				if _, seen := byNode[c.Node]; !seen {
					nodes = append(nodes, c.Node)
				}
				byNode[c.Node] = append(byNode[c.Node], job{len(res.Tasks), j, c})
				tr.Checks[j] = CheckResult{Name: c.Name, Node: c.Node, MaxPoints: c.Points, Hidden: c.Hidden}
			}
		case t.Kind == exam.KindChoice && t.Correct != "":
			tr.Answer = opts.Answers[t.ID]
			if tr.Answer == t.Correct {
				tr.Points = t.Points
			}
		default:
			tr.Manual = true
			tr.Answer = opts.Answers[t.ID]
		}
		res.Tasks = append(res.Tasks, tr)
	}
	labID := sessionID
	if opts.LabID != "" {
		labID = opts.LabID
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, node := range nodes {
		wg.Go(func() {
			for _, jb := range byNode[node] {
				cr := runCheck(ctx, rt, labID, jb.c)
				if opts.Observer != nil {
					opts.Observer.CheckRan(cr.Passed, cr.TimedOut, time.Duration(cr.DurationMS)*time.Millisecond)
				}
				cr.Name, cr.Node, cr.MaxPoints, cr.Hidden = jb.c.Name, jb.c.Node, jb.c.Points, jb.c.Hidden
				mu.Lock()
				res.Tasks[jb.task].Checks[jb.check] = cr
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("grade %s: %w", sessionID, err)
	}
	for i := range res.Tasks {
		tr := &res.Tasks[i]
		for _, c := range tr.Checks {
			tr.Points += c.Points
		}
		res.Score += tr.Points
		res.MaxScore += tr.MaxPoints
	}
	res.GradedAt = now().UTC()
	res.DurationMS = now().Sub(start).Milliseconds()
	return res, nil
}

// Command is what runs a check in its node, with the grader's busybox
// only: its shell, its applets (Env's PATH), never the node's own. The
// snippet runs in a process group of its own, which is killed whole at the
// check's timeout, so nothing it started outlives it. Standard error is
// dropped: the expectation is on standard output, of which the node itself
// passes on MaxOutput bytes and throws the rest away (a check printing a
// gigabyte costs the grader nothing, and still ends as it would). The
// snippet's exit code follows on a
// line that starts with marker, which the caller makes unguessable, so no
// output a candidate can plant passes for it.
func Command(c exam.Check, marker string) []string {
	secs := int((c.Timeout.Duration + time.Second - 1) / time.Second)
	const wrapper = `B=` + Busybox + `
exec 2>/dev/null 3>&1
$B setsid $B sh -c '{ $0 sh -c "$1"; printf "\n%s%d\n" "$2" "$?" >&3; } | { $0 head -c 4097; $0 cat >/dev/null; }' "$B" "$1" "$2" &
pid=$!
{ $B sleep "$3" && $B kill -KILL -- "-$pid"; } >/dev/null 3>&- &
wait "$pid"
`
	return []string{Busybox, "sh", "-c", wrapper, "check", c.Run, marker, strconv.Itoa(secs)}
}

// Env is the environment a check runs with.
var Env = []string{"PATH=" + ToolsDir + "/bin", "HOME=/root", "LC_ALL=C"}

// grace is how long past a check's own timeout the grader waits for the
// node's busybox to have killed it, and for the engine to report so,
// before giving up on the exec. A busy engine (many labs graded at once)
// answers in seconds, not milliseconds.
var grace = 15 * time.Second

// startLimit bounds how long the runtime may take to start a check's
// process. It is apart from the check's timeout, which the node counts
// from the process's start: a slow engine must not eat a check's time.
var startLimit = time.Minute

func runCheck(ctx context.Context, rt Runner, sessionID string, c exam.Check) CheckResult {
	start := time.Now()
	// The exec lives as long as cctx: startLimit to start, then the
	// check's timeout and grace.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := CheckResult{ExitCode: -1}
	finish := func() CheckResult {
		out.DurationMS = time.Since(start).Milliseconds()
		return out
	}
	marker := newMarker()
	lost := func() bool { return cctx.Err() != nil && ctx.Err() == nil }
	starting := time.AfterFunc(startLimit, cancel)
	p, err := rt.Exec(cctx, sessionID, c.Node, lab.ExecRequest{Cmd: Command(c, marker), Env: Env})
	starting.Stop()
	if err != nil {
		out.Error = plainError(c.Node, err)
		if lost() {
			out.TimedOut, out.Error = true, "timed out: "+c.Node+" did not start the check within "+startLimit.String()
		}
		return finish()
	}
	defer p.Close()
	running := time.AfterFunc(c.Timeout.Duration+grace, cancel)
	defer running.Stop()
	// Whatever the runtime does with cctx, a read that outlasts it ends.
	stop := context.AfterFunc(cctx, func() { _ = p.Close() })
	defer stop()
	_ = p.CloseWrite()
	var kept limitedBuffer
	_, rerr := io.Copy(&kept, p)
	_, werr := p.Wait(cctx)
	output, code, ok := splitMarker(kept.String(), marker)
	out.Output, out.Truncated = output, kept.dropped || len(output) > MaxOutput
	if len(out.Output) > MaxOutput {
		out.Output = out.Output[:MaxOutput]
	}
	switch {
	case lost():
		out.TimedOut, out.Error = true, "timed out"
		return finish()
	case werr != nil:
		out.Error = plainError(c.Node, werr)
		return finish()
	case rerr != nil && !errors.Is(rerr, io.EOF):
		out.Error = plainError(c.Node, rerr)
		return finish()
	}
	if !ok {
		if time.Since(start) < c.Timeout.Duration && strings.Contains(out.Output, Busybox) {
			// The engine could not start the grader's busybox: the node
			// has no tools mounted.
			out.Output, out.Error = "", "the grader's tools are missing in "+c.Node
			return finish()
		}
		// No exit code came back: the check's process group was killed
		// at its timeout before it could report.
		out.TimedOut, out.Error = true, "timed out"
		return finish()
	}
	out.ExitCode = code
	out.Passed = code == c.Expect.ExitCode()
	if re := c.Expect.OutputPattern(); out.Passed && re != nil {
		out.Passed = re.MatchString(strings.TrimSpace(out.Output))
	}
	if out.Passed {
		out.Points = c.Points
	}
	return finish()
}

// newMarker returns a line prefix no output can predict.
func newMarker() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "examlab-exit-" + hex.EncodeToString(b) + "="
}

// splitMarker takes the exit code line out of a check's output. The line
// may sit anywhere: the cut output can still be on its way when the code is
// written.
func splitMarker(s, marker string) (string, int, bool) {
	i := strings.LastIndex(s, "\n"+marker)
	if i < 0 {
		return s, -1, false
	}
	rest := s[i+1+len(marker):]
	end := strings.IndexByte(rest, '\n')
	if end < 0 {
		return s, -1, false
	}
	code, err := strconv.Atoi(rest[:end])
	if err != nil {
		return s, -1, false
	}
	return s[:i] + rest[end+1:], code, true
}

// plainError says why a check could not run, in words an examiner reads.
func plainError(node string, err error) string {
	switch {
	case errors.Is(err, lab.ErrNotFound):
		return "node " + node + " is gone"
	case errors.Is(err, lab.ErrNotRunning):
		return "node " + node + " is not running"
	}
	return "could not run in " + node + ": " + err.Error()
}

// keepBytes is what the grader reads of a check's answer: the output the
// node cut, and room for the exit code line.
const keepBytes = MaxOutput + 256

// limitedBuffer keeps the first keepBytes written to it and throws the
// rest away.
type limitedBuffer struct {
	b       []byte
	dropped bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	room := keepBytes - len(l.b)
	if room >= len(p) {
		l.b = append(l.b, p...)
		return len(p), nil
	}
	l.b = append(l.b, p[:max(room, 0)]...)
	l.dropped = true
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
