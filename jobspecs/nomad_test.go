package jobspecs

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"text/template"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const goldenSession = "golden0000s1"

// goldenTools stands for the grader's tools volume of some busybox.
const goldenTools = "examlab-grader-0123456789ab"

// Exams the tests render, in testdata/: a flat lab of two nodes, and a
// segmented lab of four on three segments.
const (
	flatExam      = "flat.exam.yaml"
	segmentedExam = "segmented.exam.yaml"
)

func goldenLab(t *testing.T, file string) lab.Spec {
	t.Helper()
	ex, err := exam.Load(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	l, err := lab.NewSpec(ex, lab.Session{ID: goldenSession, Candidate: "candidate@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// golden compares got with testdata/name, or rewrites the file under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run `go test ./jobspecs -update` to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the rendered job; if the change is intended, run `go test ./jobspecs -update`\n--- got\n%s", path, got)
	}
}

func TestNomadJobGolden(t *testing.T) {
	tools := NomadOptions{GraderTools: goldenTools}
	tests := []struct {
		exam, golden string
		opts         NomadOptions
	}{
		{flatExam, "flat.job", NomadOptions{}},
		{segmentedExam, "segmented.job", NomadOptions{}},
		{flatExam, "flat-tools.job", tools},
		{segmentedExam, "segmented-tools.job", tools},
	}
	for _, tc := range tests {
		t.Run(tc.golden, func(t *testing.T) {
			job, err := NomadJob(goldenLab(t, tc.exam), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			js, err := NomadJobJSON(job)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.golden+".json", js)
			hcl, err := NomadJobHCL(job)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.golden+".hcl", hcl)

			// The JSON reads back into the same job, as `nomad job run -json` reads it.
			var back struct{ Job *api.Job }
			if err := json.Unmarshal(js, &back); err != nil {
				t.Fatalf("decode rendered job: %v", err)
			}
			sum, err := NomadJobDigest(back.Job)
			if err != nil {
				t.Fatal(err)
			}
			if sum != job.Meta[MetaSpec] {
				t.Errorf("digest of the decoded job = %s, want %s", sum, job.Meta[MetaSpec])
			}
		})
	}
}

