package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// SnapshotMode says what a node's snapshot holds.
type SnapshotMode string

// Snapshot modes (EXAMLAB_SNAPSHOT).
const (
	// SnapshotChanges is only what differs from the node's image, in the
	// changeset package's format: added and modified entries, whiteouts
	// for deleted paths, opaque markers for replaced directories.
	SnapshotChanges SnapshotMode = "changes"
	// SnapshotFull is the node's whole filesystem, as `docker export`
	// writes it.
	SnapshotFull SnapshotMode = "full"
)

// ParseSnapshotMode accepts "changes" and "full"; "" means changes.
func ParseSnapshotMode(s string) (SnapshotMode, error) {
	switch SnapshotMode(s) {
	case "", SnapshotChanges:
		return SnapshotChanges, nil
	case SnapshotFull:
		return SnapshotFull, nil
	}
	return "", fmt.Errorf("snapshot mode %q: want changes or full", s)
}

// SaveFunc stores one node's snapshot. A runtime's Capture calls it once
// per node it captures, with write, which streams the node's snapshot as a
// tar into the writer it is given and returns once the stream ended. SaveFunc
// decides where the bytes go (an atomic file), calls write exactly once,
// and keeps what it wrote only if both write and its own commit succeed.
// An error it returns aborts the capture.
type SaveFunc func(node string, write func(w io.Writer) error) error

// NodeCapture is what a runtime reports of one node's snapshot.
type NodeCapture struct {
	Node string `json:"node"`
	// Missing: the node had no container to capture; save was not called
	// for it and the other fields are empty.
	Missing bool `json:"missing,omitempty"`
	// Mode is the mode the snapshot was taken in. It is full when full was
	// asked for, or when the node's storage cannot tell its changes; then
	// Fallback says why.
	Mode     SnapshotMode `json:"mode,omitempty"`
	Fallback string       `json:"fallback,omitempty"`
	// Image is the node's image id and ImageDigest its repository digest,
	// when the image has one (locally built images have none): what a
	// change set applies to.
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	// Added, Modified and Deleted count the change set's paths: new
	// paths, paths the image had with other content or metadata (a
	// directory whose entries changed counts as modified), and whiteouts.
	// Zero in full mode.
	Added    int `json:"added"`
	Modified int `json:"modified"`
	Deleted  int `json:"deleted"`
	// Bytes is the size of the tar stream written.
	Bytes int64 `json:"bytes"`
	// Skipped counts paths a tar cannot hold (sockets, pipes), left out;
	// SkippedPaths names the first of them, each quoted as a Go string so
	// that newlines and bytes that are not UTF-8 show.
	Skipped      int      `json:"skipped,omitempty"`
	SkippedPaths []string `json:"skipped_paths,omitempty"`
}

// CaptureExports captures nodes in full mode through export (a runtime's
// ExportFS), one after another and without freezing anything: the Capture
// of a runtime that can do no better. fallback, when set, is recorded as
// the reason a changes capture was not made. A node export reports
// ErrNotFound for is Missing.
func CaptureExports(ctx context.Context, sessionID string, nodes []string, mode SnapshotMode, fallback string,
	export func(ctx context.Context, sessionID, node string, w io.Writer) error, save SaveFunc) ([]NodeCapture, error) {
	out := make([]NodeCapture, 0, len(nodes))
	for _, node := range nodes {
		c := NodeCapture{Node: node, Mode: SnapshotFull}
		if mode != SnapshotFull {
			c.Fallback = fallback
		}
		err := save(node, func(w io.Writer) error {
			cw := &CountingWriter{W: w}
			err := export(ctx, sessionID, node, cw)
			c.Bytes = cw.N
			return err
		})
		if errors.Is(err, ErrNotFound) {
			out = append(out, NodeCapture{Node: node, Missing: true})
			continue
		}
		if err != nil {
			return out, fmt.Errorf("capture %s: %w", node, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// CountingWriter passes writes on to W and counts the bytes written in N.
type CountingWriter struct {
	W io.Writer
	N int64
}

func (c *CountingWriter) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.N += int64(n)
	return n, err
}
