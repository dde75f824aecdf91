package nomad

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// LabAgent is the part of the Nomad runtime that runs on a Nomad client:
// the examlab binary in a lab's labnet-watch task (raw_exec, root on the
// client), which the worker reaches with alloc exec. It freezes and thaws
// the lab's node containers and reads a node's changes straight from its
// writable layer, all through the client's own Docker engine and
// filesystem, which the worker cannot reach.
type LabAgent struct {
	hc     *http.Client
	base   string
	labels func(alloc string) []string
	// proc is where the host's /proc is mounted (for a node's mounts).
	proc string
}

// engineAPI is the Engine API version the agent speaks, as the docker
// package does: 1.41 is Docker 20.10's, and newer engines accept it.
const engineAPI = "v1.41"

// AgentOptions configure a LabAgent. Zero values mean the documented
// defaults.
type AgentOptions struct {
	// DockerHost is the client's engine (unix:///path or tcp://host:port);
	// empty means the local socket.
	DockerHost string
	// Labels selects an allocation's node containers, as key=value labels,
	// besides the session's label; nil means the labels of a Nomad lab's
	// node containers: examlab.runtime=nomad (from the job) and the
	// allocation's id (from Nomad's docker driver).
	Labels func(alloc string) []string
}

// NewLabAgent returns an agent for the client's engine.
func NewLabAgent(opts AgentOptions) (*LabAgent, error) {
	host := opts.DockerHost
	labels := opts.Labels
	if labels == nil {
		labels = func(alloc string) []string {
			return []string{jobspecs.LabelRuntime + "=nomad", docker.NomadAllocLabel + "=" + alloc}
		}
	}
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("lab agent: parse docker host %q: %w", host, err)
	}
	var network, addr, base string
	switch u.Scheme {
	case "unix":
		network, addr, base = "unix", u.Path, "http://docker"
	case "tcp", "http":
		network, addr = "tcp", u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "2375")
		}
		base = "http://" + addr
	default:
		return nil, fmt.Errorf("lab agent: docker host %q: scheme must be unix:// or tcp://", host)
	}
	var d net.Dialer
	tr := &http.Transport{
		DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, network, addr) },
		DisableCompression: true,
	}
	return &LabAgent{hc: &http.Client{Transport: tr}, base: base + "/" + engineAPI, labels: labels, proc: "/proc"}, nil
}

// engineContainer is what the agent reads of a container's inspect.
type engineContainer struct {
	ID    string `json:"Id"`
	State struct {
		Status    string
		Running   bool
		Paused    bool
		Pid       int
		StartedAt string
	}
	Image  string
	Config struct {
		Labels map[string]string
		Tty    bool
	}
	HostConfig struct {
		NanoCpus  int64
		CpuPeriod int64
		CpuQuota  int64
	}
	GraphDriver struct {
		Name string
		Data map[string]string
	}
	Mounts []struct{ Destination string }
}

func (a *LabAgent) call(ctx context.Context, method, path string, q url.Values, out any) error {
	return a.send(ctx, method, path, q, nil, out)
}

// send is call with a JSON request body, when in is not nil.
func (a *LabAgent) send(ctx context.Context, method, path string, q url.Values, in, out any) error {
	u := a.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// do sends req to the engine; an answer other than 2xx is an
// *engineError.
func (a *LabAgent) do(req *http.Request) (*http.Response, error) {
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("docker engine: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e struct{ Message string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
		}
		return nil, &engineError{status: resp.StatusCode, msg: e.Message}
	}
	return resp, nil
}

type engineError struct {
	status int
	msg    string
}

func (e *engineError) Error() string {
	return fmt.Sprintf("docker engine: %d %s: %s", e.status, http.StatusText(e.status), e.msg)
}

func engineStatus(err error) int {
	var e *engineError
	if errors.As(err, &e) {
		return e.status
	}
	return 0
}

