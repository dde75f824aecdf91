package nomad_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
)

// TestLogsWhereTheyAreKept: a node's logs are read where they are kept.
// A lab rendered from version 8 on has Nomad collect none, and the
// runtime reads them from the client's engine through the lab's agent
// (labnet logs); a lab whose nodes Nomad collects the logs of (one an
// older examlab registered) is read with the alloc fs logs API, stdout
// and stderr.
func TestLogsWhereTheyAreKept(t *testing.T) {
	tests := []struct {
		name     string
		edit     func(*api.Job)
		viaAgent bool
	}{
		{name: "kept by the client's engine", viaAgent: true},
		{name: "collected by Nomad", edit: func(j *api.Job) {
			// As render version 7 had it.
			j.Meta[jobspecs.MetaRender] = "7"
			for _, task := range j.TaskGroups[0].Tasks {
				if task.Driver == "docker" {
					task.LogConfig = &api.LogConfig{MaxFiles: new(2), MaxFileSizeMB: new(5)}
					delete(task.Config, "logging")
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newFakeEnv(t)
			spec := newLab(t, env.rt)
			if tc.edit != nil {
				// Registered as it is; the runtime leaves a job with its
				// spec's digest alone.
				put(t, env, spec, tc.edit)
			}
			ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
			defer cancel()
			if err := env.rt.Provision(ctx, spec); err != nil {
				t.Fatal(err)
			}
			var buf strings.Builder
			if err := env.rt.Logs(ctx, spec.SessionID, "tokyo", &buf); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(buf.String(), "examlab node tokyo ready") {
				t.Errorf("logs of tokyo lack its ready line: %q", buf.String())
			}
			agent, fs := 0, 0
			for _, e := range env.fake.Execs() {
				if e.Task == jobspecs.NomadLabnetWatch && len(e.Command) > 2 && e.Command[2] == "logs" {
					agent++
				}
			}
			for _, r := range env.fake.Requests() {
				if strings.HasPrefix(r.Path, "/v1/client/fs/logs/") {
					fs++
				}
			}
			wantAgent, wantFS := 0, 2
			if tc.viaAgent {
				wantAgent, wantFS = 1, 0
			}
			if agent != wantAgent || fs != wantFS {
				t.Errorf("read with %d labnet logs and %d alloc fs logs requests, want %d and %d", agent, fs, wantAgent, wantFS)
			}
		})
	}
}
