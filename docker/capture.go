package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/examlab/examlab/changeset"
	"github.com/examlab/examlab/lab"
)

// ExportFS writes the node's filesystem to w as a tar stream. It works on
// stopped nodes too, which is how labs are archived after submit.
func (r *Runtime) ExportFS(ctx context.Context, sessionID, node string, w io.Writer) error {
	c, err := r.node(ctx, sessionID, node)
	if err != nil {
		return fmt.Errorf("export filesystem: %w", err)
	}
	return r.export(ctx, node, c.ID, w)
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

// captureSuffix ends the name of the container a node's changes are read
// through: exam-{id8}-{node}.capture. The dot keeps it apart from every
// node's name, as the switch's exam-{id8}.net is.
const captureSuffix = ".capture"

// upperMount is where a capture container sees the node's upper directory.
const upperMount = "/upper"

// thawTimeout bounds unpausing a lab after its capture, which runs even
// when the capture's own context has ended.
const thawTimeout = 30 * time.Second

// maxSkippedPaths bounds the paths a NodeCapture names among those it
// left out.
const maxSkippedPaths = 50

// Capture snapshots the nodes of a lab at one moment: it pauses every
// running node first (the switch of a segmented lab is left alone: it
// holds no candidate's files), captures each node in turn and unpauses
// the lab before it returns, on failure too. Grading and terminals need a
// running lab, so the pause lasts only as long as the capture.
//
// In changes mode a node's snapshot is its container's overlay upper
// directory, which holds exactly what the node changed, converted to a
// change set (changeset.FromOverlay). The directory is read through the
// engine, never from this host's filesystem (the worker may run in a
// container of its own): a short-lived capture container, created from
// the node's image and never started, mounts it read-only, and the
// engine's archive API streams it. A node whose storage driver has no
// upper directory is captured in full, and says why.
func (r *Runtime) Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) (_ []lab.NodeCapture, err error) {
	if !lab.ValidSessionID(sessionID) {
		return nil, fmt.Errorf("capture lab: invalid session id %q", sessionID)
	}
	conts := make(map[string]container, len(nodes))
	for _, n := range nodes {
		c, err := r.node(ctx, sessionID, n)
		if errors.Is(err, lab.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("capture lab: %w", err)
		}
		conts[n] = c
	}
	frozen, err := r.freeze(ctx, conts)
	defer func() {
		if terr := r.thaw(ctx, frozen); terr != nil {
			err = errors.Join(err, terr)
		}
	}()
	if err != nil {
		return nil, err
	}
	out := make([]lab.NodeCapture, 0, len(nodes))
	for _, n := range nodes {
		c, ok := conts[n]
		if !ok {
			out = append(out, lab.NodeCapture{Node: n, Missing: true})
			continue
		}
		nc, err := r.captureNode(ctx, n, c, mode, save)
		if err != nil {
			return out, fmt.Errorf("capture %s: %w", n, err)
		}
		out = append(out, nc)
	}
	return out, nil
}

// freeze pauses every running node of conts and returns the ids of those
// it paused, or found paused (a capture that died before its thaw).
func (r *Runtime) freeze(ctx context.Context, conts map[string]container) ([]string, error) {
	var frozen []string
	for node, c := range conts {
		if !c.State.Running {
			continue
		}
		frozen = append(frozen, c.ID)
		if c.State.Paused {
			continue
		}
		err := r.client.do(ctx, http.MethodPost, "/containers/"+c.ID+"/pause", nil, nil, nil)
		if err != nil && !isConflict(err) {
			return frozen, fmt.Errorf("pause %s: %w", node, err)
		}
	}
	return frozen, nil
}

// thaw unpauses ids. A container that is not paused, or gone, is fine.
func (r *Runtime) thaw(ctx context.Context, ids []string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thawTimeout)
	defer cancel()
	var errs []error
	for _, id := range ids {
		err := r.client.do(ctx, http.MethodPost, "/containers/"+id+"/unpause", nil, nil, nil)
		if err != nil && !isConflict(err) && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("unpause %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// captureNode saves one node's snapshot in mode, or in full when its
// storage cannot tell its changes.
func (r *Runtime) captureNode(ctx context.Context, node string, c container, mode lab.SnapshotMode, save lab.SaveFunc) (lab.NodeCapture, error) {
	nc := lab.NodeCapture{Node: node, Mode: mode, Image: c.Image}
	digest, err := r.imageDigest(ctx, c.Image)
	if err != nil {
		return nc, err
	}
	nc.ImageDigest = digest
	upper := c.GraphDriver.Data["UpperDir"]
	if mode != lab.SnapshotChanges || upper == "" {
		if mode == lab.SnapshotChanges {
			nc.Fallback = fmt.Sprintf("the storage driver %q shows no upper directory", c.GraphDriver.Name)
		}
		nc.Mode = lab.SnapshotFull
		err := save(node, func(w io.Writer) error {
			cw := &countWriter{w: w}
			err := r.export(ctx, node, c.ID, cw)
			nc.Bytes = cw.n
			return err
		})
		return nc, err
	}
	// The mount points of the node's volumes (the grader's tools) are the
	// runtime's, not the candidate's.
	omit := func(p string) bool {
		for _, m := range c.Mounts {
			d := strings.TrimPrefix(m.Destination, "/")
			if p == d || strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}
	changed, err := r.changes(ctx, c.ID, omit, &nc)
	if err != nil {
		return nc, err
	}
	capID, err := r.createCapture(ctx, c, upper)
	if err != nil {
		return nc, err
	}
	defer func() {
		// Gone even when the capture failed or its context ended; Destroy
		// sweeps up one a crash left behind.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thawTimeout)
		defer cancel()
		_ = r.client.removeContainer(rctx, capID)
	}()
	err = save(node, func(w io.Writer) error {
		resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+capID+"/archive", url.Values{"path": {upperMount + "/."}}, nil)
		if err != nil {
			return fmt.Errorf("read changes of %s: %w", node, err)
		}
		defer resp.Body.Close()
		cw := &countWriter{w: w}
		_, err = changeset.FromOverlay(cw, resp.Body, changeset.OverlayOptions{
			Seen: func(p string) { delete(changed, jsonPath(p)) },
			Omit: omit,
		})
		nc.Bytes = cw.n
		if err != nil {
			return fmt.Errorf("convert changes of %s: %w", node, err)
		}
		return nil
	})
	if err != nil {
		return nc, err
	}
	// What the engine lists as changed and the tar did not hold is what
	// a tar cannot hold: sockets.
	if len(changed) > 0 {
		skipped := make([]string, 0, len(changed))
		for p := range changed {
			skipped = append(skipped, p)
		}
		sort.Strings(skipped)
		nc.Skipped = len(skipped)
		for _, p := range skipped[:min(len(skipped), maxSkippedPaths)] {
			nc.SkippedPaths = append(nc.SkippedPaths, strconv.Quote(p))
		}
	}
	return nc, nil
}

// export streams the container's whole filesystem into w.
func (r *Runtime) export(ctx context.Context, node, id string, w io.Writer) error {
	resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+id+"/export", nil, nil)
	if err != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, err)
	}
	return nil
}