// nodes returns, by node name, the inspected containers of the session's
// nodes in allocation alloc that run, paused or not. A node restarted by
// Nomad may leave its dead container behind; those do not count, and of
// several live ones (never, but for a moment during a restart) the last
// started is taken.
func (a *LabAgent) nodes(ctx context.Context, session, alloc string) (map[string]engineContainer, error) {
	if !lab.ValidSessionID(session) {
		return nil, fmt.Errorf("invalid session id %q", session)
	}
	if alloc == "" {
		return nil, errors.New("no allocation id")
	}
	f, err := json.Marshal(map[string][]string{
		"label": append([]string{lab.LabelSession + "=" + session}, a.labels(alloc)...),
	})
	if err != nil {
		return nil, err
	}
	var list []struct {
		ID     string `json:"Id"`
		State  string
		Labels map[string]string
	}
	if err := a.call(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(f)}}, &list); err != nil {
		return nil, fmt.Errorf("list node containers of %s: %w", session, err)
	}
	out := map[string]engineContainer{}
	started := map[string]time.Time{}
	for _, c := range list {
		node := c.Labels[lab.LabelNode]
		if node == "" || (c.State != "running" && c.State != "paused") {
			continue
		}
		var ic engineContainer
		err := a.call(ctx, http.MethodGet, "/containers/"+c.ID+"/json", nil, &ic)
		if engineStatus(err) == http.StatusNotFound {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("inspect node %s of %s: %w", node, session, err)
		}
		if !ic.State.Running {
			continue
		}
		at, _ := time.Parse(time.RFC3339Nano, ic.State.StartedAt)
		if prev, ok := started[node]; ok && !at.After(prev) {
			continue
		}
		started[node] = at
		out[node] = ic
	}
	return out, nil
}

// Freeze pauses every running node container of the lab (the engine's
// cgroup freezer: no process of the node runs, none can be woken, and
// nothing in it changes its files) and returns the nodes it holds frozen,
// sorted. Freezing a frozen lab changes nothing.
func (a *LabAgent) Freeze(ctx context.Context, session, alloc string) ([]string, error) {
	nodes, err := a.nodes(ctx, session, alloc)
	if err != nil {
		return nil, fmt.Errorf("freeze lab %s: %w", session, err)
	}
	var done []string
	for node, c := range nodes {
		if !c.State.Paused {
			err := a.call(ctx, http.MethodPost, "/containers/"+c.ID+"/pause", nil, nil)
			if err != nil && !strings.Contains(err.Error(), "already paused") {
				return done, fmt.Errorf("freeze node %s of %s: %w", node, session, err)
			}
		}
		done = append(done, node)
	}
	sort.Strings(done)
	return done, nil
}

// Thaw resumes every paused node container of the lab and returns the
// nodes it thawed, sorted. Thawing a lab that is not frozen changes
// nothing. It tries every node, whatever fails.
func (a *LabAgent) Thaw(ctx context.Context, session, alloc string) ([]string, error) {
	nodes, err := a.nodes(ctx, session, alloc)
	if err != nil {
		return nil, fmt.Errorf("thaw lab %s: %w", session, err)
	}
	var done []string
	var errs []error
	for node, c := range nodes {
		if !c.State.Paused {
			continue
		}
		err := a.call(ctx, http.MethodPost, "/containers/"+c.ID+"/unpause", nil, nil)
		if err != nil && !strings.Contains(err.Error(), "is not paused") {
			errs = append(errs, fmt.Errorf("thaw node %s of %s: %w", node, session, err))
			continue
		}
		done = append(done, node)
	}
	sort.Strings(done)
	return done, errors.Join(errs...)
}

// cpuPeriod is the CFS period, in microseconds, the agent sets a quota
// against when a container already has a period of its own: the kernel's
// and Docker's default.
const cpuPeriod = 100_000

