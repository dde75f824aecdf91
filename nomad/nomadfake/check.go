package nomadfake

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

var jobIDPattern = regexp.MustCompile(`^exam-[a-z0-9]{8}$`)

// CheckJob lists what is wrong with a lab job as examlab must register it:
// its names and meta, one group that cannot be rescheduled, the labnet
// lifecycle tasks, and nodes docker tasks that are isolated and limited
// (exactly nodes of them; any number from one up when nodes is 0). A flat
// lab's labnet-up is a prestart task and its nodes are on the session
// network; a segmented lab's (one with a poststart task) is a poststart
// task with the lab's plan, and its nodes have no network. An empty list
// means the job is complete and sane.
func CheckJob(job *api.Job, nodes int) []string {
	return checkJob(job, nodes, jobspecs.DefaultMHzPerCPU)
}

// checkJob is CheckJob for clients whose cpus are mhzPerCPU each.
func checkJob(job *api.Job, nodes, mhzPerCPU int) []string {
	var p []string
	bad := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	if job == nil {
		return []string{"no job"}
	}
	id := str(job.ID)
	if !jobIDPattern.MatchString(id) {
		bad("job id %q is not exam-{8 characters}", id)
	}
	if str(job.Name) != id {
		bad("job name %q differs from id %q", str(job.Name), id)
	}
	if str(job.Type) != api.JobTypeService {
		bad("job type %q, want service", str(job.Type))
	}
	if len(job.Datacenters) == 0 {
		bad("no datacenters")
	}
	session := job.Meta[jobspecs.MetaSession]
	if !lab.ValidSessionID(session) || jobspecs.JobName(session) != id {
		bad("meta %s = %q does not name the job's session", jobspecs.MetaSession, session)
	}
	for _, k := range []string{jobspecs.MetaExam, jobspecs.MetaCandidate, jobspecs.MetaSpec, jobspecs.MetaRender} {
		if job.Meta[k] == "" {
			bad("meta %s is missing", k)
		}
	}
	// What an older examlab rendered is checked as that examlab made it.
	render, _ := strconv.Atoi(job.Meta[jobspecs.MetaRender])
	if job.Meta[jobspecs.MetaManaged] != "true" {
		bad("meta %s is not true", jobspecs.MetaManaged)
	}
	if len(job.TaskGroups) != 1 {
		bad("%d task groups, want exactly 1 so the lab lands on one client", len(job.TaskGroups))
		return p
	}
	g := job.TaskGroups[0]
	if g.Count == nil || *g.Count != 1 {
		bad("group count is not 1")
	}
	if rp := g.ReschedulePolicy; rp == nil || num(rp.Attempts) != 0 || (rp.Unlimited != nil && *rp.Unlimited) {
		bad("the group may be rescheduled to another client")
	}
	if rp := g.RestartPolicy; rp == nil || str(rp.Mode) != "fail" || num(rp.Attempts) < 1 {
		bad("the group has no in-place restart policy ending in fail")
	}
	segmented := false
	for _, t := range g.Tasks {
		segmented = segmented || (t.Lifecycle != nil && t.Lifecycle.Hook == api.TaskLifecycleHookPoststart && !t.Lifecycle.Sidecar)
	}
	network, upHook := lab.NetworkName(session), api.TaskLifecycleHookPrestart
	if segmented {
		network, upHook = "none", api.TaskLifecycleHookPoststart
	}
	var up, down, watch, docker int
	var nodeTasks []*api.Task
	for _, t := range g.Tasks {
		switch {
		case t.Lifecycle != nil && t.Lifecycle.Hook == upHook && !t.Lifecycle.Sidecar:
			up++
			checkLabnet(t, "up", session, bad)
			if segmented {
				checkAwait(t, session, bad)
			}
		case t.Lifecycle != nil && t.Lifecycle.Hook == api.TaskLifecycleHookPrestart && t.Lifecycle.Sidecar:
			watch++
			checkLabnet(t, "watch", session, bad)
			args := strings.Join(strList(t.Config["args"]), " ")
			switch {
			case t.Name != jobspecs.NomadLabnetWatch:
				bad("the prestart sidecar is %s, want %s", t.Name, jobspecs.NomadLabnetWatch)
			case segmented && !strings.HasSuffix(args, " -plan ${NOMAD_TASK_DIR}/lab.json -state "+jobspecs.NomadLabnetState):
				bad("labnet task %s runs %q, without -plan ${NOMAD_TASK_DIR}/lab.json -state %s", t.Name, args, jobspecs.NomadLabnetState)
			case !segmented && args != "labnet watch -session "+session:
				bad("a flat lab's labnet task %s runs %q, want labnet watch -session %s", t.Name, args, session)
			}
		case t.Lifecycle != nil && t.Lifecycle.Hook == api.TaskLifecycleHookPoststop:
			down++
			checkLabnet(t, "down", session, bad)
		case t.Lifecycle != nil:
			bad("task %s has unexpected lifecycle %+v", t.Name, *t.Lifecycle)
		default:
			docker++
			checkNode(t, network, segmented, bad)
			if render >= 8 {
				checkNodeLogs(t, bad)
			}
			checkResources(t, mhzPerCPU, bad)
			nodeTasks = append(nodeTasks, t)
		}
	}
	if up != 1 || down != 1 {
		bad("%d %s and %d poststop labnet tasks, want 1 each", up, upHook, down)
	}
	if watch != 1 {
		bad("%d prestart labnet watch sidecars, want 1: the lab's agent, which also wires the nodes of a segmented lab", watch)
	} else if segmented {
		checkPlanNodes(job, nodeTasks, bad)
	}
	switch {
	case nodes > 0 && docker != nodes:
		bad("%d node tasks, want %d", docker, nodes)
	case docker == 0:
		bad("no node tasks")
	}
	checkTools(g.Tasks, segmented, bad)
	return p
}

