package docker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/examlab/examlab/lab"
)

// ExportFS writes the node's filesystem to w as a tar stream. It works on
// stopped nodes too, which is how labs are archived after submit.
func (r *Runtime) ExportFS(ctx context.Context, sessionID, node string, w io.Writer) error {
	c, err := r.node(ctx, sessionID, node)
	if err != nil {
		return fmt.Errorf("export filesystem: %w", err)
	}
	resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+c.ID+"/export", nil, nil)
	if err != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, err)
	}
	return nil
}

// Logs writes the node's stdout and stderr, each line prefixed with its
// timestamp, to w as plain text.
func (r *Runtime) Logs(ctx context.Context, sessionID, node string, w io.Writer) error {
	c, err := r.node(ctx, sessionID, node)
	if err != nil {
		return fmt.Errorf("read logs: %w", err)
	}
	q := url.Values{"stdout": {"1"}, "stderr": {"1"}, "timestamps": {"1"}}
	resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+c.ID+"/logs", q, nil)
	if err != nil {
		return fmt.Errorf("read logs of %s: %w", node, err)
	}
	defer resp.Body.Close()
	var src io.Reader = resp.Body
	if !c.Config.Tty {
		src = newDemuxReader(resp.Body)
	}
	if _, err := io.Copy(w, src); err != nil {
		return fmt.Errorf("read logs of %s: %w", node, err)
	}
	return nil
}

// Capture snapshots the lab's nodes.
func (r *Runtime) Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) ([]lab.NodeCapture, error) {
	return lab.CaptureExports(ctx, sessionID, nodes, mode, "not yet", r.ExportFS, save)
}
