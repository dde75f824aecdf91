package nomad

import (
	"context"

	"github.com/examlab/examlab/lab"
)

// Capture snapshots the lab's nodes one after another as full exports
// (ExportFS through alloc exec), whatever mode is asked for; the lab is
// not frozen.
func (r *Runtime) Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) ([]lab.NodeCapture, error) {
	return lab.CaptureExports(ctx, sessionID, nodes, mode, "the Nomad runtime captures whole filesystems", r.ExportFS, save)
}
