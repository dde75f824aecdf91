package labtest

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/examlab/examlab/lab"
)

var _ lab.Runtime = (*Memory)(nil)

// MemoryOptions configure a Memory runtime. Zero values mean the
// documented defaults.
type MemoryOptions struct {
	// NodeDelay is how long Provision takes for each node it creates or
	// starts, so that a test can catch a provision halfway or race two;
	// default none.
	NodeDelay time.Duration
	// Now is the clock for nodes' start times and files; default time.Now.
	Now func() time.Time
}

// Memory is a lab.Runtime that keeps its labs in memory, for tests of the
// logic around labs (workers, the relay, the API) that need no real
// containers. It passes the contract suite except for what needs a kernel:
// its nodes have no network, and Exec runs a small built-in command set
// (see shell.go) on files kept per node, so that ExportFS is a real tar of
// what was written. Its methods are safe for concurrent use.
type Memory struct {
	o MemoryOptions

	mu   sync.Mutex
	labs map[string]*memLab
	nets int // labs created so far; numbers each lab's addresses
}

type memLab struct {
	net   int
	nodes map[string]*memNode
}

// memNode is one node: what a container would hold.
type memNode struct {
	spec      lab.Node
	ip        string
	running   bool
	startedAt time.Time
	files     map[string]memFile // by path without the leading slash
	dirs      map[string]bool
	logs      []byte
}

type memFile struct {
	data []byte
	mod  time.Time
}

// NewMemory returns an empty in-memory runtime.
func NewMemory(o MemoryOptions) *Memory {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Memory{o: o, labs: map[string]*memLab{}}
}

// seedDirs are the directories every node starts with.
var seedDirs = []string{"etc", "home", "root", "tmp", "var", "var/tmp"}

func (m *Memory) newNode(l *memLab, n lab.Node, index int) *memNode {
	now := m.o.Now()
	node := &memNode{
		spec:  n,
		ip:    fmt.Sprintf("10.99.%d.%d", l.net%250, index+2),
		files: map[string]memFile{},
		dirs:  map[string]bool{},
	}
	for _, d := range seedDirs {
		node.dirs[d] = true
	}
	hostname := n.Hostname
	if hostname == "" {
		hostname = n.Name
	}
	node.files["etc/hostname"] = memFile{data: []byte(hostname + "\n"), mod: now}
	return node
}

// start runs the node, and logs what the lab image's entrypoint logs.
func (m *Memory) start(n *memNode) {
	n.running = true
	n.startedAt = m.o.Now()
	n.logs = append(n.logs, fmt.Sprintf("%s examlab node %s ready\n", n.startedAt.UTC().Format(time.RFC3339Nano), n.spec.Name)...)
}

// upToDate reports whether the node runs as spec says.
func (m *Memory) upToDate(sessionID string, n lab.Node) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.labs[sessionID]
	if l == nil {
		return false
	}
	node := l.nodes[n.Name]
	return node != nil && node.running && reflect.DeepEqual(node.spec, n)
}

// Provision creates what is missing, replaces nodes whose spec changed and
// starts stopped ones, one node at a time (NodeDelay each).
func (m *Memory) Provision(ctx context.Context, spec lab.Spec) error {
	if !lab.ValidSessionID(spec.SessionID) {
		return fmt.Errorf("provision lab: invalid session id %q", spec.SessionID)
	}
	for i, n := range spec.Nodes {
		if m.upToDate(spec.SessionID, n) {
			continue
		}
		if err := sleep(ctx, m.o.NodeDelay); err != nil {
			return fmt.Errorf("provision lab %s: %w", spec.SessionID, err)
		}
		m.mu.Lock()
		l := m.labs[spec.SessionID]
		if l == nil {
			m.nets++
			l = &memLab{net: m.nets, nodes: map[string]*memNode{}}
			m.labs[spec.SessionID] = l
		}
		node := l.nodes[n.Name]
		if node == nil || !reflect.DeepEqual(node.spec, n) {
			node = m.newNode(l, n, i)
			l.nodes[n.Name] = node
		}
		if !node.running {
			m.start(node)
		}
		m.mu.Unlock()
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status reports each node of spec in order: pending until it exists.
func (m *Memory) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	if !lab.ValidSessionID(spec.SessionID) {
		return nil, fmt.Errorf("lab status: invalid session id %q", spec.SessionID)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]lab.NodeStatus, len(spec.Nodes))
	for i, n := range spec.Nodes {
		out[i] = lab.NodeStatus{Name: n.Name, Container: n.Container, State: lab.StatePending}
		l := m.labs[spec.SessionID]
		if l == nil || l.nodes[n.Name] == nil {
			continue
		}
		node := l.nodes[n.Name]
		out[i].IP, out[i].StartedAt = node.ip, node.startedAt
		out[i].State = lab.StateExited
		if node.running {
			out[i].State = lab.StateRunning
		}
	}
	return out, nil
}

// node finds a node; the caller holds mu.
func (m *Memory) node(sessionID, node string) (*memNode, error) {
	l := m.labs[sessionID]
	if l == nil {
		return nil, fmt.Errorf("session %s: %w", sessionID, lab.ErrNotFound)
	}
	n := l.nodes[node]
	if n == nil {
		return nil, fmt.Errorf("node %q of session %s: %w", node, sessionID, lab.ErrNotFound)
	}
	return n, nil
}

