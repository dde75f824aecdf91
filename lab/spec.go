package lab

import (
	"fmt"
	"regexp"
	"time"

	"github.com/examlab/examlab/exam"
)

// Labels put on everything a lab owns, so runtimes and the reaper can find
// a session's resources without any other record.
const (
	LabelManaged = "examlab.managed"
	LabelSession = "examlab.session"
	LabelNode    = "examlab.node"
	LabelRole    = "examlab.role"
	LabelExam    = "examlab.exam"
	// LabelInstance names the examlab deployment that owns a lab, so that
	// two deployments (or two test runs) sharing an engine never reap each
	// other's labs.
	LabelInstance = "examlab.instance"
	// LabelCPULimit carries the cpus a node is held to on a container
	// whose runtime cannot set the limit when it creates it (Nomad's
	// docker driver ties its hard limit to the reservation): the lab's
	// agent on the host applies it.
	LabelCPULimit = "examlab.cpu-limit"
)

var sessionPattern = regexp.MustCompile(`^[a-z0-9]{12}$`)

// ValidSessionID reports whether id is a 12-character session slug.
func ValidSessionID(id string) bool { return sessionPattern.MatchString(id) }

// Short is the 8-character prefix that names a session's resources.
func Short(sessionID string) string {
	if len(sessionID) < 8 {
		return sessionID
	}
	return sessionID[:8]
}

// NetworkName is the per-session network: exam-{id8}-net.
func NetworkName(sessionID string) string { return "exam-" + Short(sessionID) + "-net" }

// ContainerName is a node's container: exam-{id8}-{node}.
func ContainerName(sessionID, node string) string { return "exam-" + Short(sessionID) + "-" + node }

// Spec is everything a runtime needs to provision one session's lab.
type Spec struct {
	SessionID string `json:"session_id"`
	ExamID    string `json:"exam_id"`
	Candidate string `json:"candidate"`
	Network   string `json:"network"`
	// Segments are the lab's own networks; none means one flat network
	// (Network) with addresses from the runtime's pool.
	Segments []Segment `json:"segments,omitempty"`
	Nodes    []Node    `json:"nodes"`
}

// Segment is one network of a segmented lab, a bridge inside the lab's
// switch: nothing outside the lab is plugged into it.
type Segment struct {
	Name   string `json:"name"`
	Subnet string `json:"subnet"`
}

// Interface is a node's link to a segment, with its fixed address.
type Interface struct {
	// Name is the interface's name in the node: eth0, eth1, ...
	Name    string `json:"name"`
	Segment string `json:"segment"`
	// Address is the node's address and the segment's prefix length.
	Address string `json:"address"`
}

// Route is a route a node starts with: To is "default" or a prefix.
type Route struct {
	To  string `json:"to"`
	Via string `json:"via"`
}

// File is written into a node before it is ready.
type File struct {
	Path    string `json:"path"`
	Mode    uint32 `json:"mode"`
	Content string `json:"content"`
}

// Node is one container of a lab.
type Node struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	Container string `json:"container"`
	Hostname  string `json:"hostname"`
	Image     string `json:"image"`
	// MemoryMB, CPUs and PidsLimit are the limits the node is held to;
	// CPUs 0 means none (only a runtime that applies it later leaves it
	// out when creating the container).
	MemoryMB  int     `json:"memory_mb"`
	CPUs      float64 `json:"cpus"`
	PidsLimit int     `json:"pids_limit"`
	// ReserveCPUs and ReserveMemoryMB are what placing the node sets aside
	// on its host (exam.Reserve); 0 means as much as the limit.
	ReserveCPUs     float64           `json:"reserve_cpus,omitempty"`
	ReserveMemoryMB int               `json:"reserve_memory_mb,omitempty"`
	CapAdd          []string          `json:"cap_add"`
	Sysctls         map[string]string `json:"sysctls,omitempty"`
	Labels          map[string]string `json:"labels"`
	// Interfaces, Routes and Address are set in a segmented lab only;
	// Address is what the node's name resolves to.
	Interfaces []Interface `json:"interfaces,omitempty"`
	Routes     []Route     `json:"routes,omitempty"`
	Address    string      `json:"address,omitempty"`
	// Files and Setup prepare the node before it is ready; Setup must end
	// within SetupTimeout.
	Files        []File        `json:"files,omitempty"`
	Setup        string        `json:"setup,omitempty"`
	SetupTimeout time.Duration `json:"setup_timeout,omitempty"`
}

