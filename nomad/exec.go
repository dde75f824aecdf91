package nomad

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/lab"
)

var _ lab.Process = (*process)(nil)

// runningNode returns the allocation of a node whose task is running.
func (r *Runtime) runningNode(ctx context.Context, sessionID, node string) (*api.Allocation, error) {
	alloc, ts, err := r.nodeAlloc(ctx, sessionID, node)
	if err != nil {
		return nil, err
	}
	if ts == nil || ts.State != taskRunning {
		state := "not started"
		if ts != nil {
			state = ts.State
		}
		return nil, fmt.Errorf("node %s of session %s is %s: %w", node, sessionID, state, lab.ErrNotRunning)
	}
	return alloc, nil
}

// Exec starts req.Cmd in the node through Nomad's alloc exec (a WebSocket
// to the client, proxied by the servers when the client is not directly
// reachable) and returns it as a lab.Process. The stream lives until Close
// is called or ctx is done.
//
// Alloc exec has no environment parameter; req.Env is applied by running
// the command under env(1).
//
// The start is noted in the runtime's gate (lab.ExecGate) so that a
// capture does not freeze the node while the process starts. Alloc exec
// says nothing of the start itself: the note ends with the process's
// first output or its exit, and lapses when the stream breaks first.
func (r *Runtime) Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error) {
	if len(req.Cmd) == 0 {
		return nil, fmt.Errorf("exec in %s: empty command", node)
	}
	end, err := r.gate.BeginExec(ctx, sessionID)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", node, err)
	}
	alloc, err := r.runningNode(ctx, sessionID, node)
	if err != nil {
		end(true)
		return nil, fmt.Errorf("exec in %s: %w", node, err)
	}
	cmd := req.Cmd
	if len(req.Env) > 0 {
		cmd = append(append([]string{"env"}, req.Env...), req.Cmd...)
	}
	if !req.TTY {
		cmd = lingering(cmd, execLinger)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ectx, cancel := context.WithCancel(ctx)
	p := &process{
		stdin:  inW,
		out:    outR,
		tty:    req.TTY,
		sizes:  make(chan api.TerminalSize, 4),
		done:   make(chan struct{}),
		cancel: cancel,
	}
	// The exec stream sends keystrokes and sizes from separate goroutines,
	// so input typed at once could overtake the initial size and the
	// first command would see a 0x0 terminal. Input is held until the
	// initial size has been taken for sending, and a moment more.
	var stdin io.Reader = inR
	sizes := make(chan api.TerminalSize)
	if req.TTY && req.Size.Rows > 0 && req.Size.Cols > 0 {
		gate := make(chan struct{})
		stdin = &gatedReader{r: inR, gate: gate}
		go func() {
			select {
			case sizes <- api.TerminalSize{Height: int(req.Size.Rows), Width: int(req.Size.Cols)}:
				time.Sleep(initialSizeSettle)
			case <-ectx.Done():
			}
			close(gate)
			feedSizes(ectx, p.sizes, sizes)
		}()
	} else {
		go feedSizes(ectx, p.sizes, sizes)
	}
	go func() {
		out := &firstWrite{w: outW, first: func() { end(true) }}
		code, err := r.client.Allocations().Exec(ectx, alloc, node, req.TTY, cmd, stdin, out, out, sizes, r.query(ectx))
		end(err == nil)
		if err != nil {
			code = -1
			err = fmt.Errorf("exec in %s: %w", node, err)
		}
		p.code, p.err = code, err
		// EOF for the reader on success, the error otherwise; and input
		// written after the end fails instead of blocking.
		outW.CloseWithError(err)
		inR.CloseWithError(io.ErrClosedPipe)
		close(p.done)
	}()
	return p, nil
}

// firstWrite calls first once, before the first write to w.
type firstWrite struct {
	w     io.Writer
	once  sync.Once
	first func()
}

func (f *firstWrite) Write(p []byte) (int, error) {
	f.once.Do(f.first)
	return f.w.Write(p)
}

