// Package jobspecs renders a session's lab spec (lab.Spec) as the Nomad job
// that runs it: one task group, lifecycle tasks that make and remove the
// lab's network, and one docker task per node, as JSON for the API or HCL
// for people.
package jobspecs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/hashicorp/nomad/api"
)

// Meta keys of a session's Nomad job, so that `nomad job status` shows whose
// lab it is and the runtime can find its jobs without any other record.
const (
	MetaSession   = lab.LabelSession
	MetaExam      = lab.LabelExam
	MetaCandidate = "examlab.candidate"
	MetaManaged   = lab.LabelManaged
	// MetaSpec is a digest of the rendered job (without this key), so a
	// retried provision can tell the job it registered from one that differs.
	MetaSpec = "examlab.spec"
	// MetaRender is the NomadRenderVersion that rendered the job.
	MetaRender = "examlab.render"
)

// NomadRenderVersion counts changes to how NomadJob renders a lab. A
// provision never replaces a job rendered by a newer examlab than itself:
// during a rolling upgrade the older workers leave the newer jobs alone.
//
//  1. Flat labs: a prestart labnet-up makes the session network.
//  2. Segmented labs: nodes without a network, wired by a poststart
//     labnet-up from the lab's plan, and rewired after a restart by the
//     labnet-watch sidecar.
//  3. The grader's tools: every node mounts a volume read-only at
//     /.examlab, which labnet-up makes and fills on the client. Only jobs
//     rendered with NomadOptions.GraderTools carry it; without, a lab
//     renders as version 1 or 2 did.
//  4. Flat labs carry the labnet-watch sidecar too: the runtime runs the
//     lab agent's verbs in it (freeze, thaw, capture a node's changes on
//     the client). Segmented labs, which had it, render as before.
//  5. Reservation apart from limits, in every lab: a node reserves its
//     exam's reserve (cpu, memory) and is held to its limits by
//     memory_max and, with cpu_hard_limit off, by the lab's agent, which
//     sets each node container's CPU quota from its examlab.cpu-limit
//     label. The labnet tasks reserve less.
//  6. The lab's agent comes first: labnet-watch is a prestart sidecar,
//     running before the nodes start. In a segmented lab it is given the
//     plan and fills the grader's tools, brings up the switch while the
//     nodes start and wires and prepares each node as it comes to run;
//     labnet-up, still the poststart task the lab's readiness waits for,
//     only awaits what the agent leaves (labnet up -await).
//  7. The grader's tools carry the terminal holder: the volume a job
//     names covers the busybox and the platform's static examlab, which
//     the lab's agent copies in from its own binary (the same build), so
//     that shells in the nodes outlive a relay restart. The job's shape is
//     version 6's; the agent fills an older job's volume, named for
//     busybox alone, as before, and the relay gives those nodes shells of
//     its own.
//  8. Nomad collects no logs of a node (logs disabled): each node task
//     started two plugin processes of the client's for that (logmon and
//     the docker driver's logger), most of a lab's start beyond the
//     one-host runtime's. The node's engine keeps them, in a json-file
//     log the task bounds (NodeLogMaxSize × NodeLogMaxFiles), and the
//     lab's agent reads them there (labnet logs). The runtime reads an
//     older lab's logs with the alloc fs logs API, as before.
const NomadRenderVersion = 8

// A node's logs, kept by its client's engine: at most NodeLogMaxFiles
// files of NodeLogMaxSize each, the oldest dropped first.
const (
	NodeLogMaxSize  = "5m"
	NodeLogMaxFiles = "2"
)

// GraderToolsTarget is where every node sees the grader's tools;
// grading.ToolsDir names the same path.
const GraderToolsTarget = "/.examlab"

// DefaultGraderBusybox is the static busybox on the clients that
// labnet-up fills the tools volume from: Debian's busybox-static.
const DefaultGraderBusybox = "/bin/busybox"

// LabelRuntime marks Docker objects that a Nomad lab owns. Those objects do
// not carry LabelManaged: that label is what the one-host runtime lists and
// reaps, and it must never mistake a Nomad lab on the same engine for one of
// its own orphans.
const LabelRuntime = "examlab.runtime"

