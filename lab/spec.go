package lab

import (
	"fmt"
	"regexp"

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
	Nodes     []Node `json:"nodes"`
}

// Node is one container of a lab.
type Node struct {
	Name      string            `json:"name"`
	Role      string            `json:"role"`
	Container string            `json:"container"`
	Hostname  string            `json:"hostname"`
	Image     string            `json:"image"`
	MemoryMB  int               `json:"memory_mb"`
	CPUs      float64           `json:"cpus"`
	PidsLimit int               `json:"pids_limit"`
	CapAdd    []string          `json:"cap_add"`
	Sysctls   map[string]string `json:"sysctls,omitempty"`
	Labels    map[string]string `json:"labels"`
}

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
	for _, n := range ex.Topology.Nodes {
		l.Nodes = append(l.Nodes, Node{
			Name:      n.Name,
			Role:      n.Role,
			Container: ContainerName(s.ID, n.Name),
			Hostname:  n.Name,
			Image:     n.Image,
			MemoryMB:  n.Limits.MemoryMB,
			CPUs:      n.Limits.CPUs,
			PidsLimit: n.Limits.Pids,
			CapAdd:    append([]string(nil), n.Capabilities...),
			Sysctls:   n.Sysctls,
			Labels: map[string]string{
				LabelManaged: "true",
				LabelSession: s.ID,
				LabelNode:    n.Name,
				LabelRole:    n.Role,
				LabelExam:    ex.ID,
			},
		})
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
