package docker

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	pathpkg "path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

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

// thawTimeout bounds unpausing a lab and removing its capture containers
// after its capture, which run even when the capture's context has ended.
const thawTimeout = 30 * time.Second

// maxSkippedPaths bounds the paths a NodeCapture names among those it
// left out.
const maxSkippedPaths = 50

// captureParallel bounds how many nodes are prepared (capture containers
// created, sockets looked for) at once.
const captureParallel = 4

// Capture snapshots the nodes of a lab at one moment: it pauses every
// running node (the switch of a segmented lab is left alone: it holds no
// candidate's files), captures each node in turn and unpauses the lab
// before it returns, on failure too. Grading and terminals need a running
// lab, so the pause lasts only as long as the capture; what can be done
// before it is.
//
// In changes mode a node's snapshot is its container's overlay upper
// directory, which holds exactly what the node changed, converted to a
// change set (changeset.FromOverlay). The directory is read through the
// engine, never from this host's filesystem (the worker may run in a
// container of its own): a short-lived capture container, created from
// the node's image and never started, mounts it read-only, and the
// engine's archive API streams it. Whether a changed path is added or
// modified is looked up in an index of the image's paths, read once per
// image through the same container and kept (imageIndex). Sockets, which
// no tar holds, are looked for after the thaw in the directories the
// change set holds (a new socket's directory is always among them), in
// the nodes that run, and reported. A node whose storage driver has no upper directory is
// captured in full, and says why.
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
	preps := make(map[string]*nodePrep, len(conts))
	for n := range conts {
		preps[n] = &nodePrep{}
	}
	defer func() {
		// Gone even when the capture failed or its context ended; Destroy
		// sweeps up one a crash left behind.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thawTimeout)
		defer cancel()
		for _, p := range preps {
			if p.capture != "" {
				_ = r.client.removeContainer(rctx, p.capture)
			}
		}
	}()
	if mode == lab.SnapshotChanges {
		if err := r.prepareCapture(ctx, conts, preps); err != nil {
			return nil, err
		}
	}
	// No exec may be starting in a node while it is paused (lab.ExecGate):
	// the gate waits for those under way and holds off new ones until
	// the nodes run again.
	gateThaw, err := r.gate.Freeze(ctx, sessionID)
	if err != nil {
		return nil, fmt.Errorf("capture lab: %w", err)
	}
	frozen, err := r.freeze(ctx, conts)
	defer func() {
		if terr := r.thaw(ctx, frozen); terr != nil {
			err = errors.Join(err, terr)
		}
		gateThaw()
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
		nc, err := r.captureNode(ctx, n, c, mode, preps[n], save)
		if err != nil {
			return out, fmt.Errorf("capture %s: %w", n, err)
		}
		out = append(out, nc)
	}
	err = r.thaw(ctx, frozen)
	frozen = nil
	if err != nil {
		return out, err
	}
	gateThaw()
	r.reportSockets(ctx, sessionID, conts, preps, out)
	return out, nil
}

// maxSocketDirs bounds the directories looked into for sockets.
const maxSocketDirs = 512

// reportSockets fills in the sockets each running node holds in the
// directories of its change set. It runs in the thawed lab (a paused node
// runs nothing); a node it cannot look into reports none.
func (r *Runtime) reportSockets(ctx context.Context, sessionID string, conts map[string]container, preps map[string]*nodePrep, out []lab.NodeCapture) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, captureParallel)
	for i := range out {
		nc := &out[i]
		p := preps[nc.Node]
		if nc.Missing || p == nil || len(p.dirs) == 0 || !conts[nc.Node].State.Running {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			sockets := r.sockets(ctx, sessionID, nc.Node, p.dirs)
			sort.Strings(sockets)
			nc.Skipped = len(sockets)
			for _, s := range sockets[:min(len(sockets), maxSkippedPaths)] {
				nc.SkippedPaths = append(nc.SkippedPaths, strconv.Quote(s))
			}
		}()
	}
	wg.Wait()
}

// nodePrep is what a changes capture readies for a node before the lab
// is paused.
type nodePrep struct {
	// capture is the capture container's id; "" when the node's storage
	// has no upper directory.
	capture string
	index   map[string]bool
	// dirs are the directories of the node's change set, "/" first.
	dirs []string
}