// Names inside a session's job.
const (
	// NomadGroup is the one task group: all of a lab lands on one client.
	NomadGroup = "lab"
	// NomadLabnetUp and NomadLabnetDown are the lifecycle tasks that make
	// the lab's network and remove it after the nodes stop. In a flat lab
	// labnet-up is a prestart task that creates the session network the
	// nodes join; in a segmented lab it is a poststart task that wires the
	// running nodes into their segments and prepares them, and the lab is
	// ready only once it has exited 0.
	NomadLabnetUp   = "labnet-up"
	NomadLabnetDown = "labnet-down"
	// NomadLabnetWatch is every lab's prestart sidecar, the lab's agent
	// on its client: the runtime runs `labnet freeze|thaw|capture` in it
	// with alloc exec. In a segmented lab it also wires and prepares each
	// node as it first comes up and, for the lab's life, each node
	// container that replaces one, since Nomad restarts a node (after a
	// crash, or to reset it) in a fresh container with no network.
	NomadLabnetWatch = "labnet-watch"
	// NomadPlan is the file, in labnet-watch's task directory, that a
	// segmented lab's template writes the lab's spec (lab.Spec as JSON) to.
	NomadPlan = "local/lab.json"
	// NomadLabnetState is the file, in the allocation's shared directory,
	// where labnet-watch leaves what it wired for labnet-up -await (and,
	// beside it with ".failed" added, why it could not).
	NomadLabnetState = "${NOMAD_ALLOC_DIR}/labnet.json"
	// NomadLabnetStateFile is the same file as the allocation's file
	// system API names it: the runtime reads from it that the lab is wired
	// without waiting for labnet-up's exit to reach the servers.
	NomadLabnetStateFile = "alloc/labnet.json"
)

// graderToolsPattern is the name of a grader's tools volume.
var graderToolsPattern = regexp.MustCompile(`^examlab-grader-[0-9a-f]{12}$`)

// The template delimiters of the plan. Nothing in the plan is a template,
// so these must never occur in it: json.Marshal writes '<' and '>' inside
// strings as \u003c and \u003e, so a delimiter holding either is safe
// whatever an exam's files and setup scripts contain ("{{" included).
const (
	PlanLeftDelim  = "<examlab-plan<"
	PlanRightDelim = ">examlab-plan>"
)

// Defaults for zero NomadOptions fields.
const (
	DefaultNomadLabnet = "/usr/local/bin/examlab"
	// DefaultMHzPerCPU converts an exam's reserved cpus into the MHz Nomad
	// reserves: one cpu is 1000 MHz. Set NomadOptions.MHzPerCPU to the
	// clients' per-core clock (`nomad node status -verbose`,
	// cpu.frequency) for a reservation of exactly the exam's share of a
	// core. The limit a node is held to is the exam's cpus whatever this
	// says: the lab's agent sets it as a CPU quota.
	DefaultMHzPerCPU = 1000
	defaultPriority  = 50
)

// NomadOptions are the cluster-specific parts of a session's job. Zero
// values mean the documented defaults.
type NomadOptions struct {
	// Datacenters the lab may be placed in; empty means ["dc1"].
	Datacenters []string
	// Namespace and Region of the job; empty leaves them to the client
	// that registers it (NOMAD_NAMESPACE, NOMAD_REGION).
	Namespace string
	Region    string
	// Labnet is the examlab binary's path on the clients; empty means
	// DefaultNomadLabnet.
	Labnet string
	// SubnetPool and SubnetPrefix are handed to `examlab labnet up`; empty
	// leaves labnet's own defaults (10.213.0.0/16 in /26 blocks).
	SubnetPool   string
	SubnetPrefix int
	// MHzPerCPU: see DefaultMHzPerCPU.
	MHzPerCPU int
	// Priority of the job; 0 means 50.
	Priority int
	// GraderTools names the Docker volume, on each client, that holds the
	// grader's tools (docker.ToolsNames: of the busybox and, when the
	// platform is a static build, the examlab the nodes run as the
	// terminal holder): every node mounts it read-only at
	// GraderToolsTarget, and the lab's agent (a flat lab's labnet-up)
	// makes and fills it from GraderBusybox and its own binary on the
	// client before the nodes need it. Empty means the nodes get no tools
	// and their checks cannot run.
	GraderTools string
	// GraderBusybox is the busybox on the clients; empty means
	// DefaultGraderBusybox.
	GraderBusybox string
	// NoMemoryOversubscription renders for a cluster whose scheduler
	// ignores memory_max (memory oversubscription off): each task then
	// reserves its whole memory limit, since what it reserved would
	// otherwise be its hard limit. The runtime sets it when it finds
	// oversubscription off.
	NoMemoryOversubscription bool
}

