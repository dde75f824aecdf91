package workers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Archive snapshots a submitted session's lab — every node's filesystem
// and log, with a manifest of sizes and checksums — then chains cleanup.
// Each file is written atomically, so a rerun after a crash overwrites
// whatever half-done state the first run left with whole files. While it
// works it holds the session's archive lease: should its worker die,
// another worker's sweep restarts the archive in a new round within
// seconds (scheduler.RestartArchive), and this task, when the queue runs
// it again, is of an earlier round and does nothing.
func (h *Handlers) Archive(ctx context.Context, t *asynq.Task) error {
	p, sess, err := h.session(ctx, t)
	if err != nil {
		return err
	}
	switch sess.Status {
	case session.StateSubmitted, session.StateArchiving:
	case session.StateCompleted, session.StateExpired:
		return nil
	default:
		return fmt.Errorf("archive %s: session is %s, not submitted: %w", sess.ID, sess.Status, asynq.SkipRetry)
	}
	if p.Round != sess.ArchiveRestarts {
		// The archive of a worker that stopped: the session's current
		// round is a task of its own.
		h.log.Info("archive skipped: an earlier round", "session", sess.ID, "round", p.Round, "current", sess.ArchiveRestarts)
		return nil
	}
	ex, ok := h.o.Exams(sess.ExamID)
	if !ok {
		return fmt.Errorf("archive %s: unknown exam %q: %w", sess.ID, sess.ExamID, asynq.SkipRetry)
	}
	if !sess.ArchivedAt.IsZero() {
		// Whole already (a run that stopped chaining the cleanup): the
		// lab may be on its way down, and is not captured again.
		return h.chainCleanup(ctx, sess, p.Reason)
	}
	wctx, lease, release, err := h.holdLease(ctx, scheduler.LeaseArchive, sess.ID, p.Round)
	if errors.Is(err, errSuperseded) {
		h.log.Info("archive skipped: a later round runs", "session", sess.ID, "round", p.Round)
		return nil
	}
	if err != nil {
		return fmt.Errorf("archive %s: %w", sess.ID, err)
	}
	defer release()
	err = h.archive(wctx, lease, p, sess, ex)
	if superseded(wctx) || errors.Is(err, errSuperseded) {
		// This run's worker was taken for gone: the archive runs again in
		// a later round, which owns the session and its snapshot.
		h.log.Warn("archive superseded by a later round", "session", sess.ID, "round", p.Round, "err", err)
		return nil
	}
	return err
}

// archive is one attempt of the archive in round p.Round, under lease:
// grading, the snapshot, then the record that the archive is whole and
// the cleanup's task. Nothing is recorded of a round the session has
// left, and no file is written once the lease is another's (fence).
func (h *Handlers) archive(ctx context.Context, lease *store.Lease, p scheduler.SessionPayload, sess *session.Session, ex *exam.Exam) error {
	current := func(s *session.Session) error {
		if s.ArchiveRestarts != p.Round {
			return errSuperseded
		}
		return nil
	}
	sess, err := h.o.Store.Update(ctx, sess.ID, func(s *session.Session) error {
		if err := current(s); err != nil {
			return err
		}
		return s.BeginArchive()
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", p.SessionID, err)
	}
	// Terminals closed, checks run, then the snapshot: the results judge
	// the lab the archive keeps, and the archive keeps the results.
	switch {
	case ex.GradesOnSubmit() && reachableOnly(sess):
		// Checks in a lab that is partly or wholly gone would fail for
		// the host's doing, not the candidate's: an examiner grades what
		// the archive kept.
		_ = h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "grade-skipped",
			Detail: map[string]any{"reason": "archived as far as the lab could be reached"}})
	case ex.GradesOnSubmit():
		if err := h.gradeSubmitted(ctx, sess, ex, lease); err != nil {
			if !lastAttempt(ctx) || superseded(ctx) || errors.Is(err, errSuperseded) {
				return fmt.Errorf("archive %s: %w", sess.ID, err)
			}
			// The lab is archived ungraded rather than never: an
			// examiner still has the snapshot.
			h.log.Error("archive without results", "session", sess.ID, "err", err)
			_ = h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "grade-failed", Detail: map[string]any{"error": err.Error()}})
		}
	}
	start := h.o.Now()
	n, err := h.snapshot(ctx, sess, p.Reason, lease)
	h.o.Observer.Archived(h.o.Now().Sub(start), n, err == nil)
	if err != nil {
		return fmt.Errorf("archive %s: %w", sess.ID, err)
	}
	now := h.o.Now()
	sess, err = h.o.Store.Update(ctx, sess.ID, func(s *session.Session) error {
		if err := current(s); err != nil {
			return err
		}
		return s.MarkArchived(now)
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", sess.ID, err)
	}
	return h.chainCleanup(ctx, sess, p.Reason)
}