var toolsPattern = regexp.MustCompile(`^examlab-grader-[0-9a-f]{12}$`)

// checkTools checks the grader's tools: every node mounts the same volume,
// or none does, and the task that fills it before the nodes need it (a
// flat lab's prestart labnet-up, a segmented lab's agent) is given that
// volume and the client's busybox, and no other task is. The filler ships
// its own binary as the nodes' terminal holder, the examlab the job runs:
// no job names another (-grader-holder).
func checkTools(tasks []*api.Task, segmented bool, bad func(string, ...any)) {
	volume, mounted, nodes := "", 0, 0
	for _, t := range tasks {
		if t.Lifecycle != nil {
			continue
		}
		nodes++
		list := mounts(t.Config["mount"])
		if len(list) != 1 {
			continue
		}
		src := fmt.Sprint(list[0]["source"])
		mounted++
		switch {
		case volume == "":
			volume = src
			if !toolsPattern.MatchString(src) {
				bad("node %s mounts the tools volume %q, not examlab-grader-{12 hex digits}", t.Name, src)
			}
		case src != volume:
			bad("node %s mounts the tools volume %s, another node %s: a lab has one", t.Name, src, volume)
		}
	}
	if mounted != 0 && mounted != nodes {
		bad("%d of %d nodes mount the grader's tools: every node has them or none", mounted, nodes)
	}
	filler := jobspecs.NomadLabnetUp
	if segmented {
		filler = jobspecs.NomadLabnetWatch
	}
	for _, t := range tasks {
		if t.Lifecycle == nil {
			continue
		}
		args := strList(t.Config["args"])
		tools, given := flagValue(args, "-grader-tools")
		if _, ok := flagValue(args, "-grader-holder"); ok {
			bad("labnet task %s is given -grader-holder: the tools' holder is the examlab the job runs", t.Name)
		}
		switch {
		case t.Name != filler && given:
			bad("labnet task %s fills the grader's tools; %s does, before the nodes need them", t.Name, filler)
		case t.Name != filler:
		case volume == "" && given:
			bad("labnet task %s fills the tools volume %s, which no node mounts", t.Name, tools)
		case volume != "" && tools != volume:
			bad("labnet task %s fills the tools volume %q, the nodes mount %s", t.Name, tools, volume)
		case volume != "":
			if bb, _ := flagValue(args, "-grader-busybox"); !strings.HasPrefix(bb, "/") {
				bad("labnet task %s fills the tools from busybox %q, not an absolute path", t.Name, bb)
			}
		}
	}
}

// flagValue is the value of flag name in a task's args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == name {
			if i+1 < len(args) {
				return args[i+1], true
			}
			return "", true
		}
	}
	return "", false
}

func checkLabnet(t *api.Task, verb, session string, bad func(string, ...any)) {
	if t.Driver != "raw_exec" {
		bad("labnet task %s uses driver %q, want raw_exec", t.Name, t.Driver)
	}
	cmd, _ := t.Config["command"].(string)
	if !strings.HasPrefix(cmd, "/") {
		bad("labnet task %s command %q is not an absolute path", t.Name, cmd)
	}
	args := strings.Join(strList(t.Config["args"]), " ")
	if !strings.HasPrefix(args, "labnet "+verb+" -session "+session) {
		bad("labnet task %s runs %q, want labnet %s -session %s", t.Name, args, verb, session)
	}
}