func (o NomadOptions) withDefaults() NomadOptions {
	if len(o.Datacenters) == 0 {
		o.Datacenters = []string{"dc1"}
	}
	if o.Labnet == "" {
		o.Labnet = DefaultNomadLabnet
	}
	if o.MHzPerCPU <= 0 {
		o.MHzPerCPU = DefaultMHzPerCPU
	}
	if o.Priority == 0 {
		o.Priority = defaultPriority
	}
	if o.GraderBusybox == "" {
		o.GraderBusybox = DefaultGraderBusybox
	}
	return o
}

// What the labnet tasks reserve: a Go binary that idles at about 19 MB
// and wakes every two seconds. labnet-watch also runs the agent's verbs
// (a capture streams a node's changes), so its memory may grow to the
// limit when the client has room.
const (
	labnetCPU         = 20
	labnetMemory      = 32
	labnetMemoryMax   = 256
	labnetMemoryFixed = 64 // without oversubscription: reserve and limit
)

// CPUMHz converts a node's cpus into the MHz Nomad reserves for it.
func (o NomadOptions) CPUMHz(cpus float64) int {
	o = o.withDefaults()
	return max(1, int(math.Round(cpus*float64(o.MHzPerCPU))))
}

// NomadJob renders the session's Nomad job: one task group, so the whole lab
// lands on one client, with one docker task per node, and lifecycle tasks
// around them. A flat lab has a prestart task that creates the session's
// internal Docker network on that client, nodes in their own network
// namespaces on it, reachable by name, and a poststop task that removes the
// network again. A segmented lab's nodes start with no network at all; a
// poststart task, given the lab's spec as a file, makes the lab's switch on
// the client, wires every node into its segments and runs its setup; a
// poststart sidecar does the same for every node Nomad restarts later; and
// the poststop task removes the switch.
func NomadJob(l lab.Spec, o NomadOptions) (*api.Job, error) {
	if !lab.ValidSessionID(l.SessionID) {
		return nil, fmt.Errorf("render nomad job: invalid session id %q", l.SessionID)
	}
	if len(l.Nodes) == 0 {
		return nil, fmt.Errorf("render nomad job %s: the lab has no nodes", l.SessionID)
	}
	o = o.withDefaults()
	if !strings.HasPrefix(o.Labnet, "/") {
		return nil, fmt.Errorf("render nomad job %s: labnet path %q must be absolute", l.SessionID, o.Labnet)
	}
	if o.GraderTools != "" && !graderToolsPattern.MatchString(o.GraderTools) {
		return nil, fmt.Errorf("render nomad job %s: grader's tools volume %q is not examlab-grader-{digest}", l.SessionID, o.GraderTools)
	}
	if o.GraderTools != "" && !strings.HasPrefix(o.GraderBusybox, "/") {
		return nil, fmt.Errorf("render nomad job %s: grader busybox path %q must be absolute", l.SessionID, o.GraderBusybox)
	}
	id := JobName(l.SessionID)
	network := lab.NetworkName(l.SessionID)

	job := &api.Job{
		ID:          new(id),
		Name:        new(id),
		Type:        new(api.JobTypeService),
		Priority:    new(o.Priority),
		Datacenters: append([]string(nil), o.Datacenters...),
		Meta: map[string]string{
			MetaManaged:   "true",
			MetaSession:   l.SessionID,
			MetaExam:      l.ExamID,
			MetaCandidate: l.Candidate,
			MetaRender:    strconv.Itoa(NomadRenderVersion),
		},
	}
	if o.Namespace != "" {
		job.Namespace = new(o.Namespace)
	}
	if o.Region != "" {
		job.Region = new(o.Region)
	}

	group := &api.TaskGroup{
		Name:  new(NomadGroup),
		Count: new(1),
		// A node that crashes is restarted in place, from its image, a few
		// times; past that the lab fails and the session shows why.
		RestartPolicy: &api.RestartPolicy{
			Attempts: new(2),
			Interval: new(5 * time.Minute),
			Delay:    new(5 * time.Second),
			Mode:     new("fail"),
		},
		// Never reschedule a failed lab onto another client: the candidate's
		// work lives in the containers' filesystems on this one, so a
		// rescheduled lab would be a fresh, empty one that looks healthy.
		// A failed lab stays failed and visible; the worker or an admin
		// decides what to do.
		ReschedulePolicy: &api.ReschedulePolicy{
			Attempts:  new(0),
			Unlimited: new(false),
		},
		// For the same reason a client that stops heartbeating keeps its lab:
		// the allocation is not replaced while the client is unreachable, and
		// the original is kept when it comes back.
		Disconnect: &api.DisconnectStrategy{
			LostAfter: new(15 * time.Minute),
			Replace:   new(false),
			Reconcile: new(api.ReconcileOptionKeepOriginal),
		},
		// A lab is never rolled out gradually: there is one allocation, and
		// no deployment is wanted for it.
		Update: &api.UpdateStrategy{MaxParallel: new(0)},
	}

	labnetArgs := []string{"labnet", "up", "-session", l.SessionID, "-exam", l.ExamID}
	if o.GraderTools != "" {
		labnetArgs = append(labnetArgs, "-grader-tools", o.GraderTools, "-grader-busybox", o.GraderBusybox)
	}
	var up *api.Task
	if l.Segmented() {
		up = awaitTask(l, o)
	} else {
		if o.SubnetPool != "" {
			labnetArgs = append(labnetArgs, "-subnet-pool", o.SubnetPool)
		}
		if o.SubnetPrefix != 0 {
			labnetArgs = append(labnetArgs, "-subnet-prefix", strconv.Itoa(o.SubnetPrefix))
		}
		up = labnetTask(NomadLabnetUp, api.TaskLifecycleHookPrestart, o.Labnet, labnetArgs)
		group.Tasks = append(group.Tasks, up)
	}

	seen := map[string]bool{NomadLabnetUp: true, NomadLabnetDown: true, NomadLabnetWatch: true}
	for _, n := range l.Nodes {
		if seen[n.Name] {
			return nil, fmt.Errorf("render nomad job %s: node name %q is taken", l.SessionID, n.Name)
		}
		seen[n.Name] = true
		group.Tasks = append(group.Tasks, nodeTask(l, n, network, o))
	}
	if l.Segmented() {
		group.Tasks = append(group.Tasks, up)
	}
	watch, err := watchTask(l, o)
	if err != nil {
		return nil, fmt.Errorf("render nomad job %s: %w", l.SessionID, err)
	}
	group.Tasks = append(group.Tasks, watch)
	group.Tasks = append(group.Tasks, labnetTask(NomadLabnetDown, api.TaskLifecycleHookPoststop, o.Labnet,
		[]string{"labnet", "down", "-session", l.SessionID}))
	for _, t := range group.Tasks {
		if t.Driver == "raw_exec" {
			t.Resources = labnetResources(o)
		}
	}
	job.TaskGroups = []*api.TaskGroup{group}

	sum, err := NomadJobDigest(job)
	if err != nil {
		return nil, fmt.Errorf("render nomad job %s: %w", l.SessionID, err)
	}
	job.Meta[MetaSpec] = sum
	return job, nil
}

