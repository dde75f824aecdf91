// Package lab holds what every lab runtime speaks: node states, exec
// processes and the errors runtimes return, so that workers, the relay and
// the API can drive Docker and Nomad labs the same way.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Errors runtimes return; callers match them with errors.Is.
var (
	// ErrNotFound: the lab, or the node within it, does not exist.
	ErrNotFound = errors.New("lab or node not found")
	// ErrNotRunning: the node exists but is not running.
	ErrNotRunning = errors.New("node not running")
)

// State is one node's runtime state.
type State string

// Node states, in the order a healthy node passes through them.
const (
	StatePending  State = "pending"  // declared, nothing created yet
	StateCreating State = "creating" // being created or placed
	StateRunning  State = "running"
	StateExited   State = "exited"  // stopped or dead
	StateFailed   State = "failed"  // could not be created or keeps failing
	StateMissing  State = "missing" // expected but gone
)

// NodeStatus is what a runtime reports of one node.
type NodeStatus struct {
	Name      string    `json:"name"`
	Container string    `json:"container"`
	State     State     `json:"state"`
	Detail    string    `json:"detail,omitempty"`
	IP        string    `json:"ip,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// AllocID and ClientNode are set by the Nomad runtime.
	AllocID    string `json:"alloc_id,omitempty"`
	ClientNode string `json:"client_node,omitempty"`
	// Events are recent runtime events worth showing (image missing,
	// OOM kill, placement failure), newest last.
	Events []string `json:"events,omitempty"`
}

// AllRunning reports whether every node in nodes is running.
func AllRunning(nodes []NodeStatus) bool {
	if len(nodes) == 0 {
		return false
	}
	for _, n := range nodes {
		if n.State != StateRunning {
			return false
		}
	}
	return true
}

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
