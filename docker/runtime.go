package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// Defaults for zero Options fields.
const (
	defaultSubnetPool   = "10.213.0.0/16"
	defaultSubnetPrefix = 26
)

// provisionParallel bounds how many containers one provision creates and
// starts at once; beyond a few the engine serialises the work anyway.
const provisionParallel = 4

// Options configure a Runtime. Zero values mean the documented defaults.
type Options struct {
	// Host is the engine address: unix:///path/to/socket or tcp://host:port.
	// Empty means $DOCKER_HOST when set, else unix:///var/run/docker.sock.
	Host string
	// SubnetPool is the IPv4 range lab networks are carved from. It must not
	// overlap the engine's own default address pools. Empty means
	// 10.213.0.0/16.
	SubnetPool string
	// SubnetPrefix is the prefix length of each lab's subnet, between the
	// pool's and 29. Zero means 26: 61 usable addresses per lab and 1024
	// labs in the default pool, well past the ~31 networks the engine's
	// default pools allow.
	SubnetPrefix int
	// Instance, when set, is stamped on every container and network this
	// runtime creates (label examlab.instance), and Labs reports only labs
	// that carry it. Empty means no stamp, and Labs sees every managed lab.
	Instance string
}

// Runtime provisions and drives exam labs on one Docker engine. It is safe
// for concurrent use.
type Runtime struct {
	client *client
	pool   netip.Prefix
	prefix int
	// subnetMu serialises subnet allocation within this process.
	subnetMu sync.Mutex
	instance string
}

// New returns a Runtime for the engine opts name. It does not contact the
// engine; call Ping for that.
func New(opts Options) (*Runtime, error) {
	host := opts.Host
	if host == "" {
		// The engine's own convention, honoured the way its CLI does.
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = defaultHost
	}
	c, err := newClient(host)
	if err != nil {
		return nil, fmt.Errorf("new docker runtime: %w", err)
	}
	poolStr := opts.SubnetPool
	if poolStr == "" {
		poolStr = defaultSubnetPool
	}
	pool, err := netip.ParsePrefix(poolStr)
	if err != nil || !pool.Addr().Is4() {
		return nil, fmt.Errorf("new docker runtime: subnet pool %q is not an IPv4 prefix", poolStr)
	}
	prefix := opts.SubnetPrefix
	if prefix == 0 {
		prefix = defaultSubnetPrefix
	}
	if prefix < pool.Bits() || prefix > 29 {
		return nil, fmt.Errorf("new docker runtime: subnet prefix /%d must be between /%d and /29", prefix, pool.Bits())
	}
	return &Runtime{client: c, pool: pool.Masked(), prefix: prefix, instance: opts.Instance}, nil
}

// Ping reports whether the engine answers.
func (r *Runtime) Ping(ctx context.Context) error {
	if err := r.client.do(ctx, http.MethodGet, "/_ping", nil, nil, nil); err != nil {
		return fmt.Errorf("ping docker engine: %w", err)
	}
	return nil
}

func checkSpec(spec jobspecs.Lab) error {
	if !jobspecs.ValidSessionID(spec.SessionID) {
		return fmt.Errorf("invalid session id %q", spec.SessionID)
	}
	if len(spec.Nodes) == 0 {
		return fmt.Errorf("lab of session %s has no nodes", spec.SessionID)
	}
	return nil
}

// sessionFilter selects what examlab manages for one session.
func sessionFilter(sessionID string) url.Values {
	return filters("label", jobspecs.LabelManaged+"=true", "label", jobspecs.LabelSession+"="+sessionID)
}

// Provision brings the session's lab to its spec and returns once every
// node is running. It converges from any partial state: a provision killed
// halfway, one racing a duplicate of itself, or nodes that were stopped or
// created with another configuration.
func (r *Runtime) Provision(ctx context.Context, spec jobspecs.Lab) error {
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("provision lab: %w", err)
	}
	spec = r.stamp(spec)
	netw, err := r.ensureNetwork(ctx, spec.SessionID, r.networkLabels(spec))
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
	return nil
}