// NomadJobDigest hashes a rendered job, leaving out its MetaSpec entry. It
// is stable: json.Marshal writes map keys in order.
func NomadJobDigest(job *api.Job) (string, error) {
	c := *job
	c.Meta = make(map[string]string, len(job.Meta))
	for k, v := range job.Meta {
		if k != MetaSpec {
			c.Meta[k] = v
		}
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return "", fmt.Errorf("digest job: %w", err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8]), nil
}

func labnetTask(name, hook, labnet string, args []string) *api.Task {
	return &api.Task{
		Name:   name,
		Driver: "raw_exec",
		// Not a sidecar: it runs once, to the end. A prestart one must
		// exit 0 before the nodes start.
		Lifecycle: &api.TaskLifecycle{Hook: hook},
		Config: map[string]any{
			"command": labnet,
			"args":    args,
		},
		LogConfig: &api.LogConfig{MaxFiles: new(1), MaxFileSizeMB: new(1)},
	}
}

// labnetResources are what a labnet task reserves and may use.
func labnetResources(o NomadOptions) *api.Resources {
	if o.NoMemoryOversubscription {
		return &api.Resources{CPU: new(labnetCPU), MemoryMB: new(labnetMemoryFixed)}
	}
	return &api.Resources{CPU: new(labnetCPU), MemoryMB: new(labnetMemory), MemoryMaxMB: new(labnetMemoryMax)}
}

