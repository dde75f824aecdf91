package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/examlab/examlab/lab"
)

// DefaultSwitchImage runs a segmented lab's switch: it needs sh, sleep, ip
// (iproute2) and nsenter (util-linux), which the lab image has.
const DefaultSwitchImage = "examlab/node:bookworm"

// switchCaps are all the switch holds. NET_ADMIN makes bridges and veth
// pairs and moves one end into a node; SYS_ADMIN and SYS_PTRACE let nsenter
// join a node's network namespace to configure its interfaces, which the
// node itself may lack the capability to do. The switch needs the host's
// PID namespace to find the nodes' namespaces. It runs nothing but sleep,
// is on no network, and only the runtime ever runs a command in it: no
// terminal, API or candidate reaches it.
var switchCaps = []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}

// outputTail bounds how much of a failed script's output an error quotes.
const outputTail = 1024

// switchSpec renders the switch container of a segmented lab.
func switchSpec(image string, labels map[string]string) containerCreate {
	l := make(map[string]string, len(labels)+1)
	for k, v := range labels {
		l[k] = v
	}
	l[lab.LabelPart] = lab.PartSwitch
	cc := containerCreate{
		Hostname:   "switch",
		Image:      image,
		Labels:     l,
		Entrypoint: []string{"sleep"},
		Cmd:        []string{"infinity"},
		HostConfig: hostConfig{
			NetworkMode:   networkNone,
			PidMode:       "host",
			Memory:        64 << 20,
			MemorySwap:    64 << 20,
			NanoCPUs:      250_000_000,
			PidsLimit:     64,
			CapDrop:       []string{"ALL"},
			CapAdd:        switchCaps,
			SecurityOpt:   []string{"no-new-privileges"},
			Sysctls:       lab.NoIPv6(),
			RestartPolicy: restartPolicy{Name: "no"},
			LogConfig:     logConfig{Type: "json-file", Config: map[string]string{"max-size": "1m", "max-file": "1"}},
		},
	}
	cc.Labels[labelConfig] = digest(cc)
	return cc
}

// ensureSwitch returns the session's running switch, creating or starting
// it as needed and replacing one made from another configuration.
func (r *Runtime) ensureSwitch(ctx context.Context, sessionID string, labels map[string]string) (container, error) {
	name := lab.SwitchName(sessionID)
	want := switchSpec(r.switchImage, labels)
	for attempt := 0; attempt < 20; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return container{}, err
			}
		}
		c, err := r.client.inspectContainer(ctx, name)
		switch {
		case isNotFound(err):
			_, err := r.client.createContainer(ctx, name, want)
			if isNotFound(err) {
				return container{}, fmt.Errorf("create the lab's switch: image %s: %w: %v", r.switchImage, lab.ErrNotFound, err)
			}
			if err != nil && !isConflict(err) {
				return container{}, fmt.Errorf("create the lab's switch: %w", err)
			}
			continue
		case err != nil:
			return container{}, fmt.Errorf("inspect the lab's switch: %w", err)
		case c.Config.Labels[lab.LabelSession] != sessionID || c.Config.Labels[lab.LabelPart] != lab.PartSwitch:
			return container{}, fmt.Errorf("container %s belongs to session %q, not %q", name, c.Config.Labels[lab.LabelSession], sessionID)
		case c.Config.Labels[labelConfig] != want.Labels[labelConfig]:
			if err := r.client.removeContainer(ctx, c.ID); err != nil {
				return container{}, fmt.Errorf("replace the lab's switch: %w", err)
			}
			continue
		case c.State.Running && !c.State.Restarting:
			return c, nil
		default:
			if err := r.client.startContainer(ctx, c.ID); err != nil && !isNotFound(err) {
				return container{}, fmt.Errorf("start the lab's switch: %w", err)
			}
		}
	}
	return container{}, fmt.Errorf("the lab's switch %s did not come up", name)
}