func TestNomadJobShape(t *testing.T) {
	l := goldenLab(t, flatExam)
	job, err := NomadJob(l, NomadOptions{Datacenters: []string{"dc-a", "dc-b"}, Labnet: "/opt/examlab/bin/examlab",
		SubnetPool: "10.77.0.0/16", SubnetPrefix: 27, MHzPerCPU: 2400, Namespace: "exams"})
	if err != nil {
		t.Fatal(err)
	}
	if *job.ID != "exam-golden00" || *job.Name != *job.ID {
		t.Errorf("job id/name = %s/%s, want exam-golden00", *job.ID, *job.Name)
	}
	if *job.Namespace != "exams" || strings.Join(job.Datacenters, ",") != "dc-a,dc-b" {
		t.Errorf("namespace %s datacenters %v", *job.Namespace, job.Datacenters)
	}
	for k, want := range map[string]string{MetaSession: goldenSession, MetaExam: "flat-lab", MetaCandidate: "candidate@example.com",
		MetaManaged: "true", MetaRender: "8"} {
		if job.Meta[k] != want {
			t.Errorf("meta %s = %q, want %q", k, job.Meta[k], want)
		}
	}
	if len(job.TaskGroups) != 1 {
		t.Fatalf("%d task groups, want 1", len(job.TaskGroups))
	}
	g := job.TaskGroups[0]
	if *g.Count != 1 || *g.ReschedulePolicy.Attempts != 0 || *g.ReschedulePolicy.Unlimited || *g.RestartPolicy.Mode != "fail" {
		t.Errorf("group count/reschedule/restart not as chosen: %+v %+v %+v", *g.Count, g.ReschedulePolicy, g.RestartPolicy)
	}
	if len(g.Tasks) != len(l.Nodes)+3 {
		t.Fatalf("%d tasks, want %d nodes + prestart + watch + poststop", len(g.Tasks), len(l.Nodes))
	}
	up, watch, down := g.Tasks[0], g.Tasks[len(g.Tasks)-2], g.Tasks[len(g.Tasks)-1]
	if watch.Name != NomadLabnetWatch || watch.Driver != "raw_exec" || watch.Lifecycle == nil ||
		watch.Lifecycle.Hook != api.TaskLifecycleHookPrestart || !watch.Lifecycle.Sidecar {
		t.Errorf("task %s %s %+v, want labnet-watch as a prestart raw_exec sidecar, the lab's agent", watch.Name, watch.Driver, watch.Lifecycle)
	}
	if got := strings.Join(watch.Config["args"].([]string), " "); got != "labnet watch -session golden0000s1" || watch.Config["command"] != "/opt/examlab/bin/examlab" {
		t.Errorf("labnet-watch runs %v %q, want labnet watch -session golden0000s1 with nothing to rewire", watch.Config["command"], got)
	}
	if up.Name != NomadLabnetUp || up.Lifecycle.Hook != api.TaskLifecycleHookPrestart || up.Driver != "raw_exec" {
		t.Errorf("first task %s %+v %s, want the prestart labnet", up.Name, up.Lifecycle, up.Driver)
	}
	wantArgs := "labnet up -session golden0000s1 -exam flat-lab -subnet-pool 10.77.0.0/16 -subnet-prefix 27"
	if got := strings.Join(up.Config["args"].([]string), " "); got != wantArgs || up.Config["command"] != "/opt/examlab/bin/examlab" {
		t.Errorf("prestart runs %v %q, want %q", up.Config["command"], got, wantArgs)
	}
	if down.Name != NomadLabnetDown || down.Lifecycle.Hook != api.TaskLifecycleHookPoststop {
		t.Errorf("last task %s %+v, want the poststop labnet", down.Name, down.Lifecycle)
	}
	for i, n := range l.Nodes {
		task := g.Tasks[i+1]
		t.Run(n.Name, func(t *testing.T) {
			c := task.Config
			if task.Name != n.Name || task.Driver != "docker" {
				t.Fatalf("task %s driver %s", task.Name, task.Driver)
			}
			if c["network_mode"] != "exam-golden00-net" || c["hostname"] != n.Name || c["force_pull"] != false {
				t.Errorf("network_mode %v hostname %v force_pull %v", c["network_mode"], c["hostname"], c["force_pull"])
			}
			if a := c["network_aliases"].([]string); len(a) != 1 || a[0] != n.Name {
				t.Errorf("aliases %v", a)
			}
			if d := c["cap_drop"].([]string); len(d) != 1 || d[0] != "all" {
				t.Errorf("cap_drop %v", d)
			}
			// The exam reserves 48 MB of a 128 MB limit, and 0.1 of its
			// 0.25 cpus: 240 MHz at 2400 MHz per cpu.
			if r := task.Resources; c["pids_limit"] != n.PidsLimit || *r.MemoryMB != 48 || r.MemoryMaxMB == nil || *r.MemoryMaxMB != n.MemoryMB {
				t.Errorf("pids %v memory %d max %v, want %d reserving 48 MB up to %d", c["pids_limit"], *r.MemoryMB, r.MemoryMaxMB, n.PidsLimit, n.MemoryMB)
			}
			if *task.Resources.CPU != 240 {
				t.Errorf("cpu = %d MHz, want 240", *task.Resources.CPU)
			}
			if c["cpu_hard_limit"] != false {
				t.Errorf("cpu_hard_limit %v: the node would be held to the CPU it reserves", c["cpu_hard_limit"])
			}
			if got := c["labels"].([]map[string]string)[0][lab.LabelCPULimit]; got != "0.25" {
				t.Errorf("cpu limit label %q, want 0.25 for the lab's agent to apply", got)
			}
			caps := strings.Join(c["cap_add"].([]string), ",")
			if strings.Contains(caps, "CAP_") || strings.ToLower(caps) != caps {
				t.Errorf("cap_add %s must be lower case without CAP_", caps)
			}
			if n.Role == "gateway" && !strings.Contains(caps, "net_admin") {
				t.Errorf("gateway %s lacks net_admin: %s", n.Name, caps)
			}
			if labels := c["labels"].([]map[string]string)[0]; labels[lab.LabelManaged] != "" || labels[lab.LabelSession] != goldenSession {
				t.Errorf("labels %v: want the session and no %s", labels, lab.LabelManaged)
			}
			// Nomad collects none of a node's logs; the engine keeps them,
			// bounded, for the lab's agent to read.
			if lc := task.LogConfig; lc == nil || lc.Disabled == nil || !*lc.Disabled {
				t.Errorf("log config %+v: Nomad would start two log plugins for the node", lc)
			}
			want := []map[string]any{{"type": "json-file", "config": []map[string]string{{"max-size": "5m", "max-file": "2"}}}}
			if !reflect.DeepEqual(c["logging"], want) {
				t.Errorf("logging %v, want %v", c["logging"], want)
			}
		})
	}
	for _, task := range []*api.Task{up, watch, down} {
		if lc := task.LogConfig; lc == nil || (lc.Disabled != nil && *lc.Disabled) {
			t.Errorf("%s log config %+v: the runtime reads what it wrote to stderr", task.Name, lc)
		}
	}
}

