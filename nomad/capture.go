package nomad

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/examlab/examlab/lab"
	"github.com/hashicorp/nomad/api"
)

// ExportFS writes the node's filesystem to w as a tar stream, read through
// alloc exec. Only a running node can be read this way; archive runs
// before cleanup stops the lab. A node whose task is dead is reported as
// not found (with lab.ErrNotRunning too), so the archive records it as
// missing instead of retrying forever.
func (r *Runtime) ExportFS(ctx context.Context, sessionID, node string, w io.Writer) error {
	alloc, err := r.runningNode(ctx, sessionID, node)
	if errors.Is(err, lab.ErrNotRunning) {
		return fmt.Errorf("export filesystem: %w: %w", lab.ErrNotFound, err)
	}
	if err != nil {
		return fmt.Errorf("export filesystem: %w", err)
	}
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The exec stream drops write errors, so a failing w must stop it.
	check := newTarCheck()
	defer check.abort()
	sink := &stopWriter{w: io.MultiWriter(w, check), stop: cancel}
	var stderr bytes.Buffer
	errw := &limitWriter{w: &stderr, n: 8 << 10}
	code, err := r.client.Allocations().Exec(ectx, alloc, node, false, lingering(exportCmd, exportLinger),
		strings.NewReader(""), sink, errw, nil, r.query(ectx))
	if werr := sink.failed(); werr != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, werr)
	}
	if err != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, err)
	}
	// Output can still be cut short by the exec stream (see lingering):
	// an archive that does not end as tar ends is refused, so the archive
	// task retries rather than keep half a filesystem.
	if code == 0 || code == 1 {
		if err := check.complete(); err != nil {
			return fmt.Errorf("export filesystem of %s: %w", node, err)
		}
	}
	// GNU tar exits 1 when a file changed while it was read: the archive is
	// complete, that file as it was at some moment.
	if code != 0 && code != 1 {
		return fmt.Errorf("export filesystem of %s: tar exited %d: %s", node, code, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// stopWriter passes writes on until one fails, then cancels the stream.
type stopWriter struct {
	w    io.Writer
	stop func()
	mu   sync.Mutex
	err  error
}

// tailWriter keeps the last max bytes written.
type tailWriter struct {
	buf bytes.Buffer
	max int
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.buf.Write(b)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(b), nil
}

// limitWriter keeps the first n bytes written and discards the rest.
type limitWriter struct {
	w io.Writer
	n int
}

// Logs writes the node's output. A lab rendered from version 8 on has
// Nomad collect no logs of its nodes (two plugin processes fewer per node
// to start), so the lab's agent reads them from the client's engine: stdout
// and stderr interleaved, each line after its time, as the one-host
// runtime writes them. An older lab's logs are read with the alloc fs logs
// API: stdout, then stderr under a "--- stderr ---" line, since Nomad
// keeps the two streams in separate files.
func (r *Runtime) Logs(ctx context.Context, sessionID, node string, w io.Writer) error {
	alloc, _, err := r.nodeAlloc(ctx, sessionID, node)
	if err != nil {
		return fmt.Errorf("read logs: %w", err)
	}
	if !nomadLogs(alloc.Job, node) {
		return r.engineLogs(ctx, alloc, sessionID, node, w)
	}
	if err := r.streamLog(ctx, alloc, node, "stdout", w); err != nil {
		return err
	}
	var stderr bytes.Buffer
	if err := r.streamLog(ctx, alloc, node, "stderr", &stderr); err != nil {
		return err
	}
	if stderr.Len() > 0 {
		if _, err := io.WriteString(w, "--- stderr ---\n"); err != nil {
			return fmt.Errorf("read logs of %s: %w", node, err)
		}
		if _, err := stderr.WriteTo(w); err != nil {
			return fmt.Errorf("read logs of %s: %w", node, err)
		}
	}
	return nil
}

// nomadLogs reports whether Nomad collects the logs of the job's node
// task: it does unless the task turns collection off.
func nomadLogs(job *api.Job, node string) bool {
	t := findNodeTask(job, node)
	return t == nil || t.LogConfig == nil || t.LogConfig.Disabled == nil || !*t.LogConfig.Disabled
}

// engineLogs streams the node's logs from `labnet logs` on its client,
// run in the lab's allocation alloc. The agent says on stderr how many
// bytes it wrote and then holds on until its input closes, which happens
// once that many are here: the exec stream cannot end before they are.
func (r *Runtime) engineLogs(ctx context.Context, alloc *api.Allocation, sessionID, node string, w io.Writer) error {
	bin := agentBinary(alloc.Job)
	if bin == "" {
		return fmt.Errorf("read logs of %s: job %s: %w", node, alloc.JobID, ErrNoAgent)
	}
	if err := agentRunning(sessionID, alloc); err != nil {
		return fmt.Errorf("read logs of %s: %w", node, err)
	}
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	end := newOutputEnd(VerbLogs, logsTrailer)
	sink := &stopWriter{w: io.MultiWriter(w, end.counter()), stop: cancel}
	code, err := r.agentExecIn(ectx, alloc, bin, sessionID, VerbLogs, node, inputUntil(ectx, end.done), sink, end)
	if werr := sink.failed(); werr != nil {
		return fmt.Errorf("read logs of %s: %w", node, werr)
	}
	if err != nil {
		return fmt.Errorf("read logs of %s: %w", node, err)
	}
	msg := lastLine(end.tail.buf.String())
	switch code {
	case 0:
	case ExitMissing:
		return fmt.Errorf("read logs of %s: %s: %w", node, msg, lab.ErrNotFound)
	default:
		return fmt.Errorf("read logs of %s: labnet logs exited %d: %s", node, code, msg)
	}
	return end.complete()
}

// inputUntil is the input of an agent verb that holds on until its input
// closes (capture, logs): it ends once done is closed, or ctx ends.
func inputUntil(ctx context.Context, done <-chan struct{}) io.Reader {
	r, w := io.Pipe()
	go func() {
		select {
		case <-done:
		case <-ctx.Done():
		}
		w.Close()
	}()
	return r
}

// outputEnd is the stderr of an agent verb that announces the length of
// its stdout on a line starting with trailer; done closes once that many
// bytes of stdout have been counted.
type outputEnd struct {
	verb    string
	trailer string
	tail    tailWriter
	done    chan struct{}

	mu    sync.Mutex
	line  []byte // the stderr line being written
	want  int64  // -1 until the trailer is read
	got   int64
	ended bool
}

func newOutputEnd(verb, trailer string) *outputEnd {
	return &outputEnd{verb: verb, trailer: trailer, tail: tailWriter{max: 4 << 10}, done: make(chan struct{}), want: -1}
}

// Write takes the verb's stderr.
func (e *outputEnd) Write(b []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, _ = e.tail.Write(b)
	for _, c := range b {
		if c != '\n' {
			if len(e.line) < 256 {
				e.line = append(e.line, c)
			}
			continue
		}
		if n, ok := strings.CutPrefix(string(e.line), e.trailer); ok && e.want < 0 {
			if v, err := strconv.ParseInt(n, 10, 64); err == nil && v >= 0 {
				e.want = v
			}
		}
		e.line = e.line[:0]
	}
	e.check()
	return len(b), nil
}

// counter counts the verb's stdout.
func (e *outputEnd) counter() io.Writer {
	return writerFunc(func(b []byte) (int, error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.got += int64(len(b))
		e.check()
		return len(b), nil
	})
}

func (e *outputEnd) check() {
	if !e.ended && e.want >= 0 && e.got >= e.want {
		e.ended = true
		close(e.done)
	}
}

// complete reports an error unless the announced output came whole.
func (e *outputEnd) complete() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.want < 0:
		return fmt.Errorf("labnet %s did not say how much it wrote", e.verb)
	case e.got != e.want:
		return fmt.Errorf("labnet %s wrote %d bytes, %d came through", e.verb, e.want, e.got)
	}
	return nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (r *Runtime) streamLog(ctx context.Context, alloc *api.Allocation, node, kind string, w io.Writer) error {
	cancel := make(chan struct{})
	defer close(cancel)
	frames, errc := r.client.AllocFS().Logs(alloc, false, node, kind, api.OriginStart, 0, cancel, r.query(ctx))
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return nil
			}
			if _, err := w.Write(f.Data); err != nil {
				return fmt.Errorf("read %s of %s: %w", kind, node, err)
			}
		case err := <-errc:
			if isNotFound(err) || (err != nil && strings.Contains(err.Error(), "not found")) {
				return nil // the task never wrote to this stream
			}
			return fmt.Errorf("read %s of %s: %w", kind, node, err)
		case <-ctx.Done():
			return fmt.Errorf("read %s of %s: %w", kind, node, ctx.Err())
		}
	}
}