// removeStrayNodes removes the session's containers for nodes the spec no
// longer has.
func (r *Runtime) removeStrayNodes(ctx context.Context, spec jobspecs.Lab) error {
	list, err := r.client.listContainers(ctx, sessionFilter(spec.SessionID))
	if err != nil {
		return err
	}
	for _, c := range list {
		if _, ok := spec.Node(c.Labels[jobspecs.LabelNode]); ok {
			continue
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
func (r *Runtime) ensureContainer(ctx context.Context, sessionID string, netw network, n jobspecs.Node) error {
	name := jobspecs.ContainerName(sessionID, n.Name)
	want := containerSpec(netw.ID, n)
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
		if s := c.Config.Labels[jobspecs.LabelSession]; s != sessionID {
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
func (r *Runtime) waitRunning(ctx context.Context, sessionID string, nodes []jobspecs.Node) error {
	pending := make([]jobspecs.Node, len(nodes))
	copy(pending, nodes)
	delay := 50 * time.Millisecond
	for {
		var still []jobspecs.Node
		for _, n := range pending {
			c, err := r.client.inspectContainer(ctx, jobspecs.ContainerName(sessionID, n.Name))
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

// Status reports each node of the spec, in spec order. A node with no
// container is pending before the lab's network exists and missing after.
func (r *Runtime) Status(ctx context.Context, spec jobspecs.Lab) ([]lab.NodeStatus, error) {
	if err := checkSpec(spec); err != nil {
		return nil, fmt.Errorf("lab status: %w", err)
	}
	nets, err := r.client.networksNamed(ctx, jobspecs.NetworkName(spec.SessionID))
	if err != nil {
		return nil, fmt.Errorf("lab status %s: %w", spec.SessionID, err)
	}
	absent := lab.StatePending
	if len(nets) > 0 {
		absent = lab.StateMissing
	}
	out := make([]lab.NodeStatus, 0, len(spec.Nodes))
	for _, n := range spec.Nodes {
		name := jobspecs.ContainerName(spec.SessionID, n.Name)
		st := lab.NodeStatus{Name: n.Name, Container: name}
		c, err := r.client.inspectContainer(ctx, name)
		switch {
		case isNotFound(err):
			st.State = absent
		case err != nil:
			return nil, fmt.Errorf("lab status %s: node %s: %w", spec.SessionID, n.Name, err)
		case c.Config.Labels[jobspecs.LabelSession] != spec.SessionID:
			st.State = lab.StateMissing
			st.Detail = fmt.Sprintf("name taken by session %q", c.Config.Labels[jobspecs.LabelSession])
		default:
			fillStatus(&st, c, jobspecs.NetworkName(spec.SessionID))
		}
		out = append(out, st)
	}
	return out, nil
}

func fillStatus(st *lab.NodeStatus, c container, netName string) {
	s := c.State
	switch s.Status {
	case "running":
		st.State = lab.StateRunning
	case "created":
		st.State = lab.StateCreating
	case "restarting":
		st.State = lab.StateFailed
		st.Detail = "restarting"
	case "dead":
		st.State = lab.StateFailed
		st.Detail = "dead"
	case "removing":
		st.State = lab.StateMissing
		st.Detail = "being removed"
	default: // exited, paused
		st.State = lab.StateExited
		st.Detail = fmt.Sprintf("%s, exit code %d", s.Status, s.ExitCode)
	}
	if t, err := time.Parse(time.RFC3339Nano, s.StartedAt); err == nil && !t.IsZero() && t.Year() > 1 {
		st.StartedAt = t
	}
	if ep, ok := c.NetworkSettings.Networks[netName]; ok {
		st.IP = ep.IPAddress
	}
	if s.OOMKilled {
		st.Events = append(st.Events, "killed for lack of memory")
	}
	if s.Error != "" {
		st.Events = append(st.Events, s.Error)
	}
}

// node finds a session's node container, refusing one that carries the
// name but belongs to another session.
func (r *Runtime) node(ctx context.Context, sessionID, node string) (container, error) {
	name := jobspecs.ContainerName(sessionID, node)
	c, err := r.client.inspectContainer(ctx, name)
	if isNotFound(err) {
		return container{}, fmt.Errorf("node %s of session %s: %w", node, sessionID, lab.ErrNotFound)
	}
	if err != nil {
		return container{}, fmt.Errorf("inspect node %s of session %s: %w", node, sessionID, err)
	}
	if c.Config.Labels[jobspecs.LabelSession] != sessionID || c.Config.Labels[jobspecs.LabelManaged] != "true" {
		return container{}, fmt.Errorf("node %s of session %s: %w", node, sessionID, lab.ErrNotFound)
	}
	return c, nil
}

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

// Destroy removes every container and network of the session. Destroying a
// lab that is already gone succeeds.
func (r *Runtime) Destroy(ctx context.Context, sessionID string) error {
	// An empty or malformed id must never widen the label filter below.
	if !jobspecs.ValidSessionID(sessionID) {
		return fmt.Errorf("destroy lab: invalid session id %q", sessionID)
	}
	// A provision racing the destroy can add a container after the first
	// sweep; sweep until one finds nothing.
	for pass := 0; pass < 5; pass++ {
		found, err := r.sweep(ctx, sessionID)
		if err != nil {
			return fmt.Errorf("destroy lab %s: %w", sessionID, err)
		}
		if !found {
			return nil
		}
	}
	return fmt.Errorf("destroy lab %s: resources keep reappearing", sessionID)
}

// sweep removes the session's containers, then its networks, and reports
// whether there was anything to remove.
func (r *Runtime) sweep(ctx context.Context, sessionID string) (bool, error) {
	list, err := r.client.listContainers(ctx, sessionFilter(sessionID))
	if err != nil {
		return false, err
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, c := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.client.removeContainer(ctx, c.ID); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return true, err
	}
	nets, err := r.client.listNetworks(ctx, sessionFilter(sessionID))
	if err != nil {
		return true, err
	}
	for _, n := range nets {
		if err := r.client.removeNetwork(ctx, n.ID); err != nil {
			return true, err
		}
	}
	return len(list) > 0 || len(nets) > 0, nil
}

// ResetNode replaces one node with a fresh container from its spec,
// discarding whatever the candidate changed in it.
func (r *Runtime) ResetNode(ctx context.Context, spec jobspecs.Lab, node string) error {
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("reset node: %w", err)
	}
	spec = r.stamp(spec)
	n, ok := spec.Node(node)
	if !ok {
		return fmt.Errorf("reset node %s of session %s: %w", node, spec.SessionID, lab.ErrNotFound)
	}
	netw, err := r.ensureNetwork(ctx, spec.SessionID, r.networkLabels(spec))
	if err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	c, err := r.client.inspectContainer(ctx, jobspecs.ContainerName(spec.SessionID, node))
	switch {
	case isNotFound(err):
	case err != nil:
		return fmt.Errorf("reset node %s: %w", node, err)
	case c.Config.Labels[jobspecs.LabelSession] != spec.SessionID:
		return fmt.Errorf("reset node %s: container %s belongs to another session", node, c.Name)
	default:
		if err := r.client.removeContainer(ctx, c.ID); err != nil {
			return fmt.Errorf("reset node %s: %w", node, err)
		}
	}
	if err := r.ensureContainer(ctx, spec.SessionID, netw, n); err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	if err := r.waitRunning(ctx, spec.SessionID, []jobspecs.Node{n}); err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	return nil
}

// Labs lists the sessions that have any examlab container or network on
// this engine, sorted; the reaper compares it with the sessions it knows.
func (r *Runtime) Labs(ctx context.Context) ([]string, error) {
	managed := filters("label", jobspecs.LabelManaged+"=true")
	if r.instance != "" {
		managed = filters("label", jobspecs.LabelManaged+"=true", "label", jobspecs.LabelInstance+"="+r.instance)
	}
	conts, err := r.client.listContainers(ctx, managed)
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	nets, err := r.client.listNetworks(ctx, managed)
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	seen := map[string]bool{}
	for _, c := range conts {
		seen[c.Labels[jobspecs.LabelSession]] = true
	}
	for _, n := range nets {
		seen[n.Labels[jobspecs.LabelSession]] = true
	}
	delete(seen, "")
	out := make([]string, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	sort.Strings(out)
	return out, nil
}

// stamp returns spec with this runtime's instance label on every node.
func (r *Runtime) stamp(spec jobspecs.Lab) jobspecs.Lab {
	if r.instance == "" {
		return spec
	}
	nodes := make([]jobspecs.Node, len(spec.Nodes))
	for i, n := range spec.Nodes {
		labels := make(map[string]string, len(n.Labels)+1)
		for k, v := range n.Labels {
			labels[k] = v
		}
		labels[jobspecs.LabelInstance] = r.instance
		n.Labels = labels
		nodes[i] = n
	}
	spec.Nodes = nodes
	return spec
}

// networkLabels are networkLabels(spec) plus this runtime's instance.
func (r *Runtime) networkLabels(spec jobspecs.Lab) map[string]string {
	l := networkLabels(spec)
	if r.instance != "" {
		l[jobspecs.LabelInstance] = r.instance
	}
	return l
}
