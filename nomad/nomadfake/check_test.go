package nomadfake

import (
	"strings"
	"testing"

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