// checkAwait checks a segmented lab's labnet-up: it awaits the state the
// lab's agent leaves, and is never restarted.
func checkAwait(t *api.Task, session string, bad func(string, ...any)) {
	if args, want := strings.Join(strList(t.Config["args"]), " "), "labnet up -session "+session+" -await "+jobspecs.NomadLabnetState; args != want {
		bad("labnet task %s runs %q, want %q", t.Name, args, want)
	}
	if r := t.RestartPolicy; r == nil || num(r.Attempts) != 0 {
		bad("labnet task %s may be restarted: the lab's failure would be awaited again", t.Name)
	}
	if len(t.Templates) != 0 {
		bad("labnet task %s has templates; the plan is the lab's agent's", t.Name)
	}
}

// checkPlanNodes checks a segmented lab's plan, which the one template of
// its agent writes: it is the lab the job's node tasks are.
func checkPlanNodes(job *api.Job, nodes []*api.Task, bad func(string, ...any)) {
	plan, err := jobPlan(job)
	if err != nil {
		bad("%v", err)
		return
	}
	if plan.SessionID != job.Meta[jobspecs.MetaSession] || plan.ExamID != job.Meta[jobspecs.MetaExam] || !plan.Segmented() {
		bad("the plan is session %q exam %q with %d segments, not the job's segmented lab", plan.SessionID, plan.ExamID, len(plan.Segments))
	}
	if len(plan.Nodes) != len(nodes) {
		bad("the plan has %d nodes, the job %d node tasks", len(plan.Nodes), len(nodes))
		return
	}
	for i, n := range plan.Nodes {
		task := nodes[i]
		c := task.Config
		var caps []string
		for _, cp := range n.CapAdd {
			caps = append(caps, strings.ToLower(strings.TrimPrefix(strings.ToUpper(cp), "CAP_")))
		}
		sys := strMap(c["sysctl"])
		sameSys := true
		for k, v := range n.Sysctls {
			sameSys = sameSys && sys[k] == v
		}
		image, _ := c["image"].(string)
		if n.Name != task.Name || n.Image != image || n.Hostname != c["hostname"] || n.MemoryMB != memoryLimit(task) ||
			n.PidsLimit != number(c["pids_limit"]) || strings.Join(caps, ",") != strings.Join(strList(c["cap_add"]), ",") || !sameSys {
			bad("the plan's node %d (%s) differs from task %s", i, n.Name, task.Name)
		}
	}
}

// jobPlan decodes the plan a segmented lab's labnet-up is given, checking
// that its template writes it as it is.
func jobPlan(job *api.Job) (lab.Spec, error) {
	var watch *api.Task
	for _, t := range job.TaskGroups[0].Tasks {
		if t.Name == jobspecs.NomadLabnetWatch {
			watch = t
		}
	}
	if watch == nil || len(watch.Templates) != 1 {
		return lab.Spec{}, fmt.Errorf("labnet-watch has no plan template")
	}
	tmpl := watch.Templates[0]
	data, left, right := str(tmpl.EmbeddedTmpl), str(tmpl.LeftDelim), str(tmpl.RightDelim)
	switch {
	case str(tmpl.DestPath) != jobspecs.NomadPlan || str(tmpl.ChangeMode) != "noop":
		return lab.Spec{}, fmt.Errorf("the plan template writes %q with change mode %q, want %s and noop", str(tmpl.DestPath), str(tmpl.ChangeMode), jobspecs.NomadPlan)
	case left == "" || right == "" || left == "{{" || strings.Contains(data, left) || strings.Contains(data, right):
		return lab.Spec{}, fmt.Errorf("the plan template's delimiters %q %q may occur in the plan, which would be read as a template", left, right)
	}
	var plan lab.Spec
	if err := json.Unmarshal([]byte(data), &plan); err != nil {
		return lab.Spec{}, fmt.Errorf("the plan is not a lab spec: %v", err)
	}
	return plan, nil
}