// chainCleanup enqueues the cleanup of an archived session in its
// current round.
func (h *Handlers) chainCleanup(ctx context.Context, sess *session.Session, reason string) error {
	if _, err := h.o.Enqueuer.CleanupRound(ctx, sess.ID, reason, sess.CleanupRestarts); err != nil {
		return fmt.Errorf("archive %s: chain cleanup: %w", sess.ID, err)
	}
	return nil
}

// Snapshot archives a live lab on an admin's request; the lab stays up.
func (h *Handlers) Snapshot(ctx context.Context, t *asynq.Task) error {
	p, sess, err := h.session(ctx, t)
	if err != nil {
		return err
	}
	if !sess.Status.HasLab() {
		return fmt.Errorf("snapshot %s: session is %s and has no lab: %w", sess.ID, sess.Status, asynq.SkipRetry)
	}
	start := h.o.Now()
	n, err := h.snapshot(ctx, sess, "admin", nil)
	h.o.Observer.Archived(h.o.Now().Sub(start), n, err == nil)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", sess.ID, err)
	}
	return h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "snapshot-done", Detail: map[string]any{"nonce": p.Nonce, "bytes": n}})
}

// snapshotLock names the lock a snapshot's writer holds on its session.
const snapshotLock = "snapshot"

// snapshotLockTTL is how long a snapshot's lock outlives its writer's
// last renewal (every snapshotLockRenew). Short, so that a task retried
// after an admin snapshot's worker was killed mid-capture finds the lock
// free rather than spending its retries on a dead writer's lock. (An
// archive's own lock goes sooner: the sweep that restarts the archive
// frees it.)
const (
	snapshotLockTTL   = 20 * time.Second
	snapshotLockRenew = 5 * time.Second
)

