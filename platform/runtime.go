package platform

import (
	"context"
	"io"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
)

// Runtime is everything the roles together need of a lab runtime. Each
// consumer (workers, api, relay) declares the smaller part it uses; this
// is the union both implementations satisfy.
type Runtime interface {
	Provision(ctx context.Context, spec jobspecs.Lab) error
	Status(ctx context.Context, spec jobspecs.Lab) ([]lab.NodeStatus, error)
	Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error)
	ExportFS(ctx context.Context, sessionID, node string, w io.Writer) error
	Logs(ctx context.Context, sessionID, node string, w io.Writer) error
	Destroy(ctx context.Context, sessionID string) error
	ResetNode(ctx context.Context, spec jobspecs.Lab, node string) error
	Labs(ctx context.Context) ([]string, error)
	Ping(ctx context.Context) error
}

var _ Runtime = (*docker.Runtime)(nil)
var _ Runtime = (*nomad.Runtime)(nil)
