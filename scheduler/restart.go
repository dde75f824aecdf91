package scheduler

import (
	"context"
	"fmt"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Restarting a provision whose worker died. A worker running a provision
// holds a work lease on the session (store.TakeLease, op LeaseProvision)
// and renews it every LeaseRenew; it runs out LeaseTTL after the worker
// stops. Every worker process sweeps for run-out leases every LeaseSweep
// and when it starts, and restarts each such provision (RestartProvision)
// in a new round with a task of its own, which any worker picks up at
// once. The dead worker's task, when the queue gives it up long after, is
// of an earlier round and finds nothing to do. The new run reuses what
// the dead one made: the runtime's provision converges from any partial
// state.
const (
	// LeaseProvision names provision leases.
	LeaseProvision = "provision"
	// LeaseTTL is how long a lease outlives the last renewal: long enough
	// that a busy worker's renewal is never late, short enough that a
	// candidate waits a few seconds for a dead worker, not a minute.
	LeaseTTL = 5 * time.Second
	// LeaseRenew is how often a holder renews.
	LeaseRenew = 1500 * time.Millisecond
	// LeaseSweep is how often each worker looks for run-out leases: one
	// Redis script call, cheap enough to make every second.
	LeaseSweep = time.Second
	// LeaseClaim is how long a sweep holds a run-out lease while it
	// restarts the provision; should the sweep die, another acts after it.
	LeaseClaim = 15 * time.Second
	// UnleasedGrace is how long a provision task may be in a worker's
	// hands, its session still without a lease, before the sweep takes
	// that worker for gone: a live one reads the record and takes the
	// lease within milliseconds of the queue handing it the task.
	UnleasedGrace = 3 * time.Second
)

// Provision restart reasons, as the audit log records them.
const (
	// RestartLeaseRanOut: the worker stopped renewing its lease.
	RestartLeaseRanOut = "the worker provisioning the lab stopped"
	// RestartNeverLeased: the worker the queue handed the task to never
	// took the lease (it died between the two).
	RestartNeverLeased = "the worker that took the provision stopped before it began"
)

// RestartProvision starts the provision of session id again in a new
// round, because the worker running its round'th provision is gone. It
// reports whether it did: a session no longer provisioning, or already in
// a later round (submitted, parked, restarted by another sweep), is left
// as it is. The restart is recorded in the audit log; should its enqueue
// fail, the admission sweep enqueues the new round's provision (Repair).
// reason is RestartLeaseRanOut or RestartNeverLeased.
func RestartProvision(ctx context.Context, st *store.Store, q provisionQueue, id string, round int, reason string) (bool, error) {
	return restartProvision(ctx, st, q, id, round, reason, false)
}

// RestartUnleasedProvision is RestartProvision for a provision whose
// worker never took the session's lease (RestartNeverLeased): it restarts
// only if, under the session's lock, the session still holds no
// provision lease. A worker takes its lease before it begins the
// provision under that lock, so either the restart sees the lease and
// leaves the session, or the worker sees the new round and does nothing.
func RestartUnleasedProvision(ctx context.Context, st *store.Store, q provisionQueue, id string, round int) (bool, error) {
	return restartProvision(ctx, st, q, id, round, RestartNeverLeased, true)
}

func restartProvision(ctx context.Context, st *store.Store, q provisionQueue, id string, round int, reason string, unleasedOnly bool) (bool, error) {
	restarted := false
	sess, err := st.Update(ctx, id, func(x *session.Session) error {
		restarted = false
		if x.Status != session.StateProvisioning || x.ProvisionRound() != round {
			return nil
		}
		if unleasedOnly {
			held, err := st.HasLease(ctx, LeaseProvision, id)
			if err != nil {
				return err
			}
			if held {
				return nil
			}
		}
		restarted = true
		return x.RestartProvision()
	})
	if err != nil {
		return false, fmt.Errorf("restart provision of %s: %w", id, err)
	}
	if !restarted {
		return false, nil
	}
	if err := st.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: "provision-restarted",
		Detail: map[string]any{"reason": reason, "from_round": round, "round": sess.ProvisionRound()}}); err != nil {
		return true, err
	}
	if _, err := q.Provision(ctx, id, sess.ProvisionRound()); err != nil {
		return true, fmt.Errorf("restart provision of %s: %w: %w", id, ErrNotQueued, err)
	}
	return true, nil
}

