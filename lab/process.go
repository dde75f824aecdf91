package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
)

// Size is a terminal size in character cells.
type Size struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecRequest says what to run in a node.
type ExecRequest struct {
	Cmd []string
	TTY bool
	// Size is the initial terminal size when TTY is set.
	Size Size
	Env  []string
}

// Process is a command running in a node. Reads return its output (stdout
// and stderr merged); writes feed its stdin.
type Process interface {
	io.Reader
	io.Writer
	// CloseWrite signals end of input.
	CloseWrite() error
	// Resize changes the TTY size; a no-op without a TTY.
	Resize(ctx context.Context, sz Size) error
	// Wait returns the exit code once the process has ended and its output
	// has been read to EOF.
	Wait(ctx context.Context) (int, error)
	// Close releases the connection; the process may keep running if it
	// ignores the hangup.
	Close() error
}

// Runner is the part of a runtime that starts processes in a lab node.
type Runner interface {
	Exec(ctx context.Context, sessionID, node string, req ExecRequest) (Process, error)
}

// Output runs cmd without a TTY in node and returns its combined output
// and exit code.
func Output(ctx context.Context, r Runner, sessionID, node string, cmd ...string) (string, int, error) {
	p, err := r.Exec(ctx, sessionID, node, ExecRequest{Cmd: cmd})
	if err != nil {
		return "", -1, err
	}
	defer p.Close()
	_ = p.CloseWrite()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, p); err != nil {
		return buf.String(), -1, fmt.Errorf("read output of %v in %s: %w", cmd, node, err)
	}
	code, err := p.Wait(ctx)
	return buf.String(), code, err
}
