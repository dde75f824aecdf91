// Package exam loads and validates exam definitions: the tasks a candidate
// answers, the lab topology they work in, and how long they have.
package exam

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrInvalid wraps every validation failure; the message names the field.
var ErrInvalid = errors.New("invalid exam")

//go:embed default.yaml
var defaultYAML []byte

// Task kinds an exam may declare.
const (
	KindText    = "text"    // free-form prose answer
	KindCommand = "command" // a command or config snippet
	KindChoice  = "choice"  // one of Options
)

// Exam is one exam definition as loaded from its YAML file.
type Exam struct {
	ID       string   `yaml:"id" json:"id"`
	Title    string   `yaml:"title" json:"title"`
	Duration Duration `yaml:"duration" json:"duration"`
	// Version names this revision of the exam in its results; empty means
	// a digest of its content (Fingerprint).
	Version  string   `yaml:"version,omitempty" json:"version,omitempty"`
	Tasks    []Task   `yaml:"tasks" json:"tasks"`
	Topology Topology `yaml:"topology" json:"topology"`
	Grading  Grading  `yaml:"grading,omitempty" json:"grading"`
}

// Task is one question of the exam.
type Task struct {
	ID      string   `yaml:"id" json:"id"`
	Title   string   `yaml:"title" json:"title"`
	Prompt  string   `yaml:"prompt" json:"prompt"`
	Kind    string   `yaml:"kind" json:"kind"`
	Options []string `yaml:"options,omitempty" json:"options,omitempty"`
	Points  int      `yaml:"points,omitempty" json:"points,omitempty"`
	// Checks judge the task in the lab; their points add up to Points.
	// They never travel to a candidate, hence no JSON.
	Checks []Check `yaml:"checks,omitempty" json:"-"`
	// Correct is a choice task's right option, scored automatically.
	Correct string `yaml:"correct,omitempty" json:"-"`
}

// Topology is the lab every candidate of this exam gets.
type Topology struct {
	// Image is the default node image; a node may override it.
	Image string `yaml:"image" json:"image"`
	// Defaults apply to every node that leaves a field unset.
	Defaults NodeDefaults `yaml:"defaults" json:"defaults"`
	// Networks are the lab's named segments. Without any, the lab is one
	// flat network with addresses from the runtime's pool, as before
	// segments existed.
	Networks []Network `yaml:"networks,omitempty" json:"networks,omitempty"`
	Nodes    []Node    `yaml:"nodes" json:"nodes"`
}

// Network is one segment of a lab: a switch only its own lab's nodes are
// plugged into. A network of two nodes is a point-to-point link.
type Network struct {
	Name   string `yaml:"name" json:"name"`
	Subnet string `yaml:"subnet" json:"subnet"`
}

// Interface plugs a node into a network with a fixed address (CIDR
// notation, the network's prefix length). A node's interfaces are eth0,
// eth1, ... in the order it lists them.
type Interface struct {
	Network string `yaml:"network" json:"network"`
	Address string `yaml:"address" json:"address"`
}

// Route is one entry of a node's routing table: To is "default" or a
// prefix, Via an address on one of the node's own networks.
type Route struct {
	To  string `yaml:"to" json:"to"`
	Via string `yaml:"via" json:"via"`
}

// File is placed in a node before it is ready. Mode is octal ("0644").
type File struct {
	Path    string `yaml:"path" json:"path"`
	Mode    string `yaml:"mode,omitempty" json:"mode,omitempty"`
	Content string `yaml:"content" json:"content"`
}

// NodeDefaults are the per-node settings a topology sets once.
type NodeDefaults struct {
	Limits       Limits   `yaml:"limits" json:"limits"`
	Capabilities []string `yaml:"capabilities" json:"capabilities"`
}

