package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/examlab/examlab/lab"
)

// Bridge options every lab network gets.
//
// Internal alone is not enough on Docker 20.10: the bridge still holds the
// subnet's gateway address, containers keep a default route to it, and
// whatever listens on 0.0.0.0 on the host (Redis, the API) answers there, on
// the host's own addresses too. Verified on this engine with an internal
// network and a listener on the host's 0.0.0.0: without inhibit_ipv4 `nc -z`
// to the gateway IP and to the host's primary IP both connect; with it the
// bridge has no IPv4 address, the host has no route back into the subnet,
// and both fail, as do 169.254.169.254 and other sessions' subnets, even from
// a node with NET_ADMIN that adds its own default route. Peers on the same
// network still reach each other (enable_icc) and resolve each other by name
// through the engine's embedded DNS, which lives in each container's own
// network namespace.
var labBridgeOptions = map[string]string{
	"com.docker.network.bridge.inhibit_ipv4": "true",
	"com.docker.network.bridge.enable_icc":   "true",
}

type ipamConfig struct {
	Subnet  string `json:"Subnet,omitempty"`
	Gateway string `json:"Gateway,omitempty"`
}

type ipam struct {
	Driver string       `json:"Driver,omitempty"`
	Config []ipamConfig `json:"Config"`
}

type networkCreate struct {
	Name           string            `json:"Name"`
	CheckDuplicate bool              `json:"CheckDuplicate"`
	Driver         string            `json:"Driver"`
	Internal       bool              `json:"Internal"`
	Attachable     bool              `json:"Attachable"`
	IPAM           ipam              `json:"IPAM"`
	Options        map[string]string `json:"Options"`
	Labels         map[string]string `json:"Labels"`
}

type network struct {
	ID         string                     `json:"Id"`
	Name       string                     `json:"Name"`
	Created    string                     `json:"Created"`
	Internal   bool                       `json:"Internal"`
	IPAM       ipam                       `json:"IPAM"`
	Options    map[string]string          `json:"Options"`
	Labels     map[string]string          `json:"Labels"`
	Containers map[string]json.RawMessage `json:"Containers"`
}

// filters encodes the engine's filters query parameter.
func filters(kv ...string) url.Values {
	f := map[string][]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		f[kv[i]] = append(f[kv[i]], kv[i+1])
	}
	b, _ := json.Marshal(f)
	return url.Values{"filters": {string(b)}}
}

func (c *client) listNetworks(ctx context.Context, q url.Values) ([]network, error) {
	var out []network
	if err := c.do(ctx, http.MethodGet, "/networks", q, nil, &out); err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	return out, nil
}