func TestNomadJobSegmentedShape(t *testing.T) {
	l := goldenLab(t, segmentedExam)
	job, err := NomadJob(l, NomadOptions{Labnet: "/opt/examlab/bin/examlab", SubnetPool: "10.77.0.0/16", SubnetPrefix: 27})
	if err != nil {
		t.Fatal(err)
	}
	if job.Meta[MetaRender] != strconv.Itoa(NomadRenderVersion) {
		t.Errorf("render version %s, want %d", job.Meta[MetaRender], NomadRenderVersion)
	}
	g := job.TaskGroups[0]
	if len(g.Tasks) != len(l.Nodes)+3 {
		t.Fatalf("%d tasks, want %d nodes + labnet-up + labnet-watch + labnet-down", len(g.Tasks), len(l.Nodes))
	}
	for i, n := range l.Nodes {
		task := g.Tasks[i]
		t.Run(n.Name, func(t *testing.T) {
			c := task.Config
			if task.Name != n.Name || task.Lifecycle != nil || c["network_mode"] != "none" {
				t.Fatalf("task %s lifecycle %+v network_mode %v, want node %s with no network", task.Name, task.Lifecycle, c["network_mode"], n.Name)
			}
			if _, ok := c["network_aliases"]; ok {
				t.Errorf("network_aliases %v on a node with no network", c["network_aliases"])
			}
			sys := c["sysctl"].([]map[string]string)[0]
			for k, v := range n.Sysctls {
				if sys[k] != v {
					t.Errorf("sysctl %s = %q, want the node's own %q", k, sys[k], v)
				}
			}
			if _, own := n.Sysctls["net.ipv6.conf.all.disable_ipv6"]; !own && sys["net.ipv6.conf.all.disable_ipv6"] != "1" {
				t.Errorf("sysctls %v leave IPv6 on", sys)
			}
			if sys["net.ipv6.conf.default.disable_ipv6"] != "1" {
				t.Errorf("sysctls %v leave IPv6 on for new interfaces", sys)
			}
		})
	}
	up, watch, down := g.Tasks[len(l.Nodes)], g.Tasks[len(l.Nodes)+1], g.Tasks[len(l.Nodes)+2]
	if up.Name != NomadLabnetUp || up.Driver != "raw_exec" || up.Lifecycle == nil ||
		up.Lifecycle.Hook != api.TaskLifecycleHookPoststart || up.Lifecycle.Sidecar {
		t.Errorf("task %s %s %+v, want labnet-up as a poststart raw_exec task, not a sidecar", up.Name, up.Driver, up.Lifecycle)
	}
	// labnet-up awaits what the lab's agent leaves; the pool is the flat
	// network's: a segmented lab takes nothing from it.
	wantArgs := "labnet up -session golden0000s1 -await ${NOMAD_ALLOC_DIR}/labnet.json"
	if got := strings.Join(up.Config["args"].([]string), " "); got != wantArgs {
		t.Errorf("labnet-up runs %q, want %q", got, wantArgs)
	}
	if watch.Name != NomadLabnetWatch || watch.Driver != "raw_exec" || watch.Lifecycle == nil ||
		watch.Lifecycle.Hook != api.TaskLifecycleHookPrestart || !watch.Lifecycle.Sidecar {
		t.Errorf("task %s %s %+v, want labnet-watch as a prestart raw_exec sidecar: it wires the nodes as they start", watch.Name, watch.Driver, watch.Lifecycle)
	}
	// The agent wires from the plan and leaves the state where up awaits it.
	wantWatch := "labnet watch -session golden0000s1 -exam segmented-lab -plan ${NOMAD_TASK_DIR}/lab.json -state ${NOMAD_ALLOC_DIR}/labnet.json"
	if got := strings.Join(watch.Config["args"].([]string), " "); got != wantWatch {
		t.Errorf("labnet-watch runs %q, want %q", got, wantWatch)
	}
	if r := up.RestartPolicy; r == nil || *r.Attempts != 0 || *r.Mode != "fail" {
		t.Errorf("labnet-up restart policy %+v, want none: a lab that failed is not awaited again", r)
	}
	if len(up.Templates) != 0 || len(watch.Templates) != 1 {
		t.Fatalf("labnet-up has %d templates and labnet-watch %d, want the plan on the watch alone", len(up.Templates), len(watch.Templates))
	}
	tmpl := watch.Templates[0]
	if *tmpl.DestPath != NomadPlan || *tmpl.ChangeMode != "noop" {
		t.Errorf("template to %s change mode %s", *tmpl.DestPath, *tmpl.ChangeMode)
	}
	t.Run("the plan reaches the file as it is", func(t *testing.T) {
		// What the client's template runner does with it.
		tt, err := template.New("plan").Delims(*tmpl.LeftDelim, *tmpl.RightDelim).Parse(*tmpl.EmbeddedTmpl)
		if err != nil {
			t.Fatalf("parse the plan as a template: %v", err)
		}
		var out bytes.Buffer
		if err := tt.Execute(&out, nil); err != nil {
			t.Fatal(err)
		}
		if out.String() != *tmpl.EmbeddedTmpl {
			t.Errorf("the rendered plan differs from the plan:\n%s", out.String())
		}
		var back lab.Spec
		if err := json.Unmarshal(out.Bytes(), &back); err != nil {
			t.Fatalf("decode the plan: %v", err)
		}
		if !reflect.DeepEqual(back, l) {
			t.Errorf("the plan decodes to\n%+v\nwant\n%+v", back, l)
		}
		if !strings.Contains(back.Nodes[0].Files[0].Content, "{{ .Lab }} at ${HOME}") {
			t.Errorf("tokyo's file came through as %q", back.Nodes[0].Files[0].Content)
		}
	})
	if down.Name != NomadLabnetDown || down.Lifecycle.Hook != api.TaskLifecycleHookPoststop ||
		strings.Join(down.Config["args"].([]string), " ") != "labnet down -session golden0000s1" {
		t.Errorf("last task %s %+v %v, want the poststop labnet down", down.Name, down.Lifecycle, down.Config["args"])
	}
}

