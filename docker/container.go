package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/examlab/examlab/lab"
)

// labelConfig carries a digest of the configuration a container was created
// with, so a rerun provision can tell a container it may keep from one it
// must replace.
const labelConfig = "examlab.config"

type restartPolicy struct {
	Name string `json:"Name"`
}

type logConfig struct {
	Type   string            `json:"Type"`
	Config map[string]string `json:"Config"`
}

type hostConfig struct {
	NetworkMode string   `json:"NetworkMode"`
	PidMode     string   `json:"PidMode,omitempty"`
	Mounts      []mount  `json:"Mounts,omitempty"`
	Binds       []string `json:"Binds,omitempty"`
	Memory      int64    `json:"Memory"`
	MemorySwap  int64    `json:"MemorySwap"`
	NanoCPUs    int64    `json:"NanoCpus"`
	// MemoryReservation and CPUShares weigh the node against its
	// neighbours when the host is short: what it reserves is what the
	// kernel tries to leave it.
	MemoryReservation int64             `json:"MemoryReservation,omitempty"`
	CPUShares         int64             `json:"CpuShares,omitempty"`
	PidsLimit         int64             `json:"PidsLimit"`
	Privileged        bool              `json:"Privileged"`
	CapDrop           []string          `json:"CapDrop"`
	CapAdd            []string          `json:"CapAdd"`
	SecurityOpt       []string          `json:"SecurityOpt"`
	Sysctls           map[string]string `json:"Sysctls,omitempty"`
	ReadonlyRootfs    bool              `json:"ReadonlyRootfs"`
	RestartPolicy     restartPolicy     `json:"RestartPolicy"`
	LogConfig         logConfig         `json:"LogConfig"`
	Init              bool              `json:"Init"`
}

type endpointConfig struct {
	Aliases []string `json:"Aliases,omitempty"`
}

type networkingConfig struct {
	EndpointsConfig map[string]endpointConfig `json:"EndpointsConfig"`
}

type containerCreate struct {
	Hostname         string            `json:"Hostname"`
	Image            string            `json:"Image"`
	Labels           map[string]string `json:"Labels"`
	Tty              bool              `json:"Tty"`
	OpenStdin        bool              `json:"OpenStdin"`
	Entrypoint       []string          `json:"Entrypoint,omitempty"`
	Cmd              []string          `json:"Cmd,omitempty"`
	NetworkDisabled  bool              `json:"NetworkDisabled,omitempty"`
	HostConfig       hostConfig        `json:"HostConfig"`
	NetworkingConfig networkingConfig  `json:"NetworkingConfig"`
}

// networkNone is the network mode of a segmented lab's containers: a
// namespace of their own with nothing but loopback until the switch wires
// them.
const networkNone = "none"

