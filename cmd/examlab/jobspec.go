package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
)

// exampleSession is the session id `examlab jobspec` renders for when none
// is given.
const exampleSession = "example00001"

// jobspec prints the Nomad job a session's lab runs as, exactly as the
// Nomad runtime registers it, so an operator can check it with
// `examlab jobspec | nomad job plan -json -`.
func jobspec(ctx context.Context, args []string) error {
	var session, candidate, format string
	cfg, _, err := loadConfig("jobspec", args, func(fs *flag.FlagSet) {
		fs.StringVar(&session, "session", exampleSession, "session id to render the job for")
		fs.StringVar(&candidate, "candidate", "candidate@example.com", "candidate shown in the job's meta")
		fs.StringVar(&format, "format", "json", "json (as `nomad job run -json` reads it) or hcl")
	})
	if err != nil {
		return err
	}
	ex := exam.Default()
	if cfg.ExamFile != "" {
		if ex, err = exam.Load(cfg.ExamFile); err != nil {
			return err
		}
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: session, Candidate: candidate})
	if err != nil {
		return err
	}
	// Namespace and region as the runtime takes them: from the Nomad
	// client's own settings (NOMAD_NAMESPACE, NOMAD_REGION).
	nc := api.DefaultConfig()
	opts, err := platform.NomadJobOptions(cfg, selfBinary)
	if err != nil {
		return err
	}
	opts.Namespace, opts.Region = nc.Namespace, nc.Region
	job, err := jobspecs.NomadJob(spec, opts)
	if err != nil {
		return err
	}
	var out []byte
	switch format {
	case "json":
		out, err = jobspecs.NomadJobJSON(job)
	case "hcl":
		out, err = jobspecs.NomadJobHCL(job)
	default:
		return fmt.Errorf("jobspec: -format must be json or hcl, not %q", format)
	}
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