// Segmented reports whether the lab has segments of its own rather than
// one flat network.
func (l Spec) Segmented() bool { return len(l.Segments) > 0 }

// Prepared reports whether the node has files or a setup to apply before
// it is ready.
func (n Node) Prepared() bool { return len(n.Files) > 0 || n.Setup != "" }

// Session is what a lab spec needs to know of its session.
type Session struct {
	ID        string
	Candidate string
}

// NewSpec renders the lab spec of one session of ex.
func NewSpec(ex *exam.Exam, s Session) (Spec, error) {
	if !ValidSessionID(s.ID) {
		return Spec{}, fmt.Errorf("render lab: invalid session id %q", s.ID)
	}
	l := Spec{
		SessionID: s.ID,
		ExamID:    ex.ID,
		Candidate: s.Candidate,
		Network:   NetworkName(s.ID),
	}
	for _, nw := range ex.Topology.Networks {
		l.Segments = append(l.Segments, Segment{Name: nw.Name, Subnet: nw.Subnet})
	}
	for _, n := range ex.Topology.Nodes {
		node := Node{
			Name:            n.Name,
			Role:            n.Role,
			Container:       ContainerName(s.ID, n.Name),
			Hostname:        n.Name,
			Image:           n.Image,
			MemoryMB:        n.Limits.MemoryMB,
			CPUs:            n.Limits.CPUs,
			PidsLimit:       n.Limits.Pids,
			ReserveCPUs:     n.Limits.Reserve.CPUs,
			ReserveMemoryMB: n.Limits.Reserve.MemoryMB,
			CapAdd:          append([]string(nil), n.Capabilities...),
			Sysctls:         n.Sysctls,
			Labels: map[string]string{
				LabelManaged: "true",
				LabelSession: s.ID,
				LabelNode:    n.Name,
				LabelRole:    n.Role,
				LabelExam:    ex.ID,
			},
			Setup:        n.Setup,
			SetupTimeout: n.SetupTimeout.Duration,
		}
		for i, ifc := range n.Interfaces {
			node.Interfaces = append(node.Interfaces, Interface{Name: exam.InterfaceName(i), Segment: ifc.Network, Address: ifc.Address})
		}
		for _, r := range n.Routes {
			node.Routes = append(node.Routes, Route{To: r.To, Via: r.Via})
		}
		if a := n.HostAddress(); a.IsValid() {
			node.Address = a.String()
		}
		for _, f := range n.Files {
			node.Files = append(node.Files, File{Path: f.Path, Mode: f.FileMode(), Content: f.Content})
		}
		l.Nodes = append(l.Nodes, node)
	}
	return l, nil
}

// Node returns the node with the given name.
func (l Spec) Node(name string) (Node, bool) {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Reserved returns what placing the node sets aside: its reserve, or its
// limits where it has none.
func (n Node) Reserved() (cpus float64, memoryMB int) {
	cpus, memoryMB = n.ReserveCPUs, n.ReserveMemoryMB
	if cpus <= 0 || (n.CPUs > 0 && cpus > n.CPUs) {
		cpus = n.CPUs
	}
	if memoryMB <= 0 || (n.MemoryMB > 0 && memoryMB > n.MemoryMB) {
		memoryMB = n.MemoryMB
	}
	return cpus, memoryMB
}
