package scheduler

import (
	"context"
	"time"

	"github.com/hibiken/asynq"
)

// A ready session's lab can be lost with its host while the candidate
// works. The lost-lab sweep finds such labs (and the ones that come back)
// and pauses or resumes the candidate's clock; an admin can then have a
// fresh lab made in place of a lost one.
const (
	// TypeLostSweep is the periodic lost-lab sweep.
	TypeLostSweep = "sweep:lost"
	// TypeReprovision replaces a session's lost lab with a fresh one.
	TypeReprovision = "session:reprovision"
)

// defaultLostEvery is how often the lost-lab sweep runs: a lab Nomad
// reports lost shows in the session within this, plus the sweep's own
// time, well inside the 30 s a candidate may wait to be told.
const defaultLostEvery = 10 * time.Second

// NewLostSweepTask checks the labs of ready sessions for lost hosts.
func NewLostSweepTask() *asynq.Task {
	return asynq.NewTask(TypeLostSweep, nil, asynq.Queue(QueueLow), asynq.MaxRetry(0), asynq.Timeout(time.Minute))
}

// NewReprovisionTask destroys what remains of a session's lost lab and
// provisions a fresh one of the same spec. One per admin request (nonce).
func NewReprovisionTask(sessionID, nonce string) (*asynq.Task, error) {
	return newSessionTask(TypeReprovision, QueueCritical, SessionPayload{SessionID: sessionID, Reason: "admin", Nonce: nonce}, 8, 10*time.Minute, nonce)
}

// Reprovision enqueues the replacement of a session's lost lab.
func (e *Enqueuer) Reprovision(ctx context.Context, sessionID, nonce string) (bool, error) {
	t, err := NewReprovisionTask(sessionID, nonce)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}