// HoldLimits holds each running node container of the lab to the cpus its
// lab.LabelCPULimit label names, as a CPU quota, where it is not held to
// them already, and returns the nodes it set, sorted. Nomad's docker
// driver cannot: its hard limit is what the node reserves. Run again and
// again (labnet watch does, every few seconds), it sets the limit of a
// node container that replaced one (a restart or a reset) and changes
// nothing else. It tries every node, whatever fails.
func (a *LabAgent) HoldLimits(ctx context.Context, session, alloc string) ([]string, error) {
	nodes, err := a.nodes(ctx, session, alloc)
	if err != nil {
		return nil, fmt.Errorf("hold lab %s to its limits: %w", session, err)
	}
	var done []string
	var errs []error
	for node, c := range nodes {
		label, ok := c.Config.Labels[lab.LabelCPULimit]
		if !ok {
			continue // a node held by its driver, or with no limit to hold
		}
		cpus, err := jobspecs.ParseCPUs(label)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s of %s: %w", node, session, err))
			continue
		}
		update, held := cpuUpdate(c, cpus)
		if held {
			continue
		}
		if err := a.send(ctx, http.MethodPost, "/containers/"+c.ID+"/update", nil, update, nil); err != nil {
			errs = append(errs, fmt.Errorf("hold node %s of %s to %s cpus: %w", node, session, label, err))
			continue
		}
		done = append(done, node)
	}
	sort.Strings(done)
	return done, errors.Join(errs...)
}

// cpuUpdate is the engine's container update that holds c to cpus, and
// whether c is held to them already. A container with a CFS period of its
// own gets a quota against it (the engine refuses NanoCpus beside one);
// else NanoCpus, which the engine turns into a quota itself.
func cpuUpdate(c engineContainer, cpus float64) (map[string]int64, bool) {
	hc := c.HostConfig
	if hc.CpuPeriod == 0 && hc.CpuQuota == 0 {
		want := int64(math.Round(cpus * 1e9))
		return map[string]int64{"NanoCpus": want}, hc.NanoCpus == want
	}
	period := hc.CpuPeriod
	if period == 0 {
		period = cpuPeriod
	}
	want := int64(math.Round(cpus * float64(period)))
	return map[string]int64{"CpuPeriod": period, "CpuQuota": want}, hc.CpuPeriod == period && hc.CpuQuota == want
}

// ErrNoUpper: the engine keeps a node's writable layer where the agent
// cannot find it (a storage driver that is not an overlay).
var ErrNoUpper = errors.New("the node's writable layer is not an overlay upper directory")

// Capture writes the node's changes — its container's writable layer — to
// w as a change set (see WriteUpper) and reports what it holds (all but
// Bytes, which the reader counts). The lab should be frozen: the layer is
// read as it is on the client's disk. A node with no running container is
// lab.ErrNotFound; a node whose layer is not an overlay's upper directory
// is ErrNoUpper, before anything is written.
func (a *LabAgent) Capture(ctx context.Context, session, alloc, node string, w io.Writer) (lab.NodeCapture, error) {
	nc := lab.NodeCapture{Node: node, Mode: lab.SnapshotChanges}
	nodes, err := a.nodes(ctx, session, alloc)
	if err != nil {
		return nc, fmt.Errorf("capture node %s: %w", node, err)
	}
	c, ok := nodes[node]
	if !ok {
		return nc, fmt.Errorf("capture node %s of %s: no running container: %w", node, session, lab.ErrNotFound)
	}
	upper, lower, err := a.layers(c)
	if err != nil {
		return nc, fmt.Errorf("capture node %s of %s: %w", node, session, err)
	}
	nc.Image = c.Image
	var img struct{ RepoDigests []string }
	if c.Image != "" && a.call(ctx, http.MethodGet, "/images/"+c.Image+"/json", nil, &img) == nil && len(img.RepoDigests) > 0 {
		nc.ImageDigest = img.RepoDigests[0]
	}
	st, err := WriteUpper(ctx, upper, lower, mountPoints(c), w)
	nc.Added, nc.Modified, nc.Deleted = st.Added, st.Modified, st.Deleted
	nc.Skipped, nc.SkippedPaths = st.Skipped, st.SkippedPaths
	if err != nil {
		return nc, fmt.Errorf("capture node %s of %s: %w", node, session, err)
	}
	return nc, nil
}