// Nomad's docker driver reports an exec's exit as soon as it sees the
// process gone (it polls every 100 ms) and closes the stream without
// waiting for the output still in flight: the tail of a command's output,
// or all of a short one, can be lost while the exit code says 0 (seen on a
// real agent: 1 to 3 in 100 short commands, a third of 1 MiB outputs;
// hashicorp/nomad#27146). A command run without a TTY is therefore kept
// alive a moment after it ends, so that its output is through before the
// driver looks; its exit code is passed on unchanged.
const (
	execLinger   = 300 * time.Millisecond
	exportLinger = time.Second
)

// lingering wraps cmd so that it exits with cmd's code, linger after cmd
// ends. The node's /bin/sh runs the wrapper; cmd's words are passed as
// arguments, never parsed as shell.
func lingering(cmd []string, linger time.Duration) []string {
	script := fmt.Sprintf(`"$@"; rc=$?; sleep %.2f; exit $rc`, linger.Seconds())
	return append([]string{"/bin/sh", "-c", script, "examlab-exec"}, cmd...)
}

// initialSizeSettle is how long input waits after the initial terminal
// size has been handed to the exec stream's sender.
const initialSizeSettle = 20 * time.Millisecond

// feedSizes passes resizes on to the exec stream until ctx ends.
func feedSizes(ctx context.Context, from <-chan api.TerminalSize, to chan<- api.TerminalSize) {
	for {
		select {
		case sz := <-from:
			select {
			case to <- sz:
			case <-ctx.Done():
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// gatedReader holds reads until gate is closed.
type gatedReader struct {
	r    io.Reader
	gate <-chan struct{}
}

func (g *gatedReader) Read(b []byte) (int, error) {
	<-g.gate
	return g.r.Read(b)
}

// process is a command running in a node through alloc exec.
type process struct {
	stdin  *io.PipeWriter
	out    *io.PipeReader
	tty    bool
	sizes  chan api.TerminalSize
	done   chan struct{}
	cancel context.CancelFunc

	// Set before done is closed.
	code int
	err  error

	closeOnce sync.Once
}

// Read returns the process's output: the terminal stream with a TTY,
// stdout and stderr merged in arrival order without one.
func (p *process) Read(b []byte) (int, error) { return p.out.Read(b) }

// Write feeds the process's stdin.
func (p *process) Write(b []byte) (int, error) { return p.stdin.Write(b) }

// CloseWrite ends the process's input; Nomad passes it on as a stdin close.
func (p *process) CloseWrite() error { return p.stdin.Close() }

// Resize sends a new terminal size down the exec stream.
func (p *process) Resize(ctx context.Context, sz lab.Size) error {
	if !p.tty {
		return nil
	}
	select {
	case p.sizes <- api.TerminalSize{Height: int(sz.Rows), Width: int(sz.Cols)}:
		return nil
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("resize exec terminal: %w", ctx.Err())
	}
}

// Wait returns the exit code once the exec stream has ended.
func (p *process) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
		return p.code, p.err
	case <-ctx.Done():
		return -1, fmt.Errorf("wait for exec: %w", ctx.Err())
	}
}

// Close ends the exec stream. A process that ignores the hangup may keep
// running in the node.
func (p *process) Close() error {
	p.closeOnce.Do(func() {
		p.cancel()
		p.stdin.Close()
		p.out.Close()
	})
	return nil
}

// exportCmd writes the node's root filesystem to stdout as a tar stream.
// Pseudo-filesystems and mounts (/proc, /sys, /dev, and Nomad's task
// directories, whose secrets/ holds the task's identity token) are left
// out: --one-file-system skips what is mounted, the excludes name the
// mount points themselves.
var exportCmd = []string{"tar", "-C", "/", "-cf", "-", "--one-file-system", "--numeric-owner",
	"--exclude=./proc", "--exclude=./sys", "--exclude=./dev",
	"--exclude=./alloc", "--exclude=./local", "--exclude=./secrets", "."}

func (s *stopWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(b)
	if err != nil {
		s.err = err
		s.stop()
	}
	return n, err
}

func (s *stopWriter) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if l.n > 0 {
		k := min(len(b), l.n)
		l.n -= k
		if _, err := l.w.Write(b[:k]); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}
