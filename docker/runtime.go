package docker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"sync"

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

var _ lab.Runtime = (*Runtime)(nil)

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
	// SwitchImage runs segmented labs' switches; empty means
	// DefaultSwitchImage.
	SwitchImage string
	// GraderBusybox is a static busybox on this host that every node
	// gets read-only as the grader's tools; empty means
	// DefaultGraderBusybox, "none" gives labs no tools.
	GraderBusybox string
	// Holder is a static build of the platform's binary that joins the
	// grader's tools so that nodes run it as the terminal holder (see
	// package holder); empty means none, and the relay then keeps shells
	// itself. A binary that is not static is left out with a warning.
	Holder string
	// Instance, when set, is stamped on every container and network this
	// runtime creates (label examlab.instance), and Labs reports only labs
	// that carry it. Empty means no stamp, and Labs sees every managed lab.
	Instance string
	// HeldSubnets lists subnets that lab networks must not be given even
	// when the engine's network list no longer shows them: those of
	// networks the engine refused to remove (the leftovers on record),
	// which it may still hold. Nil means none.
	HeldSubnets func(ctx context.Context) ([]string, error)
	// Gate keeps exec starts into a lab out of its capture's pause, across
	// every process that reaches the engine (the platform's is the store).
	// Nil means a gate of this process alone (lab.LocalGate).
	Gate lab.ExecGate
}

// Runtime provisions and drives exam labs on one Docker engine. It is safe
// for concurrent use.
type Runtime struct {
	client *client
	pool   netip.Prefix
	prefix int
	// subnetMu serialises subnet allocation within this process.
	subnetMu    sync.Mutex
	instance    string
	switchImage string
	heldSubnets func(ctx context.Context) ([]string, error)
	gate        lab.ExecGate

	graderBusybox string
	holder        string
	toolsMu       sync.Mutex
	toolsReady    string
	toolsWarned   bool
	holderWarned  bool

	// indexes are the paths of each image a capture has read, by image id.
	indexMu sync.Mutex
	indexes map[string]map[string]bool
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
	sw := opts.SwitchImage
	if sw == "" {
		sw = DefaultSwitchImage
	}
	bb := opts.GraderBusybox
	switch bb {
	case "":
		bb = DefaultGraderBusybox
	case "none":
		bb = ""
	}
	gate := opts.Gate
	if gate == nil {
		gate = lab.NewLocalGate(0)
	}
	return &Runtime{client: c, pool: pool.Masked(), prefix: prefix, instance: opts.Instance, switchImage: sw, graderBusybox: bb, holder: opts.Holder,
		heldSubnets: opts.HeldSubnets, gate: gate}, nil
}

// Ping reports whether the engine answers. Whatever keeps it from
// answering is lab.ErrUnavailable.
func (r *Runtime) Ping(ctx context.Context) error {
	if err := r.client.do(ctx, http.MethodGet, "/_ping", nil, nil, nil); err != nil {
		if !errors.Is(err, lab.ErrUnavailable) {
			err = lab.Unavailable(err)
		}
		return fmt.Errorf("ping docker engine: %w", err)
	}
	return nil
}

// Labs lists the sessions that have any examlab container or network on
// this engine, sorted; the reaper compares it with the sessions it knows.
func (r *Runtime) Labs(ctx context.Context) ([]string, error) {
	managed := filters("label", lab.LabelManaged+"=true")
	if r.instance != "" {
		managed = filters("label", lab.LabelManaged+"=true", "label", lab.LabelInstance+"="+r.instance)
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
		seen[c.Labels[lab.LabelSession]] = true
	}
	for _, n := range nets {
		seen[n.Labels[lab.LabelSession]] = true
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
func (r *Runtime) stamp(spec lab.Spec) lab.Spec {
	if r.instance == "" {
		return spec
	}
	nodes := make([]lab.Node, len(spec.Nodes))
	for i, n := range spec.Nodes {
		labels := make(map[string]string, len(n.Labels)+1)
		for k, v := range n.Labels {
			labels[k] = v
		}
		labels[lab.LabelInstance] = r.instance
		n.Labels = labels
		nodes[i] = n
	}
	spec.Nodes = nodes
	return spec
}

// networkLabels are networkLabels(spec) plus this runtime's instance.
func (r *Runtime) networkLabels(spec lab.Spec) map[string]string {
	l := networkLabels(spec)
	if r.instance != "" {
		l[lab.LabelInstance] = r.instance
	}
	return l
}
