package nomadfake

import (
	"strings"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// TestCheckJobGraderTools: a lab job's nodes may mount the grader's tools
// volume read-only at /.examlab, and nothing else.
func TestCheckJobGraderTools(t *testing.T) {
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: "checkjob0001", Candidate: "c"})
	if err != nil {
		t.Fatal(err)
	}
	const tools = "examlab-grader-0123456789ab"
	for _, tc := range []struct {
		name string
		edit func(mount map[string]any)
		want string // in the problems; "" for none
	}{
		{"the tools, read-only", func(map[string]any) {}, ""},
		{"writable", func(m map[string]any) { m["readonly"] = false }, "the only mount allowed"},
		{"elsewhere", func(m map[string]any) { m["target"] = "/usr/local/bin" }, "the only mount allowed"},
		{"a host path", func(m map[string]any) { m["type"], m["source"] = "bind", "/" }, "the only mount allowed"},
		{"another volume", func(m map[string]any) { m["source"] = "secrets" }, "the only mount allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job, err := jobspecs.NomadJob(spec, jobspecs.NomadOptions{GraderTools: tools})
			if err != nil {
				t.Fatal(err)
			}
			for _, task := range job.TaskGroups[0].Tasks {
				if m, ok := task.Config["mount"].([]map[string]any); ok {
					tc.edit(m[0])
				}
			}
			got := strings.Join(CheckJob(job, len(spec.Nodes)), "\n")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("problems:\n%s\nwant %q", got, tc.want)
			}
		})
	}
}

// TestCheckJobToolsFiller: the task that fills the grader's tools before
// the nodes need them (a flat lab's labnet-up, a segmented lab's agent)
// fills the one volume every node mounts, from its own binary; a job that
// says otherwise is refused, whatever its lab's shape.
func TestCheckJobToolsFiller(t *testing.T) {
	const tools = "examlab-grader-0123456789ab"
	flat, err := lab.NewSpec(exam.Default(), lab.Session{ID: "checkjob0002", Candidate: "c"})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := exam.Load("../testdata/three-segments.yaml")
	if err != nil {
		t.Fatal(err)
	}
	segmented, err := lab.NewSpec(ex, lab.Session{ID: "checkjob0003", Candidate: "c"})
	if err != nil {
		t.Fatal(err)
	}
	// args edits the args of the task named task ("" for the filler).
	args := func(task string, edit func([]string) []string) func(*api.Job, string) {
		return func(job *api.Job, filler string) {
			if task == "" {
				task = filler
			}
			for _, tk := range job.TaskGroups[0].Tasks {
				if tk.Name == task {
					tk.Config["args"] = edit(append([]string(nil), tk.Config["args"].([]string)...))
				}
			}
		}
	}
	replace := func(from, to string) func([]string) []string {
		return func(a []string) []string {
			for i := range a {
				if a[i] == from {
					a[i] = to
				}
			}
			return a
		}
	}
	// node edits the mount of the lab's first node.
	node := func(edit func(tk *api.Task)) func(*api.Job, string) {
		return func(job *api.Job, _ string) {
			for _, tk := range job.TaskGroups[0].Tasks {
				if tk.Lifecycle == nil {
					edit(tk)
					return
				}
			}
		}
	}
	for _, tc := range []struct {
		name  string
		tools string
		edit  func(job *api.Job, filler string)
		want  string // in the problems; "" for none
	}{
		{"with the tools", tools, func(*api.Job, string) {}, ""},
		{"without", "", func(*api.Job, string) {}, ""},
		{"the filler fills another volume", tools, args("", replace(tools, "examlab-grader-ba9876543210")), "the nodes mount " + tools},
		{"a node mounts another volume", tools, node(func(tk *api.Task) {
			tk.Config["mount"].([]map[string]any)[0]["source"] = "examlab-grader-ba9876543210"
		}), "a lab has one"},
		{"a node without the tools", tools, node(func(tk *api.Task) { delete(tk.Config, "mount") }), "every node has them or none"},
		{"a volume not named by digest", tools, func(job *api.Job, filler string) {
			for _, tk := range job.TaskGroups[0].Tasks {
				if m, ok := tk.Config["mount"].([]map[string]any); ok {
					m[0]["source"] = "examlab-grader-mine"
				}
			}
			args("", replace(tools, "examlab-grader-mine"))(job, filler)
		}, "not examlab-grader-{12 hex digits}"},
		{"the holder named by the job", tools, args("", func(a []string) []string { return append(a, "-grader-holder", "/tmp/x") }), "-grader-holder"},
		{"labnet-down fills", tools, args(jobspecs.NomadLabnetDown, func(a []string) []string { return append(a, "-grader-tools", tools) }), "fills the grader's tools"},
		{"tools no node mounts", "", args("", func(a []string) []string { return append(a, "-grader-tools", tools) }), "which no node mounts"},
	} {
		for _, spec := range []lab.Spec{flat, segmented} {
			filler := jobspecs.NomadLabnetUp
			if spec.Segmented() {
				filler = jobspecs.NomadLabnetWatch
			}
			t.Run(tc.name+"/"+filler, func(t *testing.T) {
				job, err := jobspecs.NomadJob(spec, jobspecs.NomadOptions{GraderTools: tc.tools})
				if err != nil {
					t.Fatal(err)
				}
				tc.edit(job, filler)
				got := strings.Join(CheckJob(job, len(spec.Nodes)), "\n")
				if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
					t.Errorf("problems:\n%s\nwant %q", got, tc.want)
				}
			})
		}
	}
}

// TestCheckJobNodeLogs: from render version 8 on, no node has Nomad
// collect its logs and each bounds the engine's json-file log, as built
// in Go and as decoded from JSON; a job an older examlab rendered is
// checked as it made it.
func TestCheckJobNodeLogs(t *testing.T) {
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: "checkjob0003", Candidate: "c"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(j *api.Job, node *api.Task)
		want string // in the problems; "" for none
	}{
		{"as rendered", func(*api.Job, *api.Task) {}, ""},
		{"collected by Nomad", func(_ *api.Job, n *api.Task) { n.LogConfig = &api.LogConfig{MaxFiles: new(2)} }, "has Nomad collect its logs"},
		{"no logging block", func(_ *api.Job, n *api.Task) { delete(n.Config, "logging") }, "want one json-file logging block"},
		{"another driver", func(_ *api.Job, n *api.Task) {
			n.Config["logging"] = []map[string]any{{"type": "syslog"}}
		}, "want one json-file logging block"},
		{"unbounded", func(_ *api.Job, n *api.Task) {
			n.Config["logging"] = []map[string]any{{"type": "json-file", "config": []map[string]string{{"max-size": "5m"}}}}
		}, "keeps unbounded logs"},
		{"as decoded from JSON", func(_ *api.Job, n *api.Task) {
			n.Config["logging"] = []any{map[string]any{"type": "json-file", "config": []any{map[string]any{"max-size": "5m", "max-file": "2"}}}}
		}, ""},
		{"render 7, collected by Nomad", func(j *api.Job, n *api.Task) {
			j.Meta[jobspecs.MetaRender] = "7"
			n.LogConfig = &api.LogConfig{MaxFiles: new(2), MaxFileSizeMB: new(5)}
			delete(n.Config, "logging")
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job, err := jobspecs.NomadJob(spec, jobspecs.NomadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, task := range job.TaskGroups[0].Tasks {
				if task.Name == "tokyo" {
					tc.edit(job, task)
				}
			}
			got := strings.Join(CheckJob(job, len(spec.Nodes)), "\n")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("problems:\n%s\nwant %q", got, tc.want)
			}
		})
	}
}