// Restarting an archive or a cleanup whose worker died works the same
// way: the worker holds the session's LeaseArchive or LeaseCleanup lease
// while it runs, and the sweep that finds it run out starts the
// operation's next round (RestartArchive, RestartCleanup) under a task
// of its own. A run that finds its lease taken over stops without
// touching the session or its files.
const (
	// LeaseArchive names archive leases (grading, capture, manifest).
	LeaseArchive = "archive"
	// LeaseCleanup names cleanup leases (the lab's removal and the
	// session's end).
	LeaseCleanup = "cleanup"
)

// archiveRestartQueue is what RestartArchive enqueues on.
type archiveRestartQueue interface {
	ArchiveRound(ctx context.Context, sessionID, reason string, round int) (bool, error)
	CleanupRound(ctx context.Context, sessionID, reason string, round int) (bool, error)
}

// cleanupRestartQueue is what RestartCleanup enqueues on.
type cleanupRestartQueue interface {
	CleanupRound(ctx context.Context, sessionID, reason string, round int) (bool, error)
}

// RestartArchive starts the archive of session id again in a new round,
// because the worker running its round'th archive is gone, and reports
// whether it did. A session whose archive is whole already (the worker
// died chaining the cleanup) gets its cleanup enqueued instead, which the
// task id makes a no-op if it was. A session past that round, or ended,
// is left as it is. The restart is recorded in the audit log; should its
// enqueue fail, the expiry sweep enqueues the current round's task.
func RestartArchive(ctx context.Context, st *store.Store, q archiveRestartQueue, id string, round int) (bool, error) {
	restarted, chain := false, false
	sess, err := st.Update(ctx, id, func(x *session.Session) error {
		restarted, chain = false, false
		if x.ArchiveRestarts != round || (x.Status != session.StateSubmitted && x.Status != session.StateArchiving) {
			return nil
		}
		if !x.ArchivedAt.IsZero() {
			chain = true
			return nil
		}
		restarted = true
		return x.RestartArchive()
	})
	if err != nil {
		return false, fmt.Errorf("restart archive of %s: %w", id, err)
	}
	if chain {
		if _, err := q.CleanupRound(ctx, id, sess.SubmitReason, sess.CleanupRestarts); err != nil {
			return false, fmt.Errorf("restart archive of %s: queue its cleanup: %w", id, err)
		}
		return false, nil
	}
	if !restarted {
		return false, nil
	}
	if err := st.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: "archive-restarted",
		Detail: map[string]any{"reason": "the worker archiving the lab stopped", "from_round": round, "round": sess.ArchiveRestarts}}); err != nil {
		return true, err
	}
	if _, err := q.ArchiveRound(ctx, id, sess.SubmitReason, sess.ArchiveRestarts); err != nil {
		return true, fmt.Errorf("restart archive of %s: %w: %w", id, ErrNotQueued, err)
	}
	return true, nil
}

// RestartCleanup starts the cleanup of session id again in a new round,
// because the worker running its round'th cleanup is gone, and reports
// whether it did. A session ended already is cleaned up again as well:
// the dead run may have stopped before it sealed the session or gave its
// slot back, and every step of a cleanup converges when rerun. Should
// its enqueue fail, the expiry sweep enqueues the current round's task.
func RestartCleanup(ctx context.Context, st *store.Store, q cleanupRestartQueue, id string, round int) (bool, error) {
	restarted := false
	sess, err := st.Update(ctx, id, func(x *session.Session) error {
		restarted = false
		if x.CleanupRestarts != round || (x.Status != session.StateArchiving && !x.Status.Terminal()) {
			return nil
		}
		restarted = true
		return x.RestartCleanup()
	})
	if err != nil {
		return false, fmt.Errorf("restart cleanup of %s: %w", id, err)
	}
	if !restarted {
		return false, nil
	}
	if err := st.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: "cleanup-restarted",
		Detail: map[string]any{"reason": "the worker removing the lab stopped", "from_round": round, "round": sess.CleanupRestarts}}); err != nil {
		return true, err
	}
	if _, err := q.CleanupRound(ctx, id, sess.SubmitReason, sess.CleanupRestarts); err != nil {
		return true, fmt.Errorf("restart cleanup of %s: %w: %w", id, ErrNotQueued, err)
	}
	return true, nil
}
