package lab

import (
	"context"
	"io"
)

// Runtime runs labs: the Docker Engine on one host, or Nomad on a cluster.
// It is the one contract both implement, and lab/labtest holds the suite
// that proves an implementation keeps it. Every method takes the session's
// id (or its Spec) and finds the lab's resources by name and labels alone,
// so any process of the deployment can act on any lab.
type Runtime interface {
	// Provision brings the lab of spec up and returns once every node is
	// running. It is idempotent: run again after a crash or a timeout, it
	// reuses what exists, replaces what differs from spec and creates what
	// is missing, never duplicating a node.
	Provision(ctx context.Context, spec Spec) error
	// Status reports every node of spec, in spec's order, whether or not it
	// exists (a node never created is StatePending or StateMissing).
	Status(ctx context.Context, spec Spec) ([]NodeStatus, error)
	// Exec starts a process in a running node. It returns ErrNotFound for
	// an unknown lab or node and ErrNotRunning for a stopped one.
	Exec(ctx context.Context, sessionID, node string, req ExecRequest) (Process, error)
	// ExportFS writes the node's filesystem to w as a tar stream.
	ExportFS(ctx context.Context, sessionID, node string, w io.Writer) error
	// Capture snapshots nodes of the session's lab at one moment. It
	// freezes the lab where the runtime can (Docker pauses every node
	// first), then for each node in order calls save with a function that
	// streams the node's snapshot in mode (see SnapshotMode; a runtime
	// that cannot tell a node's changes falls back to full and says why in
	// NodeCapture.Fallback), and thaws the lab before it returns, on
	// failure too. A node with no container is reported Missing and not
	// saved. The first error, from the runtime or from save, ends the
	// capture and is returned; the captures made before it are returned
	// with it. It never holds a snapshot in memory.
	Capture(ctx context.Context, sessionID string, nodes []string, mode SnapshotMode, save SaveFunc) ([]NodeCapture, error)
	// Logs writes the node's output (its PID 1's stdout and stderr) to w.
	Logs(ctx context.Context, sessionID, node string, w io.Writer) error
	// Destroy removes everything of the lab. Destroying a lab that is gone,
	// or was never created, succeeds. When every node is gone but the
	// runtime refuses to remove another part (a network, a job), it
	// returns a *LeftoverError naming those parts; a later Destroy
	// retries them.
	Destroy(ctx context.Context, sessionID string) error
	// ResetNode replaces one node of a running lab with a fresh one from
	// its image; the rest of the lab keeps running.
	ResetNode(ctx context.Context, spec Spec, node string) error
	// Labs lists the session ids of every lab this deployment owns, live or
	// half-made, for the reaper.
	Labs(ctx context.Context) ([]string, error)
	// Ping checks that the runtime's service answers.
	Ping(ctx context.Context) error
}
