package jobspecs

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const goldenSession = "golden0000s1"

func goldenLab(t *testing.T) lab.Spec {
	t.Helper()
	l, err := lab.NewSpec(exam.Default(), lab.Session{ID: goldenSession, Candidate: "candidate@example.com"})
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
	job, err := NomadJob(goldenLab(t), NomadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	js, err := NomadJobJSON(job)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "default-exam.job.json", js)
	hcl, err := NomadJobHCL(job)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "default-exam.job.hcl", hcl)

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
}

func TestNomadJobShape(t *testing.T) {
	l := goldenLab(t)
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
	for k, want := range map[string]string{MetaSession: goldenSession, MetaExam: "netops-fundamentals", MetaCandidate: "candidate@example.com", MetaManaged: "true"} {
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
	if len(g.Tasks) != len(l.Nodes)+2 {
		t.Fatalf("%d tasks, want %d nodes + prestart + poststop", len(g.Tasks), len(l.Nodes))
	}
	up, down := g.Tasks[0], g.Tasks[len(g.Tasks)-1]
	if up.Name != NomadLabnetUp || up.Lifecycle.Hook != api.TaskLifecycleHookPrestart || up.Driver != "raw_exec" {
		t.Errorf("first task %s %+v %s, want the prestart labnet", up.Name, up.Lifecycle, up.Driver)
	}
	wantArgs := "labnet up -session golden0000s1 -exam netops-fundamentals -subnet-pool 10.77.0.0/16 -subnet-prefix 27"
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
			if c["pids_limit"] != n.PidsLimit || *task.Resources.MemoryMB != n.MemoryMB {
				t.Errorf("pids %v memory %d", c["pids_limit"], *task.Resources.MemoryMB)
			}
			// 0.25 cpus at 2400 MHz per cpu.
			if *task.Resources.CPU != 600 {
				t.Errorf("cpu = %d MHz, want 600", *task.Resources.CPU)
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
		})
	}
}

func TestNomadJobDigestTracksChanges(t *testing.T) {
	l := goldenLab(t)
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
	l.Nodes[0].MemoryMB++
	c, err := NomadJob(l, NomadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Meta[MetaSpec] == a.Meta[MetaSpec] {
		t.Error("changing a node's memory left the digest unchanged")
	}
}

func TestNomadJobRejects(t *testing.T) {
	base := goldenLab(t)
	tests := []struct {
		name string
		edit func(*lab.Spec, *NomadOptions)
		want string
	}{
		{"bad session id", func(l *lab.Spec, _ *NomadOptions) { l.SessionID = "../../etc" }, "invalid session id"},
		{"no nodes", func(l *lab.Spec, _ *NomadOptions) { l.Nodes = nil }, "no nodes"},
		{"relative labnet", func(_ *lab.Spec, o *NomadOptions) { o.Labnet = "bin/examlab" }, "must be absolute"},
		{"node named like a lifecycle task", func(l *lab.Spec, _ *NomadOptions) { l.Nodes[2].Name = NomadLabnetUp }, "is taken"},
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
