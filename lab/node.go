// Package lab is the contract between examlab and the runtimes that run
// labs: the spec of one session's lab (Spec, rendered from an exam's
// topology), the Runtime interface, node states, exec processes and the
// errors runtimes return, so that workers, the relay and the API drive
// Docker and Nomad labs the same way.
package lab

import (
	"errors"
	"time"
)

// Errors runtimes return; callers match them with errors.Is.
var (
	// ErrNotFound: the lab, or the node within it, does not exist.
	ErrNotFound = errors.New("lab or node not found")
	// ErrNotRunning: the node exists but is not running.
	ErrNotRunning = errors.New("node not running")
	// ErrNoCapacity: the runtime answered, and the lab cannot be placed
	// now (no client has the room it reserves). Provision returns it
	// wrapped with the scheduler's reason, before it creates anything, so
	// the start can wait for room instead of failing.
	ErrNoCapacity = errors.New("no room to place the lab")
	// ErrUnavailable: the runtime's service cannot be reached (refused,
	// timed out, no leader). Returned wrapped with the underlying error.
	ErrUnavailable = errors.New("the lab runtime is unavailable")
	// ErrLost: the lab, or a node of it, was running and is gone with its
	// host (a Nomad allocation lost, its client down): not a candidate's
	// doing, and not coming back by itself.
	ErrLost = errors.New("lab lost with its host")
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
	// StateLost: the host the node ran on is gone (a Nomad allocation
	// lost, its client down); the node will not come back by itself.
	StateLost State = "lost"
	// StateUnknown: the host the node runs on stopped reporting (a Nomad
	// client disconnected); the node may still run, or come back.
	StateUnknown State = "unknown"
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
