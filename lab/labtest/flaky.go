package labtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/examlab/examlab/lab"
)

var _ lab.Runtime = (*Flaky)(nil)

// ErrInjected is what a call Flaky fails returns when the test gave no
// error of its own.
var ErrInjected = errors.New("labtest: injected failure")

// Call is one call made through a Flaky runtime.
type Call struct {
	// Method is the lab.Runtime method: "Provision", "Exec", …, or
	// "CaptureNode" for one node's save within a Capture.
	Method string
	// SessionID is the lab called on; "" for Labs and Ping.
	SessionID string
	// Node is set for Exec, ExportFS, CaptureNode, Logs and ResetNode.
	Node string
	// N counts the method's calls: 1 for its first.
	N int
}

// methods are the lab.Runtime methods a Flaky can fail.
var methods = map[string]bool{
	"Provision": true, "Status": true, "Exec": true, "ExportFS": true, "Capture": true, "CaptureNode": true, "Logs": true,
	"Destroy": true, "ResetNode": true, "Labs": true, "Ping": true,
}

// Flaky wraps a runtime and fails chosen calls, the way an engine or a
// cluster fails now and then, and counts the calls of each method. A
// failed call never reaches the wrapped runtime. Its methods are safe for
// concurrent use.
type Flaky struct {
	r lab.Runtime

	mu    sync.Mutex
	calls map[string]int
	next  map[string][]error
	rule  func(Call) error
}

// NewFlaky wraps r; until told otherwise every call goes through.
func NewFlaky(r lab.Runtime) *Flaky {
	return &Flaky{r: r, calls: map[string]int{}, next: map[string][]error{}}
}

func checkMethod(method string) {
	if !methods[method] {
		panic(fmt.Sprintf("labtest: %q is not a lab.Runtime method", method))
	}
}

// FailNext makes the next n calls of method fail with err (ErrInjected if
// err is nil), after any failures already queued for it.
func (f *Flaky) FailNext(method string, n int, err error) {
	checkMethod(method)
	if err == nil {
		err = ErrInjected
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.next[method] = append(f.next[method], err)
	}
}

// FailWhen asks rule about every call that no queued failure took; a
// non-nil answer fails the call with it. The rule runs outside Flaky's
// lock, so it may call the runtime itself. A nil rule removes the rule.
func (f *Flaky) FailWhen(rule func(Call) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rule = rule
}

// Calls counts the calls of method so far, failed ones included.
func (f *Flaky) Calls(method string) int {
	checkMethod(method)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// enter counts a call and decides whether it fails.
func (f *Flaky) enter(method, sessionID, node string) error {
	f.mu.Lock()
	f.calls[method]++
	c := Call{Method: method, SessionID: sessionID, Node: node, N: f.calls[method]}
	if q := f.next[method]; len(q) > 0 {
		f.next[method] = q[1:]
		f.mu.Unlock()
		return fmt.Errorf("%s: %w", method, q[0])
	}
	rule := f.rule
	f.mu.Unlock()
	if rule == nil {
		return nil
	}
	if err := rule(c); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return nil
}

func (f *Flaky) Provision(ctx context.Context, spec lab.Spec) error {
	if err := f.enter("Provision", spec.SessionID, ""); err != nil {
		return err
	}
	return f.r.Provision(ctx, spec)
}

func (f *Flaky) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	if err := f.enter("Status", spec.SessionID, ""); err != nil {
		return nil, err
	}
	return f.r.Status(ctx, spec)
}

func (f *Flaky) Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error) {
	if err := f.enter("Exec", sessionID, node); err != nil {
		return nil, err
	}
	return f.r.Exec(ctx, sessionID, node, req)
}

func (f *Flaky) ExportFS(ctx context.Context, sessionID, node string, w io.Writer) error {
	if err := f.enter("ExportFS", sessionID, node); err != nil {
		return err
	}
	return f.r.ExportFS(ctx, sessionID, node, w)
}

// Capture fails as a whole when "Capture" is failed, and fails one node's
// save, before it reaches save, when "CaptureNode" is failed for it.
func (f *Flaky) Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) ([]lab.NodeCapture, error) {
	if err := f.enter("Capture", sessionID, ""); err != nil {
		return nil, err
	}
	return f.r.Capture(ctx, sessionID, nodes, mode, func(node string, write func(io.Writer) error) error {
		if err := f.enter("CaptureNode", sessionID, node); err != nil {
			return err
		}
		return save(node, write)
	})
}

func (f *Flaky) Logs(ctx context.Context, sessionID, node string, w io.Writer) error {
	if err := f.enter("Logs", sessionID, node); err != nil {
		return err
	}
	return f.r.Logs(ctx, sessionID, node, w)
}

func (f *Flaky) Destroy(ctx context.Context, sessionID string) error {
	if err := f.enter("Destroy", sessionID, ""); err != nil {
		return err
	}
	return f.r.Destroy(ctx, sessionID)
}

func (f *Flaky) ResetNode(ctx context.Context, spec lab.Spec, node string) error {
	if err := f.enter("ResetNode", spec.SessionID, node); err != nil {
		return err
	}
	return f.r.ResetNode(ctx, spec, node)
}

func (f *Flaky) Labs(ctx context.Context) ([]string, error) {
	if err := f.enter("Labs", "", ""); err != nil {
		return nil, err
	}
	return f.r.Labs(ctx)
}

func (f *Flaky) Ping(ctx context.Context) error {
	if err := f.enter("Ping", "", ""); err != nil {
		return err
	}
	return f.r.Ping(ctx)
}