// snapshot writes {container}.tar and {container}.log for every node and
// the manifest. It returns the bytes written. An archive passes its work
// lease: its lock is then taken under it, which the sweep that restarts
// a dead worker's archive frees at once (store.FreeLockOf), and every
// file is fenced by it, so that a run taken for gone writes nothing more.
func (h *Handlers) snapshot(ctx context.Context, sess *session.Session, reason string, lease *store.Lease) (int64, error) {
	spec, err := h.spec(sess)
	if err != nil {
		return 0, err
	}
	// One writer at a time per session: two snapshots (or a snapshot and
	// the archive) writing the same files would leave tars from one run
	// under the other's manifest. A busy lock fails the task, which retries.
	var lock *store.OpLock
	if lease != nil {
		lock, err = h.o.Store.TryLockUnder(ctx, snapshotLock, lease, snapshotLockTTL)
	} else {
		lock, err = h.o.Store.TryLock(ctx, snapshotLock, sess.ID, snapshotLockTTL)
	}
	if err != nil {
		return 0, err
	}
	defer lock.Unlock(ctx)
	// Whatever half-written file is here is a dead writer's: only the
	// lock's holder writes into the folder.
	if n, err := h.o.Store.RemoveTemps(sess.ID, store.SnapshotDir); err != nil {
		return 0, err
	} else if n > 0 {
		h.log.Info("removed the half-written snapshot files of a stopped writer", "session", sess.ID, "files", n)
	}
	// Should the lock run out all the same (Redis unreachable longer than
	// its ttl), another writer may have it: this one stops.
	ctx, stop := h.keepRenewed(ctx, snapshotLockRenew, lock.Renew, "snapshot lock of "+sess.ID)
	defer stop()
	m := store.Manifest{SessionID: sess.ID, Runtime: h.o.RuntimeName, Reason: reason, CreatedAt: h.o.Now().UTC(), Files: []store.File{}}
	m.Mode = h.o.Snapshot
	names, unreached, err := h.captureNodes(ctx, sess, spec)
	if err != nil {
		return 0, err
	}
	containers := make(map[string]string, len(spec.Nodes))
	for _, n := range spec.Nodes {
		containers[n.Name] = n.Container
	}
	// The runtime freezes the lab for the capture and thaws it before it
	// returns; logs are read after, from the running (or stopped) nodes.
	tars := make(map[string]store.File, len(spec.Nodes))
	var caps []lab.NodeCapture
	if len(names) > 0 {
		caps, err = h.o.Runtime.Capture(ctx, sess.Lab(), names, h.o.Snapshot, func(node string, write func(io.Writer) error) error {
			f, err := h.capture(ctx, sess.ID, containers[node]+".tar", lease, write)
			if err != nil {
				return err
			}
			tars[node] = f
			return nil
		})
	}
	var total int64
	if err != nil {
		return total, fmt.Errorf("capture lab: %w", err)
	}
	caps = append(caps, unreached...)
	captured := make(map[string]bool, len(caps))
	for _, c := range caps {
		captured[c.Node] = !c.Missing
	}
	for _, n := range spec.Nodes {
		tar, ok := tars[n.Name]
		if !captured[n.Name] || !ok {
			m.Missing = append(m.Missing, n.Name)
			continue
		}
		logf, err := h.capture(ctx, sess.ID, n.Container+".log", lease, func(w io.Writer) error {
			return h.o.Runtime.Logs(ctx, sess.Lab(), n.Name, w)
		})
		if err != nil && !errors.Is(err, lab.ErrNotFound) {
			return total, fmt.Errorf("logs of %s: %w", n.Name, err)
		}
		m.Files = append(m.Files, tar)
		total += tar.Size
		if err == nil {
			m.Files = append(m.Files, logf)
			total += logf.Size
		}
	}
	m.Nodes = caps
	if rf, err := h.resultsFile(sess.ID); err != nil {
		return total, err
	} else if rf != nil {
		m.Results = rf
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return total, fmt.Errorf("encode manifest: %w", err)
	}
	path, err := h.o.Store.Path(sess.ID, store.SnapshotDir, store.ManifestName)
	if err != nil {
		return total, err
	}
	if err := fence(ctx, lease); err != nil {
		return total, err
	}
	if err := store.WriteFileAtomic(path, b); err != nil {
		return total, err
	}
	return total, nil
}

// capture streams write's output into a snapshot file, hashing as it goes,
// and commits the file only if write succeeded and lease (if any) is
// still this run's.
func (h *Handlers) capture(ctx context.Context, id, name string, lease *store.Lease, write func(io.Writer) error) (store.File, error) {
	path, err := h.o.Store.Path(id, store.SnapshotDir, name)
	if err != nil {
		return store.File{}, err
	}
	f, err := store.CreateAtomic(path)
	if err != nil {
		return store.File{}, err
	}
	sum := sha256.New()
	cw := &lab.CountingWriter{W: io.MultiWriter(f, sum)}
	if err := write(cw); err != nil {
		f.Abort()
		return store.File{}, err
	}
	if err := fence(ctx, lease); err != nil {
		f.Abort()
		return store.File{}, err
	}
	if err := f.Commit(); err != nil {
		return store.File{}, err
	}
	return store.File{Name: name, Size: cw.N, SHA256: hex.EncodeToString(sum.Sum(nil)), ModTime: h.o.Now().UTC()}, nil
}