// networksNamed lists the networks called exactly name, oldest first. The
// engine's name filter matches substrings, and under a race it can hold two
// networks of one name, so callers must pick one deterministically.
func (c *client) networksNamed(ctx context.Context, name string) ([]network, error) {
	all, err := c.listNetworks(ctx, filters("name", name))
	if err != nil {
		return nil, err
	}
	var out []network
	for _, n := range all {
		if n.Name == name {
			out = append(out, n)
		}
	}
	created := func(n network) time.Time {
		t, _ := time.Parse(time.RFC3339Nano, n.Created)
		return t
	}
	sort.Slice(out, func(i, j int) bool {
		ti, tj := created(out[i]), created(out[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

func (c *client) removeNetwork(ctx context.Context, id string) error {
	err := c.do(ctx, http.MethodDelete, "/networks/"+id, nil, nil, nil)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("remove network %s: %w", id, err)
	}
	return nil
}

// usedSubnets lists every IPv4 subnet any network on the engine holds,
// ours or not: the engine refuses overlapping pools whoever owns them.
func (c *client) usedSubnets(ctx context.Context) ([]netip.Prefix, error) {
	all, err := c.listNetworks(ctx, nil)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, n := range all {
		for _, cfg := range n.IPAM.Config {
			if p, err := netip.ParsePrefix(cfg.Subnet); err == nil && p.Addr().Is4() {
				out = append(out, p.Masked())
			}
		}
	}
	return out, nil
}

// freeSubnet returns the first subnet of size bits within pool that
// overlaps none of used and none of skip.
func freeSubnet(pool netip.Prefix, bits int, used, skip []netip.Prefix) (netip.Prefix, bool) {
	n := 1 << (bits - pool.Bits())
	base := pool.Masked().Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	step := uint32(1) << (32 - bits)
next:
	for i := 0; i < n; i++ {
		a := start + uint32(i)*step
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), bits)
		for _, u := range used {
			if u.Overlaps(cand) {
				continue next
			}
		}
		for _, u := range skip {
			if u.Overlaps(cand) {
				continue next
			}
		}
		return cand, true
	}
	return netip.Prefix{}, false
}

// errPoolExhausted: every subnet of the configured pool is in use.
var errPoolExhausted = errors.New("subnet pool exhausted")

// isPoolOverlap reports whether the engine refused a network because its
// subnet overlaps one that appeared since we listed them.
func isPoolOverlap(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && strings.Contains(strings.ToLower(ae.Message), "overlap")
}

// ensureNetwork returns the session's network, creating it when missing.
// A retried provision reuses the network it made before; two provisions
// racing may both create one (the engine does not make names unique under
// a race: CheckDuplicate did not stop four racing creates on this engine),
// so the oldest of that name wins and the losers remove their own.
// Containers then join the winner by id, as the name is ambiguous until the
// losers are gone.
func (r *Runtime) ensureNetwork(ctx context.Context, sessionID string, labels map[string]string) (network, error) {
	name := lab.NetworkName(sessionID)
	existing, err := r.client.networksNamed(ctx, name)
	if err != nil {
		return network{}, err
	}
	if len(existing) > 0 {
		return r.ownNetwork(existing[0], sessionID)
	}

	created, err := r.createNetwork(ctx, name, labels)
	if err != nil {
		if !isConflict(err) {
			return network{}, err
		}
		// Someone else created it between our look and our create.
	}
	existing, err = r.client.networksNamed(ctx, name)
	if err != nil {
		return network{}, err
	}
	if len(existing) == 0 {
		return network{}, fmt.Errorf("create network %s: it vanished after creation", name)
	}
	winner := existing[0]
	if created != "" && created != winner.ID {
		if err := r.client.removeNetwork(ctx, created); err != nil {
			return network{}, err
		}
	}
	return r.ownNetwork(winner, sessionID)
}

func (r *Runtime) ownNetwork(n network, sessionID string) (network, error) {
	if s := n.Labels[lab.LabelSession]; s != sessionID {
		return network{}, fmt.Errorf("network %s belongs to session %q, not %q", n.Name, s, sessionID)
	}
	return n, nil
}

// createNetwork allocates a subnet from the pool and creates the network,
// moving on to the next free subnet whenever another writer took the one we
// chose. It returns the new network's id.
func (r *Runtime) createNetwork(ctx context.Context, name string, labels map[string]string) (string, error) {
	// One allocation at a time within this process; other processes on the
	// same engine are caught by the engine's overlap check below.
	r.subnetMu.Lock()
	defer r.subnetMu.Unlock()

	used, err := r.client.usedSubnets(ctx)
	if err != nil {
		return "", fmt.Errorf("create network %s: %w", name, err)
	}
	skip, err := r.held(ctx)
	if err != nil {
		return "", fmt.Errorf("create network %s: %w", name, err)
	}
	for attempt := 0; ; attempt++ {
		subnet, ok := freeSubnet(r.pool, r.prefix, used, skip)
		if !ok {
			return "", fmt.Errorf("create network %s: %w (%s in /%d blocks)", name, errPoolExhausted, r.pool, r.prefix)
		}
		body := networkCreate{
			Name:           name,
			CheckDuplicate: true,
			Driver:         "bridge",
			Internal:       true,
			IPAM:           ipam{Driver: "default", Config: []ipamConfig{{Subnet: subnet.String()}}},
			Options:        labBridgeOptions,
			Labels:         labels,
		}
		var out struct {
			ID string `json:"Id"`
		}
		err := r.client.do(ctx, http.MethodPost, "/networks/create", nil, body, &out)
		if err == nil {
			return out.ID, nil
		}
		if !isPoolOverlap(err) || attempt > 64 {
			return "", fmt.Errorf("create network %s: %w", name, err)
		}
		skip = append(skip, subnet)
		if attempt%8 == 7 {
			// Many misses: the picture is stale, look again.
			if used, err = r.client.usedSubnets(ctx); err != nil {
				return "", fmt.Errorf("create network %s: %w", name, err)
			}
		}
	}
}

// held returns the subnets Options.HeldSubnets names, parsed; entries
// that are not IPv4 prefixes are skipped.
func (r *Runtime) held(ctx context.Context) ([]netip.Prefix, error) {
	if r.heldSubnets == nil {
		return nil, nil
	}
	list, err := r.heldSubnets(ctx)
	if err != nil {
		return nil, fmt.Errorf("subnets still held: %w", err)
	}
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// networkLabels are the labels a session's network carries.
func networkLabels(spec lab.Spec) map[string]string {
	return map[string]string{
		lab.LabelManaged: "true",
		lab.LabelSession: spec.SessionID,
		lab.LabelExam:    spec.ExamID,
	}
}