// StartSwitch brings up a segmented lab's switch (labelled with labels)
// ahead of its nodes, so that wiring each node as it comes up does not
// wait for it. PrepareLab makes it too when it is not there.
func (r *Runtime) StartSwitch(ctx context.Context, sessionID string, labels map[string]string) error {
	if !lab.ValidSessionID(sessionID) {
		return fmt.Errorf("start switch: invalid session id %q", sessionID)
	}
	_, err := r.ensureSwitch(ctx, sessionID, labels)
	return err
}

// RemoveSwitch removes a segmented lab's switch, which takes its segments
// with it. A switch that is gone is not an error; one that belongs to
// another session is never touched. A Nomad lab's poststop task runs it.
func (r *Runtime) RemoveSwitch(ctx context.Context, sessionID string) error {
	if !lab.ValidSessionID(sessionID) {
		return fmt.Errorf("remove switch: invalid session id %q", sessionID)
	}
	c, err := r.client.inspectContainer(ctx, lab.SwitchName(sessionID))
	switch {
	case isNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("remove switch of %s: %w", sessionID, err)
	case c.Config.Labels[lab.LabelSession] != sessionID || c.Config.Labels[lab.LabelPart] != lab.PartSwitch:
		return fmt.Errorf("remove switch of %s: container %s belongs to session %q", sessionID, c.Name, c.Config.Labels[lab.LabelSession])
	}
	return r.client.removeContainer(ctx, c.ID)
}

// PrepareLab makes the running nodes of spec ready for the candidate. In a
// segmented lab it first wires them: it brings up the lab's switch
// (labelled with switchLabels) and plugs every node into its segments with
// its addresses, routes and /etc/hosts. Then, once per node, it writes the
// node's files and runs its setup. nodes maps each node's name to its
// running container (a name or id); nodes it leaves out are skipped.
//
// It is idempotent: a node already wired keeps its network as the
// candidate has made it, and a node that holds lab.PreparedMarker is not
// prepared again. Errors name the node. A setup that fails or overruns its
// time limit fails the whole call.
func (r *Runtime) PrepareLab(ctx context.Context, spec lab.Spec, nodes map[string]string, switchLabels map[string]string) error {
	prepare, err := r.WireNodes(ctx, spec, nodes, switchLabels)
	if err != nil {
		return err
	}
	return prepare(ctx)
}