// Node is one container of the lab. Name is its hostname and the name its
// peers resolve; Role says what part it plays (branch, gateway, hub…).
type Node struct {
	Name         string            `yaml:"name" json:"name"`
	Role         string            `yaml:"role" json:"role"`
	Image        string            `yaml:"image,omitempty" json:"image,omitempty"`
	Limits       Limits            `yaml:"limits,omitempty" json:"limits"`
	Capabilities []string          `yaml:"capabilities,omitempty" json:"capabilities,omitempty"`
	Sysctls      map[string]string `yaml:"sysctls,omitempty" json:"sysctls,omitempty"`
	// Interfaces, in order, become eth0, eth1, ...; they need
	// topology.networks.
	Interfaces []Interface `yaml:"interfaces,omitempty" json:"interfaces,omitempty"`
	// Address is the address the node's name resolves to in its lab; empty
	// means its first interface's.
	Address string `yaml:"address,omitempty" json:"address,omitempty"`
	// Routes are exactly the node's routes besides those of its own
	// networks: no default route unless one is declared.
	Routes []Route `yaml:"routes,omitempty" json:"routes,omitempty"`
	// Files are written into the node before it is ready.
	Files []File `yaml:"files,omitempty" json:"files,omitempty"`
	// Setup is a shell script run once as root, with the node's own
	// capabilities and nothing more, after the node has started and its
	// network and files are in place, before the candidate gets in. A
	// non-zero exit or one past SetupTimeout fails the provision.
	Setup        string   `yaml:"setup,omitempty" json:"setup,omitempty"`
	SetupTimeout Duration `yaml:"setup_timeout,omitempty" json:"setup_timeout"`
}

// Limits bound what one node may use: MemoryMB, CPUs and Pids are hard
// limits the node is held to; Reserve is what a cluster sets aside for it
// when placing its lab, which is far less, since lab nodes mostly idle.
type Limits struct {
	MemoryMB int     `yaml:"memory_mb,omitempty" json:"memory_mb"`
	CPUs     float64 `yaml:"cpus,omitempty" json:"cpus"`
	Pids     int     `yaml:"pids,omitempty" json:"pids"`
	Reserve  Reserve `yaml:"reserve,omitempty" json:"reserve"`
}

// Reserve is what placing a node sets aside on its host: a share of CPU
// and the memory it is expected to use. The node may use more, up to its
// limits, when its host has room. Zero fields take the topology's
// defaults, then DefaultReserve (never more than the node's limits).
type Reserve struct {
	CPUs     float64 `yaml:"cpus,omitempty" json:"cpus"`
	MemoryMB int     `yaml:"memory_mb,omitempty" json:"memory_mb"`
}

// DefaultReserve is a node's reserve when neither the node nor the
// topology's defaults set one: an idle lab node (examlab/node:bookworm,
// tini and a sleep) uses no measurable CPU and about 2 MiB, 4.4 MiB with
// two shells open; 32 MB leaves room for a candidate's shell and editor.
var DefaultReserve = Reserve{CPUs: 0.05, MemoryMB: 32}

// MinReserveMemoryMB is the least memory a node may reserve: Nomad refuses
// a task that reserves less than 10 MB.
const MinReserveMemoryMB = 10

// Duration is a time.Duration that reads "90m" or "2h" from YAML and JSON.
type Duration struct {
	time.Duration
	// unparsed holds what the file said when it was no duration, for
	// Validate to report under the field's name, which the decoder does
	// not know.
	unparsed string
}

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		*d = Duration{unparsed: s}
		return nil
	}
	*d = Duration{Duration: v}
	return nil
}

// check reports a value that was no duration, naming field.
func (d Duration) check(field string) error {
	if d.unparsed != "" {
		return invalid(field, "must be a duration such as 90s, 30m or 2h, got %q", d.unparsed)
	}
	return nil
}

// MarshalYAML writes the duration as its string form, as it is read.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes the duration as its string form.
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// allowedCaps is what an exam may grant a node. Anything that reaches the
// host (SYS_ADMIN, SYS_MODULE, NET_BROADCAST across namespaces…) is refused.
var allowedCaps = map[string]bool{
	"CHOWN": true, "DAC_OVERRIDE": true, "FOWNER": true, "FSETID": true,
	"KILL": true, "SETGID": true, "SETUID": true, "SETPCAP": false,
	"NET_BIND_SERVICE": true, "NET_RAW": true, "NET_ADMIN": true,
	"SYS_CHROOT": true, "AUDIT_WRITE": true, "MKNOD": false,
}

// AllowedCapabilities lists the capabilities an exam may grant, sorted.
func AllowedCapabilities() []string {
	var out []string
	for c, ok := range allowedCaps {
		if ok {
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out
}

var (
	idPattern     = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	nodePattern   = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)
	sysctlPattern = regexp.MustCompile(`^net\.[a-z0-9_.]+$`)
)

// The patterns above in words, for error messages. Node and network names
// share nameRule.
const (
	idRule   = "1 to 64 lower-case letters, digits, dashes or underscores, starting with a letter or digit"
	nameRule = "1 to 31 lower-case letters, digits or dashes, starting with a letter"
)

// ValidTaskID reports whether id is a well-formed task id. Task ids become
// file names, so the pattern admits no path separators or dots.
func ValidTaskID(id string) bool { return idPattern.MatchString(id) }

// Default returns the exam shipped with examlab: the eight-node lab
// tokyo, osaka, kyoto, g1..g4 and phoenix.
func Default() *Exam {
	e, err := Parse(defaultYAML)
	if err != nil {
		panic(fmt.Sprintf("embedded default exam: %v", err))
	}
	return e
}

// Load reads and validates an exam file.
func Load(path string) (*Exam, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read exam %s: %w", path, err)
	}
	e, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("exam %s: %w", path, err)
	}
	return e, nil
}

