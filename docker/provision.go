package docker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/examlab/examlab/lab"
)

func checkSpec(spec lab.Spec) error {
	if !lab.ValidSessionID(spec.SessionID) {
		return fmt.Errorf("invalid session id %q", spec.SessionID)
	}
	if len(spec.Nodes) == 0 {
		return fmt.Errorf("lab of session %s has no nodes", spec.SessionID)
	}
	return nil
}

// sessionFilter selects what examlab manages for one session.
func sessionFilter(sessionID string) url.Values {
	return filters("label", lab.LabelManaged+"=true", "label", lab.LabelSession+"="+sessionID)
}

// Provision brings the session's lab to its spec and returns once every
// node is running. It converges from any partial state: a provision killed
// halfway, one racing a duplicate of itself, or nodes that were stopped or
// created with another configuration.
func (r *Runtime) Provision(ctx context.Context, spec lab.Spec) error {
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("provision lab: %w", err)
	}
	spec = r.stamp(spec)
	netw, err := r.labNetwork(ctx, spec)
	if err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	if err := r.removeStrayNodes(ctx, spec); err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, provisionParallel)
	)
	if spec.Segmented() {
		// The switch comes up beside the nodes; wiring waits for both.
		wg.Go(func() {
			if _, err := r.ensureSwitch(ctx, spec.SessionID, r.networkLabels(spec)); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	for _, n := range spec.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := r.ensureContainer(ctx, spec.SessionID, netw, n); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	if err := r.waitRunning(ctx, spec.SessionID, spec.Nodes); err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	if err := r.prepare(ctx, spec, spec.Nodes); err != nil {
		return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
	}
	return nil
}

// labNetwork is where the lab's nodes are plugged in: the session's
// network, or in a segmented lab no network at all (the switch wires them).
func (r *Runtime) labNetwork(ctx context.Context, spec lab.Spec) (network, error) {
	if spec.Segmented() {
		return network{ID: networkNone, Name: networkNone}, nil
	}
	return r.ensureNetwork(ctx, spec.SessionID, r.networkLabels(spec))
}

// prepare wires and prepares the given running nodes of the lab (see
// PrepareLab). A node whose setup failed is removed, so that the next
// provision starts it afresh rather than running a setup twice in it.
func (r *Runtime) prepare(ctx context.Context, spec lab.Spec, nodes []lab.Node) error {
	if !spec.Segmented() {
		any := false
		for _, n := range nodes {
			any = any || n.Prepared()
		}
		if !any {
			return nil
		}
	}
	refs := make(map[string]string, len(nodes))
	for _, n := range nodes {
		refs[n.Name] = lab.ContainerName(spec.SessionID, n.Name)
	}
	err := r.PrepareLab(ctx, spec, refs, r.networkLabels(spec))
	if err == nil {
		return nil
	}
	for _, name := range failedSetups(err) {
		if rmErr := r.client.removeContainer(context.WithoutCancel(ctx), lab.ContainerName(spec.SessionID, name)); rmErr != nil {
			return errors.Join(err, rmErr)
		}
	}
	return err
}

// removeStrayNodes removes the session's containers for nodes the spec no
// longer has.
func (r *Runtime) removeStrayNodes(ctx context.Context, spec lab.Spec) error {
	list, err := r.client.listContainers(ctx, sessionFilter(spec.SessionID))
	if err != nil {
		return err
	}
	for _, c := range list {
		if _, ok := spec.Node(c.Labels[lab.LabelNode]); ok {
			continue
		}
		if c.Labels[lab.LabelPart] == lab.PartSwitch {
			if spec.Segmented() {
				continue
			}
			// The lab was segmented and no longer is.
		}
		if err := r.client.removeContainer(ctx, c.ID); err != nil {
			return err
		}
	}
	return nil
}

// ensureContainer makes sure the node's container exists with the wanted
// configuration and has been started. Name uniqueness in the engine is what
// keeps racing provisions from making two: the loser of a create sees a
// conflict and adopts the winner's container.
func (r *Runtime) ensureContainer(ctx context.Context, sessionID string, netw network, n lab.Node) error {
	name := lab.ContainerName(sessionID, n.Name)
	tools, err := r.toolsVolume(ctx)
	if err != nil {
		return fmt.Errorf("ensure node %s: %w", n.Name, err)
	}
	want := containerSpec(netw.ID, n, tools)
	var (
		last     error
		replaced int
		backoff  = 50 * time.Millisecond
	)
	for attempt := 0; attempt < 40 && replaced < 3; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, backoff); err != nil {
				return fmt.Errorf("ensure node %s: %w (last: %v)", n.Name, err, last)
			}
			backoff = min(2*backoff, time.Second)
		}
		c, err := r.client.inspectContainer(ctx, name)
		if isNotFound(err) {
			id, err := r.client.createContainer(ctx, name, want)
			if isConflict(err) {
				// The name is taken by a container we cannot see yet: the
				// engine reserves names before a create finishes, so a
				// racing or abandoned create shows up here for a while.
				last = err
				continue
			}
			if err != nil {
				if isNotFound(err) {
					return fmt.Errorf("create node %s: image %s: %w: %v", n.Name, n.Image, lab.ErrNotFound, err)
				}
				return fmt.Errorf("create node %s: %w", n.Name, err)
			}
			if err := r.client.startContainer(ctx, id); err != nil {
				if isNotFound(err) {
					last = err // removed under us; look again
					continue
				}
				return fmt.Errorf("start node %s: %w", n.Name, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("inspect node %s: %w", n.Name, err)
		}
		if s := c.Config.Labels[lab.LabelSession]; s != sessionID {
			return fmt.Errorf("container %s belongs to session %q, not %q", name, s, sessionID)
		}
		if !reusable(c, want, netw) {
			replaced++
			last = fmt.Errorf("container %s has a stale configuration", name)
			if err := r.client.removeContainer(ctx, c.ID); err != nil {
				return fmt.Errorf("replace node %s: %w", n.Name, err)
			}
			continue
		}
		switch c.State.Status {
		case "running", "restarting":
			return nil
		case "created", "exited":
			err := r.client.startContainer(ctx, c.ID)
			if err == nil {
				return nil
			}
			// It cannot be started as it is; replace it.
			replaced++
			last = fmt.Errorf("start node %s: %w", n.Name, err)
			if err := r.client.removeContainer(ctx, c.ID); err != nil {
				return fmt.Errorf("replace node %s: %w", n.Name, err)
			}
		default: // paused, dead, removing
			replaced++
			last = fmt.Errorf("container %s is %s", name, c.State.Status)
			if err := r.client.removeContainer(ctx, c.ID); err != nil {
				return fmt.Errorf("replace node %s: %w", n.Name, err)
			}
		}
	}
	return fmt.Errorf("ensure node %s: gave up: %w", n.Name, last)
}

// reusable reports whether an existing container was made from the wanted
// configuration and sits on the session's current network.
func reusable(c container, want containerCreate, netw network) bool {
	if c.Config.Labels[labelConfig] != want.Labels[labelConfig] {
		return false
	}
	if netw.Name == networkNone {
		return c.HostConfig.NetworkMode == networkNone
	}
	ep, ok := c.NetworkSettings.Networks[netw.Name]
	if !ok {
		return false
	}
	// A container not yet started may not report its network id.
	return ep.NetworkID == "" || ep.NetworkID == netw.ID
}

// waitRunning polls until every node's container reports running. A node
// that stopped instead fails the wait: with restart policy "no" it will not
// come back by itself.
func (r *Runtime) waitRunning(ctx context.Context, sessionID string, nodes []lab.Node) error {
	pending := make([]lab.Node, len(nodes))
	copy(pending, nodes)
	delay := 50 * time.Millisecond
	for {
		var still []lab.Node
		for _, n := range pending {
			c, err := r.client.inspectContainer(ctx, lab.ContainerName(sessionID, n.Name))
			if err != nil {
				return fmt.Errorf("wait for node %s: %w", n.Name, err)
			}
			switch {
			case c.State.Running && !c.State.Restarting:
			case c.State.Status == "created" || c.State.Status == "restarting":
				still = append(still, n)
			default:
				return fmt.Errorf("wait for node %s: it is %s (exit code %d%s)", n.Name, c.State.Status, c.State.ExitCode, oomNote(c.State))
			}
		}
		if len(still) == 0 {
			return nil
		}
		pending = still
		if err := sleep(ctx, delay); err != nil {
			return fmt.Errorf("wait for node %s: %w", pending[0].Name, err)
		}
		delay = min(2*delay, time.Second)
	}
}

func oomNote(s containerState) string {
	if s.OOMKilled {
		return ", killed for lack of memory"
	}
	return ""
}

// ResetNode replaces one node with a fresh container from its spec,
// discarding whatever the candidate changed in it.
func (r *Runtime) ResetNode(ctx context.Context, spec lab.Spec, node string) error {
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("reset node: %w", err)
	}
	spec = r.stamp(spec)
	n, ok := spec.Node(node)
	if !ok {
		return fmt.Errorf("reset node %s of session %s: %w", node, spec.SessionID, lab.ErrNotFound)
	}
	netw, err := r.labNetwork(ctx, spec)
	if err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	c, err := r.client.inspectContainer(ctx, lab.ContainerName(spec.SessionID, node))
	switch {
	case isNotFound(err):
	case err != nil:
		return fmt.Errorf("reset node %s: %w", node, err)
	case c.Config.Labels[lab.LabelSession] != spec.SessionID:
		return fmt.Errorf("reset node %s: container %s belongs to another session", node, c.Name)
	default:
		if err := r.client.removeContainer(ctx, c.ID); err != nil {
			return fmt.Errorf("reset node %s: %w", node, err)
		}
	}
	if err := r.ensureContainer(ctx, spec.SessionID, netw, n); err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	if err := r.waitRunning(ctx, spec.SessionID, []lab.Node{n}); err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	if err := r.prepare(ctx, spec, []lab.Node{n}); err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	return nil
}