func checkNode(t *api.Task, network string, segmented bool, bad func(string, ...any)) {
	c := t.Config
	if t.Driver != "docker" {
		bad("node %s uses driver %q, want docker", t.Name, t.Driver)
	}
	if s, _ := c["image"].(string); s == "" {
		bad("node %s has no image", t.Name)
	}
	if b, ok := c["force_pull"].(bool); !ok || b {
		bad("node %s may pull its image (force_pull must be false: no registry)", t.Name)
	}
	if c["network_mode"] != network {
		bad("node %s network_mode %v, want %s", t.Name, c["network_mode"], network)
	}
	if segmented {
		if a, ok := c["network_aliases"]; ok {
			bad("node %s has network_aliases %v but no network", t.Name, a)
		}
		sys := strMap(c["sysctl"])
		for k := range lab.NoIPv6() {
			if _, ok := sys[k]; !ok {
				bad("node %s does not set %s: it would get IPv6 addresses the exam never gave", t.Name, k)
			}
		}
	} else if a := strList(c["network_aliases"]); len(a) != 1 || a[0] != t.Name {
		bad("node %s network_aliases %v, want [%s]", t.Name, a, t.Name)
	}
	if c["hostname"] != t.Name {
		bad("node %s hostname %v", t.Name, c["hostname"])
	}
	if d := strList(c["cap_drop"]); len(d) != 1 || d[0] != "all" {
		bad("node %s cap_drop %v, want [all]", t.Name, d)
	}
	for _, k := range []string{"privileged", "ports", "volumes", "mounts", "network_mode_host", "ipc_mode", "pid_mode"} {
		if _, ok := c[k]; ok {
			bad("node %s sets %s", t.Name, k)
		}
	}
	// The one mount a node may have is the grader's tools, read-only.
	if m, ok := c["mount"]; ok {
		list := mounts(m)
		if len(list) != 1 || list[0]["type"] != "volume" || list[0]["target"] != jobspecs.GraderToolsTarget ||
			list[0]["readonly"] != true || !strings.HasPrefix(fmt.Sprint(list[0]["source"]), "examlab-grader-") || len(list[0]) != 4 {
			bad("node %s mounts %v; the only mount allowed is the grader's tools volume, read-only at %s", t.Name, m, jobspecs.GraderToolsTarget)
		}
	}
	if number(c["pids_limit"]) <= 0 {
		bad("node %s has no pids_limit", t.Name)
	}
}

// checkNodeLogs: from render version 8 on, Nomad collects none of a node's logs (two plugin
// processes fewer per node), and the node's engine keeps them in a
// json-file log the task bounds, which the lab's agent reads.
func checkNodeLogs(t *api.Task, bad func(string, ...any)) {
	if lc := t.LogConfig; lc == nil || lc.Disabled == nil || !*lc.Disabled {
		bad("node %s has Nomad collect its logs: its engine keeps them (logs { disabled = true })", t.Name)
	}
	list := mounts(t.Config["logging"])
	if len(list) != 1 || list[0]["type"] != "json-file" {
		bad("node %s logging %v, want one json-file logging block", t.Name, t.Config["logging"])
		return
	}
	cfg := strMap(list[0]["config"])
	size, files := cfg["max-size"], cfg["max-file"]
	if n, err := strconv.Atoi(files); size == "" || err != nil || n < 1 {
		bad("node %s keeps unbounded logs: logging config %v lacks max-size and max-file", t.Name, list[0]["config"])
	}
}

// memoryLimit is the memory a node task is held to: memory_max, else what
// it reserves.
func memoryLimit(t *api.Task) int {
	if t.Resources == nil {
		return 0
	}
	if t.Resources.MemoryMaxMB != nil {
		return *t.Resources.MemoryMaxMB
	}
	return num(t.Resources.MemoryMB)
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func num(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// strList reads a string list from a task config, as decoded from JSON
// ([]any) or as built in Go ([]string).
func strList(v any) []string {
	switch v := v.(type) {
	case []string:
		return v
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, _ := e.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

// strMap reads a string map from a task config.
func strMap(v any) map[string]string {
	switch v := v.(type) {
	case map[string]string:
		return v
	case []map[string]string:
		out := map[string]string{}
		for _, m := range v {
			for k, e := range m {
				out[k] = e
			}
		}
		return out
	case map[string]any:
		out := make(map[string]string, len(v))
		for k, e := range v {
			s, _ := e.(string)
			out[k] = s
		}
		return out
	case []any:
		// HCL1-style list of one map.
		out := map[string]string{}
		for _, m := range v {
			for k, e := range strMap(m) {
				out[k] = e
			}
		}
		return out
	}
	return nil
}

// mounts reads a task config's mount blocks, as decoded from JSON ([]any
// of map[string]any) or as built in Go.
func mounts(v any) []map[string]any {
	switch v := v.(type) {
	case []map[string]any:
		return v
	case []any:
		out := make([]map[string]any, 0, len(v))
		for _, e := range v {
			m, _ := e.(map[string]any)
			out = append(out, m)
		}
		return out
	}
	return nil
}

// number reads a number from a task config (float64 after JSON).
func number(v any) int {
	switch v := v.(type) {
	case int:
		return v
	case float64:
		return int(v)
	}
	return 0
}