// nodeResources are what a node reserves for placement (its exam's
// reserve) and the memory it is held to (memory_max, its limit). Its CPU
// limit is not Nomad's to set here: the docker driver's cpu_hard_limit
// would hold the node to what it reserves, so the lab's agent sets the
// limit instead (see lab.LabelCPULimit).
func nodeResources(n lab.Node, o NomadOptions) *api.Resources {
	cpus, memory := n.Reserved()
	r := &api.Resources{CPU: new(o.CPUMHz(cpus)), MemoryMB: new(memory)}
	switch {
	case o.NoMemoryOversubscription:
		// memory_max would be ignored and the reserve become the limit.
		r.MemoryMB = new(n.MemoryMB)
	case n.MemoryMB > memory:
		r.MemoryMaxMB = new(n.MemoryMB)
	}
	return r
}

// awaitTask is a segmented lab's labnet-up: a poststart task that ends
// once the lab's agent has wired and prepared the nodes, with the reason
// the agent left if it could not. It is never restarted: the agent does
// the work once, and its failure fails the lab at once, with its reason
// in this task's stderr.
func awaitTask(l lab.Spec, o NomadOptions) *api.Task {
	t := labnetTask(NomadLabnetUp, api.TaskLifecycleHookPoststart, o.Labnet,
		[]string{"labnet", "up", "-session", l.SessionID, "-await", NomadLabnetState})
	t.RestartPolicy = &api.RestartPolicy{Attempts: new(0), Mode: new("fail")}
	return t
}

// watchTask is a lab's labnet-watch, a prestart sidecar: it runs before
// the nodes start and for the lab's life. A segmented lab's is given the
// lab's plan, written by its template: it fills the grader's tools, makes
// the switch, wires and prepares each node as it comes up, and leaves
// the state labnet-up awaits. A flat lab's has nothing to wire.
func watchTask(l lab.Spec, o NomadOptions) (*api.Task, error) {
	args := []string{"labnet", "watch", "-session", l.SessionID}
	if !l.Segmented() {
		t := labnetTask(NomadLabnetWatch, api.TaskLifecycleHookPrestart, o.Labnet, args)
		t.Lifecycle.Sidecar = true
		return t, nil
	}
	plan, err := Plan(l)
	if err != nil {
		return nil, err
	}
	args = append(args, "-exam", l.ExamID)
	if o.GraderTools != "" {
		args = append(args, "-grader-tools", o.GraderTools, "-grader-busybox", o.GraderBusybox)
	}
	args = append(args, "-plan", "${NOMAD_TASK_DIR}/"+strings.TrimPrefix(NomadPlan, "local/"), "-state", NomadLabnetState)
	t := labnetTask(NomadLabnetWatch, api.TaskLifecycleHookPrestart, o.Labnet, args)
	t.Lifecycle.Sidecar = true
	t.Templates = []*api.Template{{
		EmbeddedTmpl: new(string(plan)),
		DestPath:     new(NomadPlan),
		ChangeMode:   new("noop"),
		LeftDelim:    new(PlanLeftDelim),
		RightDelim:   new(PlanRightDelim),
	}}
	return t, nil
}

// Plan is the lab's spec as a segmented lab's labnet-up reads it: JSON,
// indented for people reading the job, ending in a newline.
func Plan(l lab.Spec) ([]byte, error) {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode the lab's plan: %w", err)
	}
	// json.Marshal escapes '<' and '>'; should that ever change, a plan
	// holding a delimiter would be read as a template.
	if bytes.Contains(b, []byte(PlanLeftDelim)) || bytes.Contains(b, []byte(PlanRightDelim)) {
		return nil, fmt.Errorf("encode the lab's plan: it holds a template delimiter")
	}
	return append(b, '\n'), nil
}