// Logs writes the output of the node's container — stdout and stderr
// merged in the order the engine kept them, each line after its time — to
// w and returns how many bytes it wrote. Nomad collects no logs of a node
// (render version 8 on): the client's engine keeps them, in the bounded
// json-file log the job asks for. A node whose container is not running
// (it ended, or Nomad is restarting it) still has its last container's
// logs as long as the engine keeps that container. A node with no
// container at all is lab.ErrNotFound.
func (a *LabAgent) Logs(ctx context.Context, session, alloc, node string, w io.Writer) (int64, error) {
	c, err := a.lastContainer(ctx, session, alloc, node)
	if err != nil {
		return 0, fmt.Errorf("logs of node %s: %w", node, err)
	}
	q := url.Values{"stdout": {"1"}, "stderr": {"1"}, "timestamps": {"1"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/containers/"+c.ID+"/logs?"+q.Encode(), nil)
	if err != nil {
		return 0, err
	}
	resp, err := a.do(req)
	if engineStatus(err) == http.StatusNotFound {
		// Gone since it was found: Nomad replaced it.
		return 0, fmt.Errorf("logs of node %s of %s: %w: %w", node, session, err, lab.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("logs of node %s of %s: %w", node, session, err)
	}
	defer resp.Body.Close()
	var src io.Reader = resp.Body
	if !c.Config.Tty {
		src = docker.Demux(resp.Body)
	}
	n, err := io.Copy(w, src)
	if err != nil {
		return n, fmt.Errorf("logs of node %s of %s: %w", node, session, err)
	}
	return n, nil
}

// lastContainer returns the inspected container of the session's node in
// allocation alloc, in any state: the running (or paused) one, else the
// one created last.
func (a *LabAgent) lastContainer(ctx context.Context, session, alloc, node string) (engineContainer, error) {
	var ic engineContainer
	if !lab.ValidSessionID(session) {
		return ic, fmt.Errorf("invalid session id %q", session)
	}
	if alloc == "" {
		return ic, errors.New("no allocation id")
	}
	f, err := json.Marshal(map[string][]string{
		"label": append([]string{lab.LabelSession + "=" + session, lab.LabelNode + "=" + node}, a.labels(alloc)...),
	})
	if err != nil {
		return ic, err
	}
	var list []struct {
		ID      string `json:"Id"`
		State   string
		Created int64
		Labels  map[string]string
	}
	if err := a.call(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(f)}}, &list); err != nil {
		return ic, fmt.Errorf("list containers of node %s of %s: %w", node, session, err)
	}
	live := func(state string) bool { return state == "running" || state == "paused" }
	best := -1
	for i, c := range list {
		switch {
		case c.Labels[lab.LabelPart] != "":
			// Not the node: a container made beside it that carries its
			// labels (the one-host runtime's capture containers).
		case best < 0:
			best = i
		case live(c.State) != live(list[best].State):
			if live(c.State) {
				best = i
			}
		case c.Created > list[best].Created:
			best = i
		}
	}
	if best < 0 {
		return ic, fmt.Errorf("node %s of %s has no container: %w", node, session, lab.ErrNotFound)
	}
	err = a.call(ctx, http.MethodGet, "/containers/"+list[best].ID+"/json", nil, &ic)
	if engineStatus(err) == http.StatusNotFound {
		return ic, fmt.Errorf("node %s of %s has no container: %w", node, session, lab.ErrNotFound)
	}
	if err != nil {
		return ic, fmt.Errorf("inspect node %s of %s: %w", node, session, err)
	}
	return ic, nil
}

// mountPoints reports whether a path of the node is one of its
// container's mount points (Nomad's alloc/, local/ and secrets/, the
// grader's tools) or under one: the engine made them in the writable
// layer, the candidate did not.
func mountPoints(c engineContainer) func(string) bool {
	return func(p string) bool {
		for _, m := range c.Mounts {
			d := strings.Trim(m.Destination, "/")
			if d != "" && (p == d || strings.HasPrefix(p, d+"/")) {
				return true
			}
		}
		return false
	}
}

// layers finds the container's overlay upper directory on this host, and
// the lower ones under it, topmost first: the storage driver says where
// they are (overlay2, fuse-overlayfs); else the node's root mount, an
// overlay, names them among its options.
func (a *LabAgent) layers(c engineContainer) (string, []string, error) {
	if d := c.GraphDriver.Data["UpperDir"]; d != "" {
		return d, splitLower(c.GraphDriver.Data["LowerDir"]), nil
	}
	if c.State.Pid <= 0 {
		return "", nil, fmt.Errorf("%w (storage driver %q)", ErrNoUpper, c.GraphDriver.Name)
	}
	f, err := os.Open(fmt.Sprintf("%s/%d/mountinfo", a.proc, c.State.Pid))
	if err != nil {
		return "", nil, fmt.Errorf("read the node's mounts: %w", err)
	}
	defer f.Close()
	upper, lower, err := rootOverlay(f)
	if err != nil {
		return "", nil, fmt.Errorf("%w (storage driver %q): %w", ErrNoUpper, c.GraphDriver.Name, err)
	}
	return upper, lower, nil
}

func splitLower(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ":")
}