// Exec starts req.Cmd, one of the built-in commands, in a running node.
func (m *Memory) Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error) {
	if len(req.Cmd) == 0 {
		return nil, fmt.Errorf("exec in %s: empty command", node)
	}
	m.mu.Lock()
	n, err := m.node(sessionID, node)
	if err == nil && !n.running {
		err = fmt.Errorf("node %s of session %s: %w", node, sessionID, lab.ErrNotRunning)
	}
	m.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", node, err)
	}
	return m.startProcess(n, req), nil
}

// ExportFS writes the node's files as a tar stream, directories first
// where they lead to files, in name order. Stopped nodes export too.
func (m *Memory) ExportFS(ctx context.Context, sessionID, node string, w io.Writer) error {
	m.mu.Lock()
	n, err := m.node(sessionID, node)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("export filesystem: %w", err)
	}
	type entry struct {
		name string
		file memFile
		dir  bool
	}
	var entries []entry
	for d := range n.dirs {
		entries = append(entries, entry{name: d + "/", dir: true})
	}
	for p, f := range n.files {
		entries = append(entries, entry{name: p, file: memFile{data: append([]byte(nil), f.data...), mod: f.mod}})
	}
	started := n.startedAt
	m.mu.Unlock()

	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.file.data)), ModTime: e.file.mod, Typeflag: tar.TypeReg}
		if e.dir {
			h.Mode, h.Size, h.ModTime, h.Typeflag = 0o755, 0, started, tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("export filesystem of %s: %w", node, err)
		}
		if _, err := tw.Write(e.file.data); err != nil {
			return fmt.Errorf("export filesystem of %s: %w", node, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("export filesystem of %s: %w", node, err)
	}
	return nil
}

// Capture captures each node in full through ExportFS: a memory node has
// no image to tell its changes from.
func (m *Memory) Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) ([]lab.NodeCapture, error) {
	return lab.CaptureExports(ctx, sessionID, nodes, mode, "the in-memory runtime keeps no image to compare with", m.ExportFS, save)
}

// Logs writes a line per start of the node, as the lab image's entrypoint
// does.
func (m *Memory) Logs(ctx context.Context, sessionID, node string, w io.Writer) error {
	m.mu.Lock()
	n, err := m.node(sessionID, node)
	var logs []byte
	if err == nil {
		logs = append(logs, n.logs...)
	}
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("read logs: %w", err)
	}
	if _, err := w.Write(logs); err != nil {
		return fmt.Errorf("read logs of %s: %w", node, err)
	}
	return nil
}

// Destroy forgets the lab; a lab that is not there is already destroyed.
func (m *Memory) Destroy(ctx context.Context, sessionID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.labs, sessionID)
	return nil
}

// ResetNode replaces the node with a fresh one: its files are the seed
// files again.
func (m *Memory) ResetNode(ctx context.Context, spec lab.Spec, node string) error {
	n, ok := spec.Node(node)
	if !ok {
		return fmt.Errorf("reset node %s of session %s: %w", node, spec.SessionID, lab.ErrNotFound)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.node(spec.SessionID, node); err != nil {
		return fmt.Errorf("reset node %s: %w", node, err)
	}
	l := m.labs[spec.SessionID]
	index := 0
	for i, sn := range spec.Nodes {
		if sn.Name == node {
			index = i
		}
	}
	fresh := m.newNode(l, n, index)
	m.start(fresh)
	l.nodes[node] = fresh
	return nil
}

// Labs lists every lab, in id order.
func (m *Memory) Labs(ctx context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.labs))
	for id := range m.labs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// Ping always answers.
func (m *Memory) Ping(ctx context.Context) error { return nil }

// Crash stops a running node as a crash would: it keeps its files, and
// Provision starts it again.
func (m *Memory) Crash(sessionID, node string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.node(sessionID, node)
	if err != nil {
		return fmt.Errorf("crash %s: %w", node, err)
	}
	n.running = false
	return nil
}

// Inventory lists the lab's nodes, for the contract suite and for tests
// that check what a lab holds without going through the runtime's methods.
func (m *Memory) Inventory(sessionID string) Inventory {
	m.mu.Lock()
	defer m.mu.Unlock()
	var inv Inventory
	l := m.labs[sessionID]
	if l == nil {
		return inv
	}
	for name, n := range l.nodes {
		inv.Nodes = append(inv.Nodes, Instance{Node: name, Name: n.spec.Container, Running: n.running})
	}
	sort.Slice(inv.Nodes, func(i, j int) bool { return inv.Nodes[i].Node < inv.Nodes[j].Node })
	return inv
}

// ReadFile returns a file of a node, by absolute path, as a test wants to
// see what a command left behind.
func (m *Memory) ReadFile(sessionID, node, path string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.node(sessionID, node)
	if err != nil {
		return nil, err
	}
	f, ok := n.files[strings.TrimPrefix(cleanPath("/", path), "/")]
	if !ok {
		return nil, fmt.Errorf("read %s in %s: no such file", path, node)
	}
	return append([]byte(nil), f.data...), nil
}
