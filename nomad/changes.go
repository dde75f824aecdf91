package nomad

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/examlab/examlab/lab"
)

// thawTimeout bounds the thaw that ends a capture, which runs even when
// the capture's context has ended.
const thawTimeout = time.Minute

// Capture snapshots the lab's nodes at one moment. In changes mode it
// freezes the lab on its client (see Freeze), has the lab's labnet-watch
// task read each node's writable layer there and stream it back as a
// change set (see LabAgent.Capture), and thaws the lab before it returns,
// whatever happened. A node whose client keeps its layers where the agent
// cannot read them is exported in full once the lab is thawed, and so is
// every node of a lab whose job has no labnet-watch task (a flat lab
// registered by an examlab older than render version 4), unfrozen; each
// such capture says why in Fallback. In full mode every node is exported
// whole with GNU tar inside the node (see ExportFS), unfrozen: a frozen
// node runs no command.
func (r *Runtime) Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) (out []lab.NodeCapture, err error) {
	if mode == lab.SnapshotFull {
		return lab.CaptureExports(ctx, sessionID, nodes, mode, "", r.ExportFS, save)
	}
	// No exec may be starting in a node while it is frozen (lab.ExecGate):
	// the gate waits for those under way and holds off new ones until the
	// lab is thawed. Its thaw is deferred first, so it runs after any
	// thaw of the nodes below (and is called sooner where it can be).
	gateThaw, err := r.gate.Freeze(ctx, sessionID)
	if err != nil {
		return nil, fmt.Errorf("capture lab %s: %w", sessionID, err)
	}
	defer gateThaw()
	ferr := r.Freeze(ctx, sessionID)
	switch {
	case errors.Is(ferr, ErrNoAgent), errors.Is(ferr, lab.ErrNotRunning):
		// Nothing is frozen: execs may go on during the exports.
		gateThaw()
		return lab.CaptureExports(ctx, sessionID, nodes, mode, "not frozen, whole filesystems: "+ferr.Error(), r.ExportFS, save)
	case errors.Is(ferr, lab.ErrNotFound):
		for _, n := range nodes {
			out = append(out, lab.NodeCapture{Node: n, Missing: true})
		}
		return out, nil
	case ferr != nil:
		// A freeze that failed halfway may have paused some nodes.
		return nil, errors.Join(fmt.Errorf("capture lab %s: %w", sessionID, ferr), r.thaw(ctx, sessionID))
	}
	thawed := false
	defer func() {
		if !thawed {
			err = errors.Join(err, r.thaw(ctx, sessionID))
		}
	}()
	out = make([]lab.NodeCapture, len(nodes))
	var whole []int // nodes to export in full once thawed
	for i, node := range nodes {
		nc, err := r.captureChanges(ctx, sessionID, node, save)
		switch {
		case errors.Is(err, lab.ErrNotFound):
			out[i] = lab.NodeCapture{Node: node, Missing: true}
		case errors.Is(err, ErrNoUpper):
			out[i] = lab.NodeCapture{Node: node, Fallback: err.Error()}
			whole = append(whole, i)
		case err != nil:
			return compact(out[:i]), fmt.Errorf("capture %s: %w", node, err)
		default:
			out[i] = nc
		}
	}
	thawed = true
	err = r.thaw(ctx, sessionID)
	gateThaw()
	if err != nil {
		return out, err
	}
	for _, i := range whole {
		got, err := lab.CaptureExports(ctx, sessionID, []string{nodes[i]}, mode, out[i].Fallback, r.ExportFS, save)
		if err != nil {
			return compact(out[:i]), err
		}
		out[i] = got[0]
	}
	return out, nil
}

// compact drops the placeholders of nodes to be exported later.
func compact(cs []lab.NodeCapture) []lab.NodeCapture {
	out := cs[:0:0]
	for _, c := range cs {
		if c.Missing || c.Mode != "" {
			out = append(out, c)
		}
	}
	return out
}

// thaw thaws the lab even when ctx has ended: a capture that failed must
// not leave the candidate's lab frozen.
func (r *Runtime) thaw(ctx context.Context, sessionID string) error {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thawTimeout)
	defer cancel()
	return r.Thaw(tctx, sessionID)
}

// captureChanges streams one node's change set into save, read by
// `labnet capture` on the client.
func (r *Runtime) captureChanges(ctx context.Context, sessionID, node string, save lab.SaveFunc) (lab.NodeCapture, error) {
	var nc lab.NodeCapture
	err := save(node, func(w io.Writer) error {
		ectx, cancel := context.WithCancel(ctx)
		defer cancel()
		// The exec stream drops write errors, so a failing w must stop it.
		check := newTarCheck()
		defer check.abort()
		cw := &lab.CountingWriter{W: w}
		sink := &stopWriter{w: io.MultiWriter(cw, check), stop: cancel}
		// labnet capture holds on until its input closes, which happens
		// once the whole archive is here: the stream cannot end first.
		stderr := &tailWriter{max: 16 << 10}
		code, err := r.agentExec(ectx, sessionID, VerbCapture, node, inputUntil(ectx, check.ended), sink, stderr)
		if werr := sink.failed(); werr != nil {
			return werr
		}
		if err != nil {
			return err
		}
		msg := lastLine(stderr.buf.String())
		switch code {
		case 0:
		case ExitMissing:
			return fmt.Errorf("%s: %w", msg, lab.ErrNotFound)
		case ExitNoUpper:
			return fmt.Errorf("%w: %s", ErrNoUpper, msg)
		default:
			return fmt.Errorf("labnet capture exited %d: %s", code, msg)
		}
		if err := check.complete(); err != nil {
			return err
		}
		got, err := captureReport(stderr.buf.String())
		if err != nil {
			return err
		}
		nc = got
		nc.Node, nc.Mode, nc.Bytes = node, lab.SnapshotChanges, cw.N
		return nil
	})
	return nc, err
}

// captureReport finds the counts `labnet capture` wrote to stderr.
func captureReport(stderr string) (lab.NodeCapture, error) {
	var nc lab.NodeCapture
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if b, ok := strings.CutPrefix(sc.Text(), captureTrailer); ok {
			if err := json.Unmarshal([]byte(b), &nc); err != nil {
				return nc, fmt.Errorf("read what labnet capture counted: %w", err)
			}
			return nc, nil
		}
	}
	return nc, errors.New("labnet capture did not say what it captured")
}
