package nomad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	sink := &stopWriter{w: w, stop: cancel}
	var stderr bytes.Buffer
	errw := &limitWriter{w: &stderr, n: 8 << 10}
	code, err := r.client.Allocations().Exec(ectx, alloc, node, false, exportCmd,
		strings.NewReader(""), sink, errw, nil, r.query(ectx))
	if werr := sink.failed(); werr != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, werr)
	}
	if err != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, err)
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

// limitWriter keeps the first n bytes written and discards the rest.
type limitWriter struct {
	w io.Writer
	n int
}

// Logs writes the node's stdout, then its stderr under a "--- stderr ---"
// line, read with the alloc fs logs API. Nomad keeps the two streams in
// separate files, so unlike the one-host runtime's logs they are not
// interleaved by time.
func (r *Runtime) Logs(ctx context.Context, sessionID, node string, w io.Writer) error {
	alloc, _, err := r.nodeAlloc(ctx, sessionID, node)
	if err != nil {
		return fmt.Errorf("read logs: %w", err)
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