// WireNodes is PrepareLab in two steps: it wires the given running nodes
// of spec (in a segmented lab) and returns what prepares them, their
// /etc/hosts, files and setup. The wiring is one script in the switch;
// a caller that wires nodes as each comes up wires the next ones while
// the last are still being prepared.
func (r *Runtime) WireNodes(ctx context.Context, spec lab.Spec, nodes map[string]string, switchLabels map[string]string) (func(context.Context) error, error) {
	conts := make(map[string]container, len(nodes))
	for _, n := range spec.Nodes {
		ref, ok := nodes[n.Name]
		if !ok {
			continue
		}
		c, err := r.client.inspectContainer(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if !c.State.Running || c.State.Pid <= 0 {
			return nil, fmt.Errorf("node %s: %w (%s)", n.Name, lab.ErrNotRunning, c.State.Status)
		}
		conts[n.Name] = c
	}
	wired := map[string]bool{}
	if spec.Segmented() {
		sw, err := r.ensureSwitch(ctx, spec.SessionID, switchLabels)
		if err != nil {
			return nil, err
		}
		pids := make(map[string]int, len(conts))
		for name, c := range conts {
			pids[name] = c.State.Pid
		}
		var out bytes.Buffer
		code, err := r.execIn(ctx, "", sw, "the lab's switch", []string{"sh", "-c", lab.SwitchScript(spec, pids)}, nil, &out, &out)
		if err != nil {
			return nil, fmt.Errorf("wire the lab: %w", err)
		}
		if code != 0 {
			return nil, fmt.Errorf("wire the lab: the switch's script exited %d: %s", code, tail(out.String()))
		}
		for _, name := range lab.Wired(out.String()) {
			wired[name] = true
		}
	}
	return func(ctx context.Context) error {
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
			sem  = make(chan struct{}, provisionParallel)
		)
		for _, n := range spec.Nodes {
			c, ok := conts[n.Name]
			if !ok || (!wired[n.Name] && !n.Prepared()) {
				continue
			}
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				if err := r.prepareNode(ctx, spec, n, c, wired[n.Name]); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}, nil
}

// SetupError is a node's setup that failed or overran its time limit.
type SetupError struct {
	Node string
	Err  error
}

func (e *SetupError) Error() string { return "node " + e.Node + ": setup " + e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }

// failedSetups lists the nodes whose setup err reports failing.
func failedSetups(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		var se *SetupError
		if errors.As(err, &se) {
			out = append(out, se.Node)
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

// prepareMarker is what the probe below prints when a node holds
// lab.PreparedMarker.
const prepareMarker = "examlab:prepared"

// prepareNode finishes one node: its /etc/hosts when the switch has just
// wired it, then, unless it was prepared before, its files and its setup.
func (r *Runtime) prepareNode(ctx context.Context, spec lab.Spec, n lab.Node, c container, wired bool) error {
	script := ""
	if wired {
		script = lab.NodeScript(spec)
	}
	script += "\nif [ -e " + lab.PreparedMarker + " ]; then echo " + prepareMarker + "; fi\n"
	var out bytes.Buffer
	code, err := r.execIn(ctx, spec.SessionID, c, n.Name, []string{"sh", "-c", script}, nil, &out, &out)
	switch {
	case err != nil && strings.Contains(err.Error(), "executable file not found"):
		return fmt.Errorf("node %s: its image %s has no sh", n.Name, n.Image)
	case err != nil:
		return fmt.Errorf("node %s: %w", n.Name, err)
	case code == lab.NoIPExit:
		return fmt.Errorf("node %s: its image %s has no ip command (iproute2), which a node on a lab network needs", n.Name, n.Image)
	case code != 0:
		return fmt.Errorf("node %s: configure names: exit %d: %s", n.Name, code, tail(out.String()))
	}
	if !n.Prepared() || strings.Contains(out.String(), prepareMarker) {
		return nil
	}
	if len(n.Files) > 0 {
		if err := r.putFiles(ctx, c.ID, n.Files); err != nil {
			return fmt.Errorf("node %s: write files: %w", n.Name, err)
		}
	}
	timeout := n.SetupTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out.Reset()
	code, err = r.execIn(sctx, spec.SessionID, c, n.Name, []string{"sh", "-c", lab.SetupScript, "setup", n.Setup}, nil, &out, &out)
	switch {
	case sctx.Err() != nil && ctx.Err() == nil:
		return &SetupError{Node: n.Name, Err: fmt.Errorf("did not finish within %s", timeout)}
	case err != nil:
		return &SetupError{Node: n.Name, Err: err}
	case code != 0:
		return &SetupError{Node: n.Name, Err: fmt.Errorf("exited %d: %s", code, tail(out.String()))}
	}
	return nil
}

// putFiles writes files into a container through the engine's archive
// endpoint, creating their directories.
func (r *Runtime) putFiles(ctx context.Context, id string, files []lab.File) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	// Missing directories on the way are made by the engine, 0755; the
	// archive holds no directory entries, which would reset existing ones.
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: int64(f.Mode), Size: int64(len(f.Content)), ModTime: now}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write([]byte(f.Content)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	q := url.Values{"path": {"/"}, "noOverwriteDirNonDir": {"true"}}
	return r.client.do(ctx, http.MethodPut, "/containers/"+url.PathEscape(id)+"/archive", q, rawBody{r: &buf, contentType: "application/x-tar"}, nil)
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > outputTail {
		s = "…" + s[len(s)-outputTail:]
	}
	return s
}