// rootOverlay reads a mountinfo file and returns the upperdir and
// lowerdirs of the mount at "/", which must be an overlay.
func rootOverlay(r io.Reader) (string, []string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var found string
	var lower []string
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[4] != "/" {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(f) {
			continue
		}
		found, lower = "", nil // a later mount on "/" hides an earlier one
		if f[sep+1] != "overlay" {
			continue
		}
		for opt := range strings.SplitSeq(f[sep+3], ",") {
			if v, ok := strings.CutPrefix(opt, "upperdir="); ok {
				found = unescapeMount(v)
			}
			if v, ok := strings.CutPrefix(opt, "lowerdir="); ok {
				lower = splitLower(unescapeMount(v))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", nil, err
	}
	if found == "" {
		return "", nil, errors.New("its root is not a kernel overlay with an upperdir")
	}
	return found, lower, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Agent verbs: `examlab labnet VERB -session ID -alloc ID [-node NAME]`,
// as the runtime runs them with alloc exec in a lab's labnet-watch task.
// limit is what labnet watch does itself every few seconds (HoldLimits);
// as a verb an operator can run it at once.
const (
	VerbFreeze  = "freeze"
	VerbThaw    = "thaw"
	VerbCapture = "capture"
	VerbLimit   = "limit"
	VerbLogs    = "logs"
)

// AgentVerb reports whether verb is one RunAgent serves.
func AgentVerb(verb string) bool {
	switch verb {
	case VerbFreeze, VerbThaw, VerbCapture, VerbLimit, VerbLogs:
		return true
	}
	return false
}

// logsTrailer starts the last line `labnet logs` writes to stderr: how
// many bytes of logs it wrote to stdout, so that the runtime knows when it
// has them all.
const logsTrailer = "examlab-logs "

// captureTrailer starts the last line `labnet capture` writes to stderr:
// what the change set holds, as JSON, for the runtime to count.
const captureTrailer = "examlab-capture "

// outputHold bounds how long `labnet capture` and `labnet logs` wait,
// after their output, for the runtime to close their input (see
// RunAgent).
const outputHold = 30 * time.Second

// Exit codes of the agent verbs beyond 0 and 1, which the runtime tells
// apart.
const (
	// ExitMissing: the node has no running container.
	ExitMissing = 3
	// ExitNoUpper: the node's changes cannot be read on this client (its
	// storage is not an overlay the agent knows); nothing was captured.
	ExitNoUpper = 4
)

// AgentExitCode is the exit status of `examlab labnet VERB` that ended
// with err.
func AgentExitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, lab.ErrNotFound):
		return ExitMissing
	case errors.Is(err, ErrNoUpper), errors.Is(err, ErrUpperUnsupported):
		return ExitNoUpper
	}
	return 1
}