func nodeTask(l lab.Spec, n lab.Node, network string, o NomadOptions) *api.Task {
	hostname := n.Hostname
	if hostname == "" {
		hostname = n.Name
	}
	caps := make([]string, 0, len(n.CapAdd))
	for _, c := range n.CapAdd {
		// The docker driver names capabilities in lower case without CAP_.
		caps = append(caps, strings.ToLower(strings.TrimPrefix(strings.ToUpper(c), "CAP_")))
	}
	cfg := map[string]any{
		"image": n.Image,
		// No registry is reachable: the image is built on each client.
		"force_pull":      false,
		"network_mode":    network,
		"network_aliases": []string{n.Name},
		"hostname":        hostname,
		"cap_drop":        []string{"all"},
		"cap_add":         caps,
		"security_opt":    []string{"no-new-privileges"},
		"pids_limit":      n.PidsLimit,
		// Nomad collects none of the node's logs (see LogConfig below):
		// the engine keeps them, bounded here whatever the client's
		// default logging is.
		"logging": []map[string]any{{
			"type":   "json-file",
			"config": []map[string]string{{"max-size": NodeLogMaxSize, "max-file": NodeLogMaxFiles}},
		}},
		// A hard limit here would be the CPU the node reserves, a twentieth
		// of a core, not its limit: the driver gives it a weight in
		// proportion to its reserve, and the lab's agent sets its limit
		// from the label below once the container runs.
		"cpu_hard_limit": false,
		// The driver reads labels and sysctl as a list of maps (the shape
		// of repeated HCL blocks).
		"labels": []map[string]string{{
			lab.LabelSession:  l.SessionID,
			lab.LabelNode:     n.Name,
			lab.LabelRole:     n.Role,
			lab.LabelExam:     l.ExamID,
			LabelRuntime:      "nomad",
			lab.LabelCPULimit: FormatCPUs(n.CPUs),
		}},
	}
	if l.Segmented() {
		// No network until labnet-up plugs the node's interfaces in.
		cfg["network_mode"] = "none"
		delete(cfg, "network_aliases")
		cfg["sysctl"] = []map[string]string{n.SegmentedSysctls()}
	} else if len(n.Sysctls) > 0 {
		sys := make(map[string]string, len(n.Sysctls))
		for k, v := range n.Sysctls {
			sys[k] = v
		}
		cfg["sysctl"] = []map[string]string{sys}
	}
	if o.GraderTools != "" {
		// A named volume with the engine's local driver: the docker
		// driver allows it without volumes.enabled, which would also let
		// a job bind host paths.
		cfg["mount"] = []map[string]any{{
			"type":     "volume",
			"target":   GraderToolsTarget,
			"source":   o.GraderTools,
			"readonly": true,
		}}
	}
	return &api.Task{
		Name:        n.Name,
		Driver:      "docker",
		Config:      cfg,
		Resources:   nodeResources(n, o),
		Meta:        map[string]string{lab.LabelRole: n.Role},
		KillTimeout: new(5 * time.Second),
		LogConfig:   &api.LogConfig{Disabled: new(true)},
	}
}

// NomadReserved is what placing the job's lab sets aside on a client, as
// Nomad's scheduler counts a task group: the main tasks and the poststart
// ones (sidecars or not, they may run beside the nodes) add up; a
// prestart task that ends, or the poststop one, runs alone, so only the
// largest of those phases counts; prestart sidecars run through all of
// them.
func NomadReserved(job *api.Job) (cpuMHz, memoryMB int) {
	for _, g := range job.TaskGroups {
		var running, alone, sidecars [2]int
		for _, t := range g.Tasks {
			var r [2]int
			if t.Resources != nil {
				r = [2]int{deref(t.Resources.CPU), deref(t.Resources.MemoryMB)}
			}
			switch lc := t.Lifecycle; {
			case lc == nil || lc.Hook == api.TaskLifecycleHookPoststart:
				running[0], running[1] = running[0]+r[0], running[1]+r[1]
			case lc.Hook == api.TaskLifecycleHookPrestart && lc.Sidecar:
				sidecars[0], sidecars[1] = sidecars[0]+r[0], sidecars[1]+r[1]
			default:
				alone[0], alone[1] = max(alone[0], r[0]), max(alone[1], r[1])
			}
		}
		cpuMHz += sidecars[0] + max(running[0], alone[0])
		memoryMB += sidecars[1] + max(running[1], alone[1])
	}
	return cpuMHz, memoryMB
}

// NomadJobJSON renders the job the way `nomad job run -json` and
// `nomad job plan -json` read it: {"Job": {...}}.
func NomadJobJSON(job *api.Job) ([]byte, error) {
	b, err := json.MarshalIndent(struct{ Job *api.Job }{job}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode job: %w", err)
	}
	return append(b, '\n'), nil
}

// FormatCPUs writes a node's cpus as its lab.LabelCPULimit label holds
// them; ParseCPUs reads them back.
func FormatCPUs(cpus float64) string { return strconv.FormatFloat(cpus, 'f', -1, 64) }

// ParseCPUs reads a lab.LabelCPULimit label: a number of cpus in (0, 64].
func ParseCPUs(s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 || v > 64 || math.IsNaN(v) {
		return 0, fmt.Errorf("cpu limit %q is not a number of cpus in (0, 64]", s)
	}
	return v, nil
}

// JobName is the session's Nomad job: exam-{id8}.
func JobName(sessionID string) string { return "exam-" + lab.Short(sessionID) }