// ErrExportCut: an export stream ended before its archive did.
var ErrExportCut = errors.New("the export stream ended before the archive did")

// tarTail watches the end of a tar stream: a whole archive is a multiple
// of 512-byte blocks and ends with two blocks of zeros (tar pads its last
// record with more).
type tarTail struct {
	n    int64
	last [1024]byte // the stream's last 1024 bytes, as a ring
}

func (t *tarTail) Write(b []byte) (int, error) {
	for _, c := range b {
		t.last[t.n%int64(len(t.last))] = c
		t.n++
	}
	return len(b), nil
}

// complete reports ErrExportCut unless the stream ends like a tar archive.
func (t *tarTail) complete() error {
	if t.n < int64(len(t.last)) || t.n%512 != 0 {
		return fmt.Errorf("%w (%d bytes)", ErrExportCut, t.n)
	}
	for _, c := range t.last {
		if c != 0 {
			return fmt.Errorf("%w (%d bytes, no end-of-archive blocks)", ErrExportCut, t.n)
		}
	}
	return nil
}

// tarCheck reads a tar stream as it passes, header by header, and tells
// whether it was whole: every member as long as its header says, then the
// end-of-archive blocks.
type tarCheck struct {
	pw   *io.PipeWriter
	tail tarTail
	done chan struct{} // closed when the reader has finished; err is set
	// ended is closed once the end-of-archive blocks have been read.
	ended chan struct{}
	err   error
	bad   bool
}

