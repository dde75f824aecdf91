package nomad_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
)

// skipWithoutNomad is the message the real-cluster tests skip with.
const skipWithoutNomad = "NOMAD_ADDR is not set: these tests need a real Nomad agent with the docker and raw_exec " +
	"drivers and the lab image on its client. Start one with `sudo nomad agent -config nomad/agent/dev.hcl`, build " +
	"examlab where its client can run it, then run: NOMAD_ADDR=http://127.0.0.1:4646 " +
	"EXAMLAB_NOMAD_LABNET=$PWD/bin/examlab go test ./nomad -run Real (see nomad/README.md)"

// realRuntime returns a runtime on the cluster NOMAD_ADDR names, or skips.
// The Nomad client reads NOMAD_ADDR, NOMAD_TOKEN and the rest itself;
// EXAMLAB_NOMAD_LABNET and EXAMLAB_NOMAD_DATACENTERS are what the platform
// would read from its config.
func realRuntime(t testing.TB) (*nomad.Runtime, *api.Client) {
	t.Helper()
	if os.Getenv("NOMAD_ADDR") == "" {
		t.Skip(skipWithoutNomad)
	}
	requireDocker(t)
	opts := jobspecs.NomadOptions{Labnet: os.Getenv("EXAMLAB_NOMAD_LABNET")}
	if dcs := os.Getenv("EXAMLAB_NOMAD_DATACENTERS"); dcs != "" {
		opts.Datacenters = strings.Split(dcs, ",")
	}
	rt, err := nomad.New(nomad.Options{Job: opts})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.Ping(ctx); err != nil {
		t.Fatalf("NOMAD_ADDR=%s is set but the cluster does not answer: %v", os.Getenv("NOMAD_ADDR"), err)
	}
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return rt, client
}

// TestRealNomadLifecycle is the full flow against a real Nomad agent: login,
// start, all eight running, exec hostname in tokyo, ping a peer by name,
// another session unreachable, submit, tars and manifest, job purged.
func TestRealNomadLifecycle(t *testing.T) {
	rt, client := realRuntime(t)
	lifecycle(t, rt, func(t *testing.T, jobID string) {
		_, _, err := client.Jobs().Info(jobID, nil)
		if err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("job %s after submit: err = %v, want 404 (purged)", jobID, err)
		} else {
			t.Logf("job %s purged", jobID)
		}
	})
}

// TestRealNomadReset checks on a real client that a node reset gives the
// node a fresh container.
func TestRealNomadReset(t *testing.T) {
	rt, _ := realRuntime(t)
	spec := newLab(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := rt.Provision(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, code, err := lab.Output(ctx, rt, spec.SessionID, "g1", "touch", "/root/mark"); err != nil || code != 0 {
		t.Fatalf("touch: %d %v", code, err)
	}
	if err := rt.ResetNode(ctx, spec, "g1"); err != nil {
		t.Fatal(err)
	}
	if _, code, _ := lab.Output(ctx, rt, spec.SessionID, "g1", "test", "-e", "/root/mark"); code == 0 {
		t.Error("g1 kept /root/mark across a reset")
	}
}