// prepareCapture creates each node's capture container and reads the
// index of each image the lab's nodes run.
func (r *Runtime) prepareCapture(ctx context.Context, conts map[string]container, preps map[string]*nodePrep) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, captureParallel)
	)
	for n, c := range conts {
		p := preps[n]
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			err := func() error {
				upper := c.GraphDriver.Data["UpperDir"]
				if upper == "" {
					return nil
				}
				id, err := r.createCapture(ctx, c, upper)
				mu.Lock()
				p.capture = id
				mu.Unlock()
				return err
			}()
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("prepare capture of %s: %w", n, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for n, c := range conts {
		p := preps[n]
		if p.capture == "" {
			continue
		}
		idx, err := r.imageIndex(ctx, c.Image, p.capture)
		if err != nil {
			return fmt.Errorf("prepare capture of %s: %w", n, err)
		}
		p.index = idx
	}
	return nil
}

// sockets lists the sockets directly in dirs of a running node, with the
// grader's busybox where the node has it (a candidate cannot replace it),
// else the node's find. An image cannot hold a socket: every one is the
// node's own doing. Errors are reported as none found: the list is a
// report, not part of the snapshot.
func (r *Runtime) sockets(ctx context.Context, sessionID, node string, dirs []string) []string {
	find := append([]string{"find"}, dirs...)
	find = append(find, "-maxdepth", "1", "-type", "s", "-print0")
	out, code, err := lab.Output(ctx, r, sessionID, node, append([]string{toolsTarget + "/busybox"}, find...)...)
	if err != nil || code == 126 || code == 127 {
		out, _, err = lab.Output(ctx, r, sessionID, node, find...)
	}
	if err != nil {
		return nil
	}
	var paths []string
	for _, p := range strings.Split(out, "\x00") {
		// Anything else is a message from find.
		if rel, ok := strings.CutPrefix(p, "/"); ok && rel != "" {
			paths = append(paths, rel)
		}
	}
	return paths
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
func (r *Runtime) captureNode(ctx context.Context, node string, c container, mode lab.SnapshotMode, p *nodePrep, save lab.SaveFunc) (lab.NodeCapture, error) {
	nc := lab.NodeCapture{Node: node, Mode: mode, Image: c.Image}
	digest, err := r.imageDigest(ctx, c.Image)
	if err != nil {
		return nc, err
	}
	nc.ImageDigest = digest
	if mode != lab.SnapshotChanges || p.capture == "" {
		if mode == lab.SnapshotChanges {
			nc.Fallback = fmt.Sprintf("the storage driver %q shows no upper directory", c.GraphDriver.Name)
		}
		nc.Mode = lab.SnapshotFull
		err := save(node, func(w io.Writer) error {
			cw := &lab.CountingWriter{W: w}
			err := r.export(ctx, node, c.ID, cw)
			nc.Bytes = cw.N
			return err
		})
		return nc, err
	}
	// The mount points of the node's volumes (the grader's tools) are the
	// runtime's, not the candidate's.
	omit := func(path string) bool {
		for _, m := range c.Mounts {
			d := strings.TrimPrefix(m.Destination, "/")
			if path == d || strings.HasPrefix(path, d+"/") {
				return true
			}
		}
		return false
	}
	err = save(node, func(w io.Writer) error {
		nc.Added, nc.Modified, nc.Deleted = 0, 0, 0
		p.dirs = []string{"/"}
		resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+p.capture+"/archive", url.Values{"path": {upperMount + "/."}}, nil)
		if err != nil {
			return fmt.Errorf("read changes of %s: %w", node, err)
		}
		defer resp.Body.Close()
		cw := &lab.CountingWriter{W: w}
		st, err := changeset.FromOverlay(cw, resp.Body, changeset.OverlayOptions{
			Omit: omit,
			Seen: func(path string, dir bool) {
				if dir && len(p.dirs) < maxSocketDirs {
					p.dirs = append(p.dirs, "/"+path)
				}
				switch {
				case strings.HasPrefix(pathpkg.Base(path), changeset.WhiteoutPrefix):
				case p.index[path]:
					nc.Modified++
				default:
					nc.Added++
				}
			},
		})
		nc.Bytes = cw.N
		nc.Deleted = st.Whiteouts
		if err != nil {
			return fmt.Errorf("convert changes of %s: %w", node, err)
		}
		return nil
	})
	return nc, err
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

// imageIndex returns the set of paths image holds (relative, without a
// trailing slash), read once through capture, a container created from
// image, and kept for the life of the runtime: every lab of an exam runs
// the same few images. It holds names only, a few hundred kilobytes for
// the lab image. The container's bind mount of a node's upper directory
// is left out.
func (r *Runtime) imageIndex(ctx context.Context, image, capture string) (map[string]bool, error) {
	r.indexMu.Lock()
	defer r.indexMu.Unlock()
	if idx, ok := r.indexes[image]; ok {
		return idx, nil
	}
	resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+capture+"/archive", url.Values{"path": {"/"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("index image %s: %w", image, err)
	}
	defer resp.Body.Close()
	idx := map[string]bool{}
	tr := tar.NewReader(resp.Body)
	mount := strings.TrimPrefix(upperMount, "/")
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("index image %s: %w", image, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/"), "/")
		if name == "" || name == mount || strings.HasPrefix(name, mount+"/") {
			continue
		}
		idx[name] = true
	}
	if r.indexes == nil {
		r.indexes = map[string]map[string]bool{}
	}
	r.indexes[image] = idx
	return idx, nil
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