// RunAgent runs one agent verb; args are the verb and its flags. freeze,
// thaw and limit print the nodes they froze, thawed or set a limit on.
// capture writes the node's change set to stdout, then a line of counts
// to stderr; logs writes the node's logs to stdout, then a line with
// their length to stderr. Both then wait until stdin is closed (or 30s)
// before they return: the runtime closes it once it has read the whole
// output, so the exec stream cannot end before the output is through (see
// hashicorp/nomad#27146).
func RunAgent(ctx context.Context, a *LabAgent, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || !AgentVerb(args[0]) {
		return errors.New("labnet: want freeze, thaw, capture, limit or logs")
	}
	verb := args[0]
	fs := flag.NewFlagSet("labnet "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	session := fs.String("session", "", "session id (required)")
	alloc := fs.String("alloc", "", "the lab's allocation id (required)")
	node := fs.String("node", "", "the node to capture or read the logs of (capture, logs)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch {
	case *session == "":
		return fmt.Errorf("labnet %s: -session is required", verb)
	case *alloc == "":
		return fmt.Errorf("labnet %s: -alloc is required", verb)
	case (verb == VerbCapture || verb == VerbLogs) && *node == "":
		return fmt.Errorf("labnet %s: -node is required", verb)
	case fs.NArg() > 0:
		return fmt.Errorf("labnet %s: unexpected arguments %q", verb, fs.Args())
	}
	switch verb {
	case VerbFreeze:
		nodes, err := a.Freeze(ctx, *session, *alloc)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "frozen: %s\n", strings.Join(nodes, " "))
		return nil
	case VerbThaw:
		nodes, err := a.Thaw(ctx, *session, *alloc)
		fmt.Fprintf(stdout, "thawed: %s\n", strings.Join(nodes, " "))
		return err
	case VerbLimit:
		nodes, err := a.HoldLimits(ctx, *session, *alloc)
		fmt.Fprintf(stdout, "limits set: %s\n", strings.Join(nodes, " "))
		return err
	case VerbLogs:
		n, err := a.Logs(ctx, *session, *alloc, *node, stdout)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "%s%d\n", logsTrailer, n)
		holdOutput(ctx, stdin)
		return nil
	}
	nc, err := a.Capture(ctx, *session, *alloc, *node, stdout)
	if err != nil {
		return err
	}
	b, err := json.Marshal(nc)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%s%s\n", captureTrailer, b)
	holdOutput(ctx, stdin)
	return nil
}

// holdOutput returns once stdin ends, after outputHold, or when ctx ends.
func holdOutput(ctx context.Context, stdin io.Reader) {
	hold := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(hold)
	}()
	t := time.NewTimer(outputHold)
	defer t.Stop()
	select {
	case <-hold:
	case <-t.C:
	case <-ctx.Done():
	}
}

// DefaultThawAfter is how long a lab's agent lets a node stay frozen
// before it thaws it on its own: longer than any capture takes (the
// archive task's own timeout is 30 minutes), so only a lab whose worker
// died between freeze and thaw is ever thawed this way.
const DefaultThawAfter = 30 * time.Minute

// FreezeGuard thaws a lab's nodes that stay frozen too long: the lab's
// labnet-watch task runs one for the lab's life, so that a worker that
// died between freeze and thaw never leaves the candidate's lab frozen.
type FreezeGuard struct {
	agent          *LabAgent
	session, alloc string
	after          time.Duration
	since          map[string]time.Time // paused container → first seen paused
}

// NewFreezeGuard returns a guard for the lab's allocation that thaws a
// node it has seen frozen for longer than after.
func (a *LabAgent) NewFreezeGuard(session, alloc string, after time.Duration) *FreezeGuard {
	return &FreezeGuard{agent: a, session: session, alloc: alloc, after: after, since: map[string]time.Time{}}
}

// Check looks at the lab's nodes at now and thaws those it has seen
// frozen since more than the guard's limit ago; it returns them, sorted.
func (g *FreezeGuard) Check(ctx context.Context, now time.Time) ([]string, error) {
	nodes, err := g.agent.nodes(ctx, g.session, g.alloc)
	if err != nil {
		return nil, fmt.Errorf("guard lab %s: %w", g.session, err)
	}
	seen := map[string]time.Time{}
	var thawed []string
	var errs []error
	for node, c := range nodes {
		if !c.State.Paused {
			continue
		}
		first, ok := g.since[c.ID]
		if !ok {
			first = now
		}
		if now.Sub(first) < g.after {
			seen[c.ID] = first
			continue
		}
		if err := g.agent.call(ctx, http.MethodPost, "/containers/"+c.ID+"/unpause", nil, nil); err != nil {
			seen[c.ID] = first
			errs = append(errs, fmt.Errorf("thaw node %s of %s: %w", node, g.session, err))
			continue
		}
		thawed = append(thawed, node)
	}
	g.since = seen
	sort.Strings(thawed)
	return thawed, errors.Join(errs...)
}