func newTarCheck() *tarCheck {
	pr, pw := io.Pipe()
	c := &tarCheck{pw: pw, done: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(c.done)
		tr := tar.NewReader(pr)
		for {
			_, err := tr.Next()
			if err == io.EOF {
				close(c.ended)
				break
			}
			if err == nil {
				_, err = io.Copy(io.Discard, tr)
			}
			if err != nil {
				pr.CloseWithError(err)
				c.err = err
				return
			}
		}
		_, c.err = io.Copy(io.Discard, pr) // tar's padding after the end
	}()
	return c
}

// Write never fails: the check must not stop the export it watches.
func (c *tarCheck) Write(b []byte) (int, error) {
	c.tail.Write(b)
	if !c.bad {
		if _, err := c.pw.Write(b); err != nil {
			c.bad = true
		}
	}
	return len(b), nil
}

// complete ends the stream and reports ErrExportCut unless it held a
// whole archive.
func (c *tarCheck) complete() error {
	c.pw.Close()
	<-c.done
	if c.err != nil {
		return fmt.Errorf("%w: %v", ErrExportCut, c.err)
	}
	return c.tail.complete()
}

// abort releases the reader of an export that ended otherwise; after
// complete it does nothing.
func (c *tarCheck) abort() {
	c.pw.CloseWithError(ErrExportCut)
	<-c.done
}