// resultsFile describes the session's results.json for the manifest;
// nil when the session was not graded.
func (h *Handlers) resultsFile(id string) (*store.File, error) {
	path, err := h.o.Store.Path(id, store.ResultsFile)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	sum := sha256.Sum256(b)
	return &store.File{Name: store.ResultsFile, Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:]), ModTime: h.o.Now().UTC()}, nil
}

// Cleanup removes the session's lab and, once an archive has run, marks
// the session completed (or expired when its deadline forced the submit),
// then gives its lab slot to the next session in line. A lab whose nodes
// are gone but whose runtime keeps another part of it (a network it will
// not remove) ends the session all the same: the part is put on record
// and the reaper retries it. While it works it holds the session's
// cleanup lease: should its worker die, another worker's sweep restarts
// the cleanup in a new round within seconds (scheduler.RestartCleanup).
func (h *Handlers) Cleanup(ctx context.Context, t *asynq.Task) error {
	p, sess, err := h.session(ctx, t)
	if err != nil {
		return err
	}
	if p.Round != sess.CleanupRestarts {
		h.log.Info("cleanup skipped: an earlier round", "session", sess.ID, "round", p.Round, "current", sess.CleanupRestarts)
		return nil
	}
	wctx, _, release, err := h.holdLease(ctx, scheduler.LeaseCleanup, sess.ID, p.Round)
	if errors.Is(err, errSuperseded) {
		h.log.Info("cleanup skipped: a later round runs", "session", sess.ID, "round", p.Round)
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", sess.ID, err)
	}
	defer release()
	err = h.cleanup(wctx, p, sess)
	if superseded(wctx) || errors.Is(err, errSuperseded) {
		h.log.Warn("cleanup superseded by a later round", "session", sess.ID, "round", p.Round, "err", err)
		return nil
	}
	return err
}

// cleanup is one attempt of the cleanup in round p.Round, under its
// lease.
func (h *Handlers) cleanup(ctx context.Context, p scheduler.SessionPayload, sess *session.Session) error {
	if _, err := h.removeLab(ctx, sess.Lab(), sess.ID); err != nil {
		return fmt.Errorf("cleanup %s: %w", sess.ID, err)
	}
	sess, err := h.o.Store.Update(ctx, sess.ID, func(s *session.Session) error {
		if s.CleanupRestarts != p.Round {
			return errSuperseded
		}
		for i := range s.Nodes {
			s.Nodes[i].State = lab.StateMissing
			s.Nodes[i].Detail = "removed after archive"
		}
		if s.Status != session.StateArchiving {
			return nil // ended already: a rerun converges
		}
		_, err := s.Complete(h.o.Now())
		return err
	})
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", sess.ID, err)
	}
	if sess.Status.Terminal() {
		if err := h.seal(ctx, sess.ID); err != nil {
			return fmt.Errorf("cleanup %s: %w", sess.ID, err)
		}
		if err := h.o.Store.ReleaseShort(ctx, sess); err != nil {
			return fmt.Errorf("cleanup %s: %w", sess.ID, err)
		}
		if sess.FromWarmPool() {
			// The claimed warm lab is gone: its record and its prefix.
			if err := h.o.Store.DropWarm(ctx, sess.LabID); err != nil {
				return fmt.Errorf("cleanup %s: %w", sess.ID, err)
			}
		}
		// A failed release retries the task, which converges: the lab is
		// gone and the session ended already.
		if err := scheduler.Release(ctx, h.o.Store, h.o.Enqueuer, sess.ID, h.o.Now()); err != nil {
			return fmt.Errorf("cleanup %s: %w", sess.ID, err)
		}
	}
	return nil
}
