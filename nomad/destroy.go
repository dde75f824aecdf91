package nomad

import (
	"context"
	"errors"
	"fmt"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/hashicorp/nomad/api"
)

// Destroy stops the session's job, waits until its allocation has
// stopped — poststop task, which removes the session's network, included —
// and only then purges the job. The order matters: a purge deletes the
// job's allocations from the servers at once while the client is still
// stopping them, after which nothing in the API tells when the lab is
// really gone. Destroying a lab that is already gone succeeds.
func (r *Runtime) Destroy(ctx context.Context, sessionID string) error {
	if !lab.ValidSessionID(sessionID) {
		return fmt.Errorf("destroy lab: invalid session id %q", sessionID)
	}
	id := jobspecs.JobName(sessionID)
	job, err := r.sessionJob(ctx, sessionID)
	switch {
	case errors.Is(err, ErrForeignJob), errors.Is(err, lab.ErrNotFound):
		// Purged already (or the name is another session's now): its
		// allocation was waited for before the purge.
		return nil
	case err != nil:
		return fmt.Errorf("destroy lab %s: %w", sessionID, err)
	}
	if job.Stop == nil || !*job.Stop {
		_, _, err := r.client.Jobs().DeregisterOpts(id, &api.DeregisterOptions{Purge: false}, r.write(ctx))
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("destroy lab %s: stop job %s: %w", sessionID, id, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, destroyTimeout)
	defer cancel()
	if err := r.waitStopped(wctx, id); err != nil {
		return fmt.Errorf("destroy lab %s: %w", sessionID, err)
	}
	_, _, err = r.client.Jobs().DeregisterOpts(id, &api.DeregisterOptions{Purge: true}, r.write(ctx))
	switch {
	case err == nil, isNotFound(err):
		return nil
	case statusOf(err) != 0:
		// Every allocation has stopped, so the lab's containers are gone:
		// a job the servers refuse to purge holds no candidate's work and
		// must not hold the session either. The caller keeps it on record
		// and a later Destroy (the reaper's) purges it.
		return &lab.LeftoverError{SessionID: sessionID, Leftovers: []lab.Leftover{{
			Kind: lab.LeftoverJob, Name: id, Err: err.Error()}}}
	default:
		return fmt.Errorf("destroy lab %s: purge job %s: %w", sessionID, id, err)
	}
}

// waitStopped blocks until no allocation of the job is still running on
// its client.
func (r *Runtime) waitStopped(ctx context.Context, jobID string) error {
	var index uint64
	for {
		stubs, meta, err := r.client.Jobs().Allocations(jobID, true, r.blocking(ctx, index))
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("wait for job %s to stop: %w", jobID, err)
		}
		live := 0
		for _, a := range stubs {
			// An unknown allocation's client has stopped reporting: it
			// cannot say when the lab stopped, and it stops the lab
			// itself (desired status stop) if it ever reconnects.
			if !allocTerminal(a.ClientStatus) && a.ClientStatus != api.AllocClientStatusUnknown {
				live++
			}
		}
		if live == 0 {
			return nil
		}
		index = meta.LastIndex
	}
}

func allocTerminal(clientStatus string) bool {
	switch clientStatus {
	case api.AllocClientStatusComplete, api.AllocClientStatusFailed, api.AllocClientStatusLost:
		return true
	}
	return false
}