// containerSpec renders a node of a lab into the engine's create request,
// its digest label included; tools, when set, is the grader's tools volume
// the node mounts read-only. network is the lab network's id (Provision
// passes the id: a name can briefly match two networks) or its name.
func containerSpec(network string, n lab.Node, tools string) containerCreate {
	labels := make(map[string]string, len(n.Labels)+1)
	for k, v := range n.Labels {
		labels[k] = v
	}
	capAdd := make([]string, 0, len(n.CapAdd))
	for _, c := range n.CapAdd {
		capAdd = append(capAdd, "CAP_"+strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
	}
	hostname := n.Hostname
	if hostname == "" {
		hostname = n.Name
	}
	reservedCPUs, reservedMemory := n.Reserved()
	cc := containerCreate{
		Hostname: hostname,
		Image:    n.Image,
		Labels:   labels,
		HostConfig: hostConfig{
			NetworkMode: network,
			Memory:      int64(n.MemoryMB) << 20,
			// Equal to Memory: no swap on top.
			MemorySwap: int64(n.MemoryMB) << 20,
			NanoCPUs:   int64(n.CPUs * 1e9),
			PidsLimit:  int64(n.PidsLimit),
			// The reserve: memory the kernel reclaims from the node last
			// when the host runs short, and a CPU weight in proportion to
			// its reserved cpus (1024 is a whole cpu's, as Docker counts).
			MemoryReservation: int64(reservedMemory) << 20,
			CPUShares:         cpuShares(reservedCPUs),
			CapDrop:           []string{"ALL"},
			CapAdd:            capAdd,
			SecurityOpt:       []string{"no-new-privileges"},
			Sysctls:           n.Sysctls,
			// Labs are ephemeral: a node that dies stays dead until the
			// next provision decides what to do with it.
			RestartPolicy: restartPolicy{Name: "no"},
			LogConfig: logConfig{Type: "json-file", Config: map[string]string{
				"max-size": "10m",
				"max-file": "2",
			}},
			// The image runs tini as PID 1 itself.
			Init: false,
		},
	}
	if network == networkNone {
		// A segmented lab's node: the switch plugs its interfaces in. It
		// speaks IPv4 only, so that its addresses are the exam's alone.
		cc.HostConfig.Sysctls = n.SegmentedSysctls()
	} else {
		cc.NetworkingConfig = networkingConfig{EndpointsConfig: map[string]endpointConfig{
			network: {Aliases: []string{n.Name}},
		}}
	}
	if tools != "" {
		cc.HostConfig.Mounts = []mount{{Type: "volume", Source: tools, Target: toolsTarget, ReadOnly: true}}
	}
	cc.Labels[labelConfig] = digest(cc)
	return cc
}

// cpuShares is the CPU weight of a node that reserves cpus: 1024 for a
// whole cpu, never under the kernel's least weight of 2; 0 (the engine's
// default weight) for a node that reserves nothing.
func cpuShares(cpus float64) int64 {
	if cpus <= 0 {
		return 0
	}
	return max(2, int64(math.Round(cpus*1024)))
}

// digest hashes a create request, for its labelConfig. json.Marshal writes
// map keys sorted, so equal requests hash equally.
func digest(cc containerCreate) string {
	b, _ := json.Marshal(cc)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

type containerState struct {
	Status     string `json:"Status"`
	Running    bool   `json:"Running"`
	Restarting bool   `json:"Restarting"`
	OOMKilled  bool   `json:"OOMKilled"`
	Dead       bool   `json:"Dead"`
	ExitCode   int    `json:"ExitCode"`
	Error      string `json:"Error"`
	StartedAt  string `json:"StartedAt"`
	Pid        int    `json:"Pid"`
	Paused     bool   `json:"Paused"`
}

type endpointSettings struct {
	NetworkID string `json:"NetworkID"`
	IPAddress string `json:"IPAddress"`
}

type container struct {
	ID   string `json:"Id"`
	Name string `json:"Name"`
	// Image is the id of the image the container was created from.
	Image  string         `json:"Image"`
	State  containerState `json:"State"`
	Config struct {
		Image  string            `json:"Image"`
		Tty    bool              `json:"Tty"`
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
	NetworkSettings struct {
		Networks map[string]endpointSettings `json:"Networks"`
	} `json:"NetworkSettings"`
	HostConfig struct {
		NetworkMode       string `json:"NetworkMode"`
		Memory            int64  `json:"Memory"`
		MemoryReservation int64  `json:"MemoryReservation"`
		NanoCPUs          int64  `json:"NanoCpus"`
		CPUShares         int64  `json:"CpuShares"`
	} `json:"HostConfig"`
	// Mounts are the volumes and binds mounted in the container.
	Mounts []struct {
		Destination string `json:"Destination"`
	} `json:"Mounts"`
	// GraphDriver is the container's storage: with an overlay driver,
	// Data["UpperDir"] holds what the container changed.
	GraphDriver struct {
		Name string            `json:"Name"`
		Data map[string]string `json:"Data"`
	} `json:"GraphDriver"`
}

// containerSummary is one entry of the container list.
type containerSummary struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"`
	State  string            `json:"State"`
	Labels map[string]string `json:"Labels"`
	// Created is when the container was created, in Unix seconds.
	Created int64 `json:"Created"`
}

func (c *client) inspectContainer(ctx context.Context, name string) (container, error) {
	var out container
	err := c.do(ctx, http.MethodGet, "/containers/"+url.PathEscape(name)+"/json", nil, nil, &out)
	return out, err
}

func (c *client) listContainers(ctx context.Context, q url.Values) ([]containerSummary, error) {
	if q == nil {
		q = url.Values{}
	}
	q.Set("all", "1")
	var out []containerSummary
	if err := c.do(ctx, http.MethodGet, "/containers/json", q, nil, &out); err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return out, nil
}

// createContainer creates a container and returns its id.
func (c *client) createContainer(ctx context.Context, name string, cc containerCreate) (string, error) {
	var out struct {
		ID string `json:"Id"`
	}
	err := c.do(ctx, http.MethodPost, "/containers/create", url.Values{"name": {name}}, cc, &out)
	return out.ID, err
}

func (c *client) startContainer(ctx context.Context, id string) error {
	// 304 means already started, which do treats as success.
	return c.do(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/start", nil, nil, nil)
}

// removeContainer force-removes a container and waits until the engine no
// longer knows it; a container that is already gone is not an error.
func (c *client) removeContainer(ctx context.Context, id string) error {
	q := url.Values{"force": {"1"}, "v": {"1"}}
	err := c.do(ctx, http.MethodDelete, "/containers/"+url.PathEscape(id), q, nil, nil)
	switch {
	case err == nil, isNotFound(err):
		return nil
	case isConflict(err):
		// Removal already in progress elsewhere: wait for it to finish.
		for {
			if _, err := c.inspectContainer(ctx, id); isNotFound(err) {
				return nil
			} else if err != nil {
				return fmt.Errorf("remove container %s: %w", id, err)
			}
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return fmt.Errorf("remove container %s: %w", id, err)
			}
		}
	default:
		return fmt.Errorf("remove container %s: %w", id, err)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
