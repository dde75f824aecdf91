package nomad_test

import (
	"context"
	"testing"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// TestJobThatWillNotPurgeIsALeftover: with servers that stop a lab's job
// but refuse to purge it, Destroy still waits for the allocation to stop
// (the lab's containers are gone) and then reports the job as a
// lab.LeftoverError rather than failing, so the session ending it is not
// held; once the servers purge again, Destroy purges it.
func TestJobThatWillNotPurgeIsALeftover(t *testing.T) {
	env := newFakeEnv(t)
	eng := testlab.NewEngine(t)
	spec := flatLab(t, env.rt)
	t.Cleanup(func() { env.fake.RefusePurge("") }) // before the lab's own cleanup
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	t.Cleanup(cancel)
	if err := env.rt.Provision(ctx, spec); err != nil {
		t.Fatal(err)
	}
	job := jobspecs.JobName(spec.SessionID)
	env.fake.RefusePurge("job is in use by the state store")

	err := env.rt.Destroy(ctx, spec.SessionID)
	kept, ok := lab.Leftovers(err)
	if !ok || len(kept) != 1 || kept[0].Kind != lab.LeftoverJob || kept[0].Name != job || kept[0].Subnet != "" {
		t.Fatalf("destroy with purges refused: %v (%+v), want the job %s as a leftover", err, kept, job)
	}
	if got := eng.Containers(t, spec.SessionID); len(got) != 0 {
		t.Fatalf("containers left once the job stopped: %s", testlab.Summary(got))
	}
	if env.fake.Job(job) == nil {
		t.Fatalf("job %s gone, though its purge was refused", job)
	}

	env.fake.RefusePurge("")
	if err := env.rt.Destroy(ctx, spec.SessionID); err != nil {
		t.Fatalf("destroy once purges work: %v", err)
	}
	if env.fake.Job(job) != nil {
		t.Fatalf("job %s still there after a purge", job)
	}
}