func TestNomadJobDigestTracksChanges(t *testing.T) {
	l := goldenLab(t, segmentedExam)
	a, err := NomadJob(l, NomadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NomadJob(l, NomadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Meta[MetaSpec] != b.Meta[MetaSpec] {
		t.Errorf("two renders of one lab differ: %s %s", a.Meta[MetaSpec], b.Meta[MetaSpec])
	}
	for _, tc := range []struct {
		name string
		edit func(*lab.Spec)
	}{
		{"a node's memory", func(l *lab.Spec) { l.Nodes[0].MemoryMB++ }},
		// Only the plan carries these: the digest must cover it.
		{"a node's setup", func(l *lab.Spec) { l.Nodes[3].Setup += "true\n" }},
		{"a route", func(l *lab.Spec) { l.Nodes[0].Routes = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := l
			c.Nodes = append([]lab.Node(nil), l.Nodes...)
			tc.edit(&c)
			job, err := NomadJob(c, NomadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if job.Meta[MetaSpec] == a.Meta[MetaSpec] {
				t.Error("the digest did not change")
			}
		})
	}
}

func TestNomadJobRejects(t *testing.T) {
	base := goldenLab(t, flatExam)
	tests := []struct {
		name string
		edit func(*lab.Spec, *NomadOptions)
		want string
	}{
		{"bad session id", func(l *lab.Spec, _ *NomadOptions) { l.SessionID = "../../etc" }, "invalid session id"},
		{"no nodes", func(l *lab.Spec, _ *NomadOptions) { l.Nodes = nil }, "no nodes"},
		{"relative labnet", func(_ *lab.Spec, o *NomadOptions) { o.Labnet = "bin/examlab" }, "must be absolute"},
		{"node named like a lifecycle task", func(l *lab.Spec, _ *NomadOptions) { l.Nodes[1].Name = NomadLabnetUp }, "is taken"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := base
			l.Nodes = append([]lab.Node(nil), base.Nodes...)
			var o NomadOptions
			tc.edit(&l, &o)
			_, err := NomadJob(l, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestHCLQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", `"plain"`},
		{`say "hi"`, `"say \"hi\""`},
		{"${HOME}", `"$${HOME}"`},
		{"%{ if }", `"%%{ if }"`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			if got := quote(tc.in); got != tc.want {
				t.Errorf("quote(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}

// TestNomadJobGraderTools: with the grader's tools, every node mounts
// their volume read-only at /.examlab, labnet-up is told which volume to
// fill from which busybox, and the job says it is rendered for it; without,
// nothing of it appears and flat and segmented jobs render as before.
func TestNomadJobGraderTools(t *testing.T) {
	for _, file := range []string{flatExam, segmentedExam} {
		l := goldenLab(t, file)
		t.Run(l.ExamID, func(t *testing.T) {
			job, err := NomadJob(l, NomadOptions{GraderTools: goldenTools, GraderBusybox: "/usr/local/bin/busybox"})
			if err != nil {
				t.Fatal(err)
			}
			wantTools := "8"
			if job.Meta[MetaRender] != wantTools {
				t.Errorf("render version %s, want %s", job.Meta[MetaRender], wantTools)
			}
			nodes := 0
			for _, task := range job.TaskGroups[0].Tasks {
				switch {
				case task.Name == NomadLabnetUp && !l.Segmented(), task.Name == NomadLabnetWatch && l.Segmented():
					// Whichever runs before the nodes' setups: a flat lab's
					// prestart labnet-up, a segmented lab's agent.
					args := strings.Join(task.Config["args"].([]string), " ")
					if !strings.Contains(args, " -grader-tools "+goldenTools+" -grader-busybox /usr/local/bin/busybox") {
						t.Errorf("%s runs %q, without the tools to fill", task.Name, args)
					}
				case task.Driver == "docker":
					nodes++
					m, _ := task.Config["mount"].([]map[string]any)
					want := map[string]any{"type": "volume", "target": "/.examlab", "source": goldenTools, "readonly": true}
					if len(m) != 1 || !reflect.DeepEqual(m[0], want) {
						t.Errorf("node %s mounts %v, want only %v", task.Name, m, want)
					}
				default:
					if _, ok := task.Config["mount"]; ok {
						t.Errorf("lifecycle task %s mounts the tools", task.Name)
					}
				}
			}
			if nodes != len(l.Nodes) {
				t.Errorf("%d node tasks, want %d", nodes, len(l.Nodes))
			}

			plain, err := NomadJob(l, NomadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want := "8"
			if plain.Meta[MetaRender] != want {
				t.Errorf("without tools the job is render version %s, want %s", plain.Meta[MetaRender], want)
			}
			for _, task := range plain.TaskGroups[0].Tasks {
				if _, ok := task.Config["mount"]; ok || strings.Contains(fmt.Sprint(task.Config["args"]), "grader") {
					t.Errorf("without tools task %s still has them: %v", task.Name, task.Config)
				}
			}
		})
	}
	for _, bad := range []NomadOptions{{GraderTools: "my-volume"}, {GraderTools: goldenTools, GraderBusybox: "busybox"}} {
		if _, err := NomadJob(goldenLab(t, flatExam), bad); err == nil {
			t.Errorf("rendered a job with %+v", bad)
		}
	}
}

// TestNomadJobResources checks what each task reserves for placement and
// what it is held to: a node reserves its exam's reserve (the segmented
// exam sets none, so the built-in one), its memory limit is memory_max and
// its CPU limit a label for the lab's agent; on a cluster without memory
// oversubscription every task reserves its whole memory limit instead.
func TestNomadJobResources(t *testing.T) {
	type res struct {
		cpu, memory, memoryMax int
		limit                  string
	}
	tests := []struct {
		name   string
		exam   string
		opts   NomadOptions
		node   res
		labnet res
	}{
		{"the exam's reserve", flatExam, NomadOptions{}, res{100, 48, 128, "0.25"}, res{labnetCPU, labnetMemory, labnetMemoryMax, ""}},
		{"the built-in reserve", segmentedExam, NomadOptions{}, res{50, 32, 128, "0.25"}, res{labnetCPU, labnetMemory, labnetMemoryMax, ""}},
		{"at the clients' clock", segmentedExam, NomadOptions{MHzPerCPU: 2100}, res{105, 32, 128, "0.25"}, res{labnetCPU, labnetMemory, labnetMemoryMax, ""}},
		{"no memory oversubscription", flatExam, NomadOptions{NoMemoryOversubscription: true}, res{100, 128, 0, "0.25"}, res{labnetCPU, labnetMemoryFixed, 0, ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := goldenLab(t, tc.exam)
			job, err := NomadJob(l, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			nodes := 0
			for _, task := range job.TaskGroups[0].Tasks {
				r := task.Resources
				got := res{cpu: *r.CPU, memory: *r.MemoryMB}
				if r.MemoryMaxMB != nil {
					got.memoryMax = *r.MemoryMaxMB
				}
				want := tc.labnet
				if task.Driver == "docker" {
					nodes++
					want = tc.node
					got.limit = task.Config["labels"].([]map[string]string)[0][lab.LabelCPULimit]
					if task.Config["cpu_hard_limit"] != false {
						t.Errorf("%s: cpu_hard_limit %v, want false", task.Name, task.Config["cpu_hard_limit"])
					}
				}
				if got != want {
					t.Errorf("%s: %+v, want %+v", task.Name, got, want)
				}
			}
			if nodes != len(l.Nodes) {
				t.Errorf("%d nodes, want %d", nodes, len(l.Nodes))
			}
		})
	}
}

func TestParseCPUs(t *testing.T) {
	for _, v := range []float64{0.25, 1, 0.05, 16} {
		got, err := ParseCPUs(FormatCPUs(v))
		if err != nil || got != v {
			t.Errorf("ParseCPUs(FormatCPUs(%g)) = %g, %v", v, got, err)
		}
	}
	for _, bad := range []string{"", "0", "-1", "NaN", "1e9", "a quarter"} {
		if _, err := ParseCPUs(bad); err == nil {
			t.Errorf("ParseCPUs(%q) accepted", bad)
		}
	}
}

// TestNomadReservedShippedExam: what one lab of the shipped exam reserves
// on a client, the figure the README's capacity table divides by.
func TestNomadReservedShippedExam(t *testing.T) {
	l, err := lab.NewSpec(exam.Default(), lab.Session{ID: goldenSession})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		opts     NomadOptions
		cpu, mem int
	}{
		// Eight nodes of 50 MHz and 32 MB, and labnet-up and labnet-watch
		// (20 MHz, 32 MB each) beside them; labnet-down runs alone.
		{"memory oversubscription on", NomadOptions{}, 8*50 + 2*labnetCPU, 8*32 + 2*labnetMemory},
		// Every node reserves its limit: 128 MB, phoenix 256.
		{"memory oversubscription off", NomadOptions{NoMemoryOversubscription: true}, 8*50 + 2*labnetCPU, 7*128 + 256 + 2*labnetMemoryFixed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			job, err := NomadJob(l, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if cpu, mem := NomadReserved(job); cpu != tc.cpu || mem != tc.mem {
				t.Errorf("the lab reserves %d MHz and %d MB, want %d and %d", cpu, mem, tc.cpu, tc.mem)
			}
		})
	}
}