// Parse decodes YAML strictly (unknown fields are errors), fills defaults
// and validates.
func Parse(b []byte) (*Exam, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var e Exam
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	e.applyDefaults()
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

func (e *Exam) applyDefaults() {
	e.applyCheckDefaults()
	for i := range e.Topology.Nodes {
		n := &e.Topology.Nodes[i]
		if n.Image == "" {
			n.Image = e.Topology.Image
		}
		d := e.Topology.Defaults
		if n.Limits.MemoryMB == 0 {
			n.Limits.MemoryMB = d.Limits.MemoryMB
		}
		if n.Limits.CPUs == 0 {
			n.Limits.CPUs = d.Limits.CPUs
		}
		if n.Limits.Pids == 0 {
			n.Limits.Pids = d.Limits.Pids
		}
		n.Limits.Reserve = reserveOf(n.Limits, d.Limits.Reserve)
		n.Capabilities = mergeCaps(d.Capabilities, n.Capabilities)
		e.applyTopologyDefaults(n)
	}
}

// reserveOf is the reserve of a node with limits l: its own, else the
// topology's default, else DefaultReserve held to the node's limits. Only
// the last is adjusted to fit: a reserve an exam sets that exceeds a limit
// is its author's mistake, which Validate names.
func reserveOf(l Limits, def Reserve) Reserve {
	r := l.Reserve
	if r.CPUs == 0 {
		r.CPUs = def.CPUs
	}
	if r.CPUs == 0 {
		r.CPUs = DefaultReserve.CPUs
		if l.CPUs > 0 {
			r.CPUs = min(r.CPUs, l.CPUs)
		}
	}
	if r.MemoryMB == 0 {
		r.MemoryMB = def.MemoryMB
	}
	if r.MemoryMB == 0 {
		r.MemoryMB = DefaultReserve.MemoryMB
		if l.MemoryMB > 0 {
			r.MemoryMB = max(min(r.MemoryMB, l.MemoryMB), MinReserveMemoryMB)
		}
	}
	return r
}

// validateReserve checks the reserve of limits l at field (a node's
// limits, or the defaults'). A node's reserve must be set (defaults fill
// it); the defaults' may be left out. from names where an inherited value
// came from.
func validateReserve(field string, l Limits, node bool, from func(cpus bool) string) error {
	r := l.Reserve
	if r.CPUs < 0 || (node && r.CPUs == 0) {
		return invalid(field+".reserve.cpus", "must be more than 0, got %g", r.CPUs)
	}
	if l.CPUs > 0 && r.CPUs > l.CPUs {
		return invalid(field+".reserve.cpus", "%g%s is more than the limit, %s.cpus %g", r.CPUs, from(true), field, l.CPUs)
	}
	if r.MemoryMB < 0 || ((node || r.MemoryMB != 0) && r.MemoryMB < MinReserveMemoryMB) {
		return invalid(field+".reserve.memory_mb", "must be at least %d (Nomad reserves no less), got %d", MinReserveMemoryMB, r.MemoryMB)
	}
	if l.MemoryMB > 0 && r.MemoryMB > l.MemoryMB {
		return invalid(field+".reserve.memory_mb", "%d%s is more than the limit, %s.memory_mb %d", r.MemoryMB, from(false), field, l.MemoryMB)
	}
	return nil
}

func mergeCaps(a, b []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range append(append([]string{}, a...), b...) {
		c = strings.ToUpper(strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// Validate checks every field and names the first bad one in its error.
func (e *Exam) Validate() error {
	if !idPattern.MatchString(e.ID) {
		return invalid("id", "must be %s, got %q", idRule, e.ID)
	}
	if strings.TrimSpace(e.Title) == "" {
		return invalid("title", "is required")
	}
	if err := e.Duration.check("duration"); err != nil {
		return err
	}
	if e.Duration.Duration < time.Minute || e.Duration.Duration > 24*time.Hour {
		return invalid("duration", "must be between 1m and 24h, got %s", e.Duration.Duration)
	}
	if len(e.Tasks) == 0 {
		return invalid("tasks", "at least one task is required")
	}
	taskIDs := map[string]bool{}
	for i, t := range e.Tasks {
		f := fmt.Sprintf("tasks[%d]", i)
		if !ValidTaskID(t.ID) {
			return invalid(f+".id", "must be %s, got %q", idRule, t.ID)
		}
		if taskIDs[t.ID] {
			return invalid(f+".id", "duplicate task id %q", t.ID)
		}
		taskIDs[t.ID] = true
		if strings.TrimSpace(t.Title) == "" {
			return invalid(f+".title", "is required")
		}
		if strings.TrimSpace(t.Prompt) == "" {
			return invalid(f+".prompt", "is required")
		}
		switch t.Kind {
		case KindText, KindCommand:
			if len(t.Options) > 0 {
				return invalid(f+".options", "only kind %q takes options", KindChoice)
			}
		case KindChoice:
			if len(t.Options) < 2 {
				return invalid(f+".options", "kind %q needs at least two options", KindChoice)
			}
		default:
			return invalid(f+".kind", "must be one of %s, %s, %s; got %q", KindText, KindCommand, KindChoice, t.Kind)
		}
	}
	def := e.Topology.Defaults.Limits
	if err := validateReserve("topology.defaults.limits", def, false, func(bool) string { return "" }); err != nil {
		return err
	}
	nodes := e.Topology.Nodes
	if len(nodes) == 0 {
		return invalid("topology.nodes", "at least one node is required")
	}
	if len(nodes) > 32 {
		return invalid("topology.nodes", "at most 32 nodes, got %d", len(nodes))
	}
	subnets, err := e.Topology.validateNetworks()
	if err != nil {
		return err
	}
	used := map[netip.Addr]string{}
	names := map[string]bool{}
	for i, n := range nodes {
		f := fmt.Sprintf("topology.nodes[%d]", i)
		if !nodePattern.MatchString(n.Name) {
			return invalid(f+".name", "must be %s, got %q", nameRule, n.Name)
		}
		if names[n.Name] {
			return invalid(f+".name", "duplicate node name %q", n.Name)
		}
		names[n.Name] = true
		if strings.TrimSpace(n.Role) == "" {
			return invalid(f+".role", "is required")
		}
		if n.Image == "" {
			return invalid(f+".image", "is required (or set topology.image)")
		}
		if n.Limits.MemoryMB < 16 || n.Limits.MemoryMB > 16384 {
			return invalid(f+".limits.memory_mb", "must be between 16 and 16384, got %d", n.Limits.MemoryMB)
		}
		if n.Limits.CPUs <= 0 || n.Limits.CPUs > 16 {
			return invalid(f+".limits.cpus", "must be in (0, 16], got %g", n.Limits.CPUs)
		}
		if n.Limits.Pids < 16 || n.Limits.Pids > 65536 {
			return invalid(f+".limits.pids", "must be between 16 and 65536, got %d", n.Limits.Pids)
		}
		r := n.Limits.Reserve
		inherited := func(cpus bool) string {
			if (cpus && r.CPUs == def.Reserve.CPUs) || (!cpus && r.MemoryMB == def.Reserve.MemoryMB) {
				return " (as topology.defaults.limits.reserve has it; give this node a reserve of its own)"
			}
			return ""
		}
		if err := validateReserve(f+".limits", n.Limits, true, inherited); err != nil {
			return err
		}
		for _, c := range n.Capabilities {
			if !allowedCaps[c] {
				return invalid(f+".capabilities", "%q is not allowed (allowed: %s)", c, strings.Join(AllowedCapabilities(), ", "))
			}
		}
		for k := range n.Sysctls {
			if !sysctlPattern.MatchString(k) {
				return invalid(f+".sysctls", "%q is not a namespaced net.* sysctl", k)
			}
		}
		if err := validateNodeNetwork(f, n, subnets, used); err != nil {
			return err
		}
		if err := validateStartup(f, n); err != nil {
			return err
		}
	}
	return e.validateGrading(names)
}

// Task returns the task with the given id.
func (e *Exam) Task(id string) (Task, bool) {
	for _, t := range e.Tasks {
		if t.ID == id {
			return t, true
		}
	}
	return Task{}, false
}

// Node returns the node with the given name.
func (e *Exam) Node(name string) (Node, bool) {
	for _, n := range e.Topology.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// NodeNames lists the lab's node names in topology order.
func (e *Exam) NodeNames() []string {
	out := make([]string, len(e.Topology.Nodes))
	for i, n := range e.Topology.Nodes {
		out[i] = n.Name
	}
	return out
}