// Kinds of the engine's container changes.
const (
	changeModified = 0
	changeAdded    = 1
	changeDeleted  = 2
)

// changes counts the container's changes into nc and returns the added and
// modified paths (relative, as jsonPath writes them), leaving out those
// omit reports. The list is decoded one change at a time: it holds paths,
// never contents.
func (r *Runtime) changes(ctx context.Context, id string, omit func(string) bool, nc *lab.NodeCapture) (map[string]bool, error) {
	resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+id+"/changes", nil, nil)
	if err != nil {
		return nil, fmt.Errorf("list changes of %s: %w", nc.Node, err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	changed := map[string]bool{}
	// The engine answers null when nothing changed.
	if t, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("list changes of %s: %w", nc.Node, err)
	} else if t == nil {
		return changed, nil
	}
	for dec.More() {
		var ch struct {
			Path string `json:"Path"`
			Kind int    `json:"Kind"`
		}
		if err := dec.Decode(&ch); err != nil {
			return nil, fmt.Errorf("list changes of %s: %w", nc.Node, err)
		}
		p := strings.TrimPrefix(ch.Path, "/")
		if omit(p) {
			continue
		}
		switch ch.Kind {
		case changeModified:
			nc.Modified++
		case changeAdded:
			nc.Added++
		case changeDeleted:
			nc.Deleted++
			continue
		}
		changed[p] = true
	}
	return changed, nil
}

// jsonPath is p as the engine's JSON gives it: every byte that is not part
// of a UTF-8 sequence replaced by U+FFFD.
func jsonPath(p string) string {
	if utf8.ValidString(p) {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); {
		r, size := utf8.DecodeRuneInString(p[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(p[i : i+size])
		}
		i += size
	}
	return b.String()
}

// createCapture creates (and never starts) the container that mounts the
// node's upper directory read-only at upperMount, removing one a crashed
// capture left behind. It carries the node's labels and LabelPart, so
// Destroy and the reaper remove it with the lab.
func (r *Runtime) createCapture(ctx context.Context, c container, upper string) (string, error) {
	name := strings.TrimPrefix(c.Name, "/") + captureSuffix
	labels := make(map[string]string, len(c.Config.Labels)+1)
	for k, v := range c.Config.Labels {
		labels[k] = v
	}
	delete(labels, labelConfig)
	labels[lab.LabelPart] = lab.PartCapture
	cc := containerCreate{
		Image:           c.Image,
		Labels:          labels,
		Entrypoint:      []string{"true"},
		NetworkDisabled: true,
		HostConfig: hostConfig{
			NetworkMode:   networkNone,
			Binds:         []string{upper + ":" + upperMount + ":ro"},
			CapDrop:       []string{"ALL"},
			SecurityOpt:   []string{"no-new-privileges"},
			RestartPolicy: restartPolicy{Name: "no"},
			LogConfig:     logConfig{Type: "none"},
		},
	}
	for attempt := 0; ; attempt++ {
		id, err := r.client.createContainer(ctx, name, cc)
		if err == nil {
			return id, nil
		}
		if !isConflict(err) || attempt > 0 {
			return "", fmt.Errorf("create capture container %s: %w", name, err)
		}
		old, ierr := r.client.inspectContainer(ctx, name)
		if ierr != nil {
			return "", fmt.Errorf("create capture container %s: %w", name, ierr)
		}
		if old.Config.Labels[lab.LabelPart] != lab.PartCapture || old.Config.Labels[lab.LabelSession] != c.Config.Labels[lab.LabelSession] {
			return "", fmt.Errorf("create capture container %s: the name is taken by another container", name)
		}
		if err := r.client.removeContainer(ctx, old.ID); err != nil {
			return "", fmt.Errorf("create capture container %s: %w", name, err)
		}
	}
}

// imageDigest is the image's first repository digest; "" for an image
// built here, which has none.
func (r *Runtime) imageDigest(ctx context.Context, id string) (string, error) {
	var img struct {
		RepoDigests []string `json:"RepoDigests"`
	}
	if err := r.client.do(ctx, http.MethodGet, "/images/"+url.PathEscape(id)+"/json", nil, nil, &img); err != nil {
		return "", fmt.Errorf("inspect image %s: %w", id, err)
	}
	if len(img.RepoDigests) == 0 {
		return "", nil
	}
	return img.RepoDigests[0], nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
