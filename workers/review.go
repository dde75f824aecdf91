package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/changeset"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Labels a review lab's containers and networks carry besides a lab's
// own: that it is a review lab, and of which session.
const (
	LabelReview   = "examlab.review"
	LabelReviewOf = "examlab.review-of"
)

// reviewCaps are given to every node of a review lab, on top of the
// exam's, so that the archive's owners, modes and file capabilities can be
// set: an exam may give its nodes fewer than the extraction needs.
var reviewCaps = []string{"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP"}

// applyParallel bounds how many nodes' archives are applied at once.
const applyParallel = 4

// ReviewSpec is the lab of review lab rv of sess: the exam's topology
// under the review lab's own id (so its own containers and network), with
// labels that tie it to the session, and without the nodes' files and
// setup: the archive already holds what they did, and running them again
// would apply them twice.
func ReviewSpec(ex *exam.Exam, rv *store.Review, sess *session.Session) (lab.Spec, error) {
	spec, err := lab.NewSpec(ex, lab.Session{ID: rv.ID, Candidate: sess.Email})
	if err != nil {
		return spec, err
	}
	for i := range spec.Nodes {
		n := &spec.Nodes[i]
		n.Files, n.Setup, n.SetupTimeout = nil, "", 0
		n.Labels[LabelReview] = "true"
		n.Labels[LabelReviewOf] = sess.ID
		for _, c := range reviewCaps {
			if !contains(n.CapAdd, c) {
				n.CapAdd = append(n.CapAdd, c)
			}
		}
	}
	return spec, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// review loads a review task's payload and record; a review lab without a
// record can never be handled.
func (h *Handlers) review(ctx context.Context, t *asynq.Task) (scheduler.ReviewPayload, *store.Review, error) {
	p, err := scheduler.ParseReviewPayload(t)
	if err != nil {
		return p, nil, err
	}
	rv, err := h.o.Store.Review(ctx, p.ReviewID)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrBadID) {
		return p, nil, fmt.Errorf("%s %s: %w: %w", t.Type(), p.ReviewID, err, asynq.SkipRetry)
	}
	if err != nil {
		return p, nil, fmt.Errorf("%s %s: %w", t.Type(), p.ReviewID, err)
	}
	return p, rv, nil
}

// ReviewStart brings a review lab up: the lab is provisioned under the
// review lab's id, every node gets its snapshot applied, and the record
// turns ready with its expiry TTL from now. A rerun converges: the runtime
// reuses what exists and applying a snapshot again gives the same tree.
// A start that fails for good marks the review lab failed and removes
// what was made.
func (h *Handlers) ReviewStart(ctx context.Context, t *asynq.Task) error {
	_, rv, err := h.review(ctx, t)
	if err != nil {
		return err
	}
	if rv.Status != store.ReviewStarting {
		return nil // ready already, or ended while it waited
	}
	err = h.startReview(ctx, rv)
	if err == nil {
		return nil
	}
	if lastAttempt(ctx) || errors.Is(err, asynq.SkipRetry) {
		h.endReview(context.WithoutCancel(ctx), rv.ID, store.ReviewFailed, "worker", "could not be restored: "+err.Error())
		return fmt.Errorf("review lab %s: %w: %w", rv.ID, err, asynq.SkipRetry)
	}
	return fmt.Errorf("review lab %s: %w", rv.ID, err)
}

func (h *Handlers) startReview(ctx context.Context, rv *store.Review) error {
	sess, err := h.o.Store.Get(ctx, rv.SessionID)
	if err != nil {
		return fmt.Errorf("load session %s: %w", rv.SessionID, err)
	}
	ex, ok := h.o.Exams(sess.ExamID)
	if !ok {
		return fmt.Errorf("session %s: unknown exam %q: %w", sess.ID, sess.ExamID, asynq.SkipRetry)
	}
	src, err := h.spec(sess)
	if err != nil {
		return err
	}
	spec, err := ReviewSpec(ex, rv, sess)
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	// The archive is read once more in full while it is applied, and
	// checked against the manifest then (changeset.Apply); here only that
	// every node has one.
	arch, err := h.o.Store.CheckArchive(ctx, sess.ID, src.Nodes, false)
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	full := archiveMode(arch.ManifestPath) == "full"
	start := h.o.Now()
	pctx, cancel := context.WithTimeout(ctx, h.o.ProvisionTimeout)
	defer cancel()
	// The panel shows the review lab's nodes come up from the progress
	// until the record has them, restored.
	defer h.clearProgress(ctx, rv.ID)
	stop := h.watchProgress(ctx, spec)
	defer stop()
	if err := h.o.Runtime.Provision(pctx, spec); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, applyParallel)
	)
	for _, an := range arch.Nodes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			open := func() (io.ReadCloser, error) { return os.Open(an.Path) }
			st, err := changeset.Apply(ctx, h.o.Runtime, rv.ID, an.Node, open, changeset.Expect{Size: an.File.Size, SHA256: an.File.SHA256, Full: full})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if errors.Is(err, changeset.ErrChecksum) || errors.Is(err, changeset.ErrBadEntry) {
					err = fmt.Errorf("%w: %w", err, asynq.SkipRetry)
				}
				errs = append(errs, err)
				return
			}
			h.log.Info("review lab node restored", "review", rv.ID, "node", an.Node, "entries", st.Entries, "deleted", st.Deleted, "opaque", st.Opaque, "pruned", st.Pruned, "bytes", st.Bytes)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	nodes, err := h.o.Runtime.Status(ctx, spec)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	mode := "changes"
	if full {
		mode = "full"
	}
	now := h.o.Now().UTC()
	cur, err := h.o.Store.UpdateReview(ctx, rv.ID, func(r *store.Review) error {
		if r.Status != store.ReviewStarting {
			return nil
		}
		r.Status, r.ReadyAt, r.ExpiresAt = store.ReviewReady, now, now.Add(r.TTL)
		r.Nodes, r.Mode = nodes, mode
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark ready: %w", err)
	}
	if cur.Status != store.ReviewReady {
		// Ended while it came up: what was made goes too.
		return h.o.Runtime.Destroy(ctx, rv.ID)
	}
	h.log.Info("review lab ready", "review", rv.ID, "session", rv.SessionID, "took", h.o.Now().Sub(start).Round(time.Millisecond))
	_ = h.o.Store.Audit(ctx, rv.SessionID, store.AuditEntry{Actor: "worker", Action: "review-ready",
		Detail: map[string]any{"review": rv.ID, "mode": mode, "expires_at": cur.ExpiresAt, "took_ms": h.o.Now().Sub(start).Milliseconds()}})
	return nil
}

// archiveMode reads the snapshot manifest's mode: "changes" or "full"
// (archives written before there were change sets have none, and are
// full).
func archiveMode(manifest string) string {
	b, err := os.ReadFile(manifest)
	if err != nil {
		return "full"
	}
	var m struct {
		Mode string `json:"mode"`
	}
	if json.Unmarshal(b, &m) != nil || m.Mode == "" {
		return "full"
	}
	return m.Mode
}

// ReviewEnd removes a review lab on an admin's word.
func (h *Handlers) ReviewEnd(ctx context.Context, t *asynq.Task) error {
	p, rv, err := h.review(ctx, t)
	if err != nil {
		return err
	}
	by := p.By
	if by == "" {
		by = "admin"
	}
	reason := p.Reason
	if reason == "" {
		reason = "ended by " + by
	}
	if rv.Status.Live() {
		return h.endReview(ctx, rv.ID, store.ReviewEnded, by, reason)
	}
	// Ended already; make sure nothing of it is left.
	return h.o.Runtime.Destroy(ctx, rv.ID)
}

// endReview removes a review lab's lab, records it ended (or failed) with
// the reason, gives its slot to the next in line and notes it in the
// session's audit log. Ending twice converges.
func (h *Handlers) endReview(ctx context.Context, id string, state store.ReviewState, by, reason string) error {
	if _, err := h.removeLab(ctx, id, ""); err != nil {
		return fmt.Errorf("end review lab %s: %w", id, err)
	}
	var was store.ReviewState
	rv, err := h.o.Store.UpdateReview(ctx, id, func(r *store.Review) error {
		was = r.Status
		if !r.Status.Live() {
			return nil
		}
		r.Status, r.Detail, r.EndedAt, r.EndedBy = state, reason, h.o.Now().UTC(), by
		return nil
	})
	if err != nil {
		return fmt.Errorf("end review lab %s: %w", id, err)
	}
	if err := scheduler.Release(ctx, h.o.Store, h.o.Enqueuer, id, h.o.Now()); err != nil {
		h.log.Warn("admit after a review lab ended; the admission sweep will", "review", id, "err", err)
	}
	if was.Live() {
		action := "review-ended"
		if state == store.ReviewFailed {
			action = "review-failed"
		}
		_ = h.o.Store.Audit(ctx, rv.SessionID, store.AuditEntry{Actor: by, Action: action, Detail: map[string]any{"review": id, "reason": reason}})
		h.log.Info("review lab ended", "review", id, "session", rv.SessionID, "by", by, "reason", reason)
	}
	return nil
}

// reapReviews ends every live review lab past its time, and puts a live
// one that lost its slot (Redis lost its keys) back among the holders. It
// returns the ids it ended.
func (h *Handlers) reapReviews(ctx context.Context) ([]string, error) {
	live, err := h.o.Store.LiveReviews(ctx)
	if err != nil {
		return nil, err
	}
	now := h.o.Now()
	var ended []string
	var errs []error
	for _, rv := range live {
		if !rv.Expired(now) {
			errs = append(errs, h.o.Store.HoldReviewSlot(ctx, rv.ID))
			continue
		}
		reason := fmt.Sprintf("expired after %s", rv.TTL)
		if err := h.endReview(ctx, rv.ID, store.ReviewEnded, "reaper", reason); err != nil {
			errs = append(errs, err)
			continue
		}
		ended = append(ended, rv.ID)
	}
	return ended, errors.Join(errs...)
}

// reviewWait is how often a regrade looks whether its review lab is ready.
const reviewWait = time.Second

// ReviewRegrade grades a finished session in its review lab: it waits for
// the lab to be ready, runs the exam's checks there and stores the
// results as the session's newest, trigger "regrade", with a note that
// they were taken in a review lab restored from the archive.
func (h *Handlers) ReviewRegrade(ctx context.Context, t *asynq.Task) error {
	p, rv, err := h.review(ctx, t)
	if err != nil {
		return err
	}
	note := func(state string, fn func(*store.ReviewRegrade)) {
		_, _ = h.o.Store.UpdateReview(context.WithoutCancel(ctx), rv.ID, func(r *store.Review) error {
			if r.Regrade == nil || r.Regrade.Nonce != p.Nonce {
				r.Regrade = &store.ReviewRegrade{Nonce: p.Nonce, QueuedAt: h.o.Now().UTC(), QueuedBy: p.By}
			}
			r.Regrade.State = state
			if fn != nil {
				fn(r.Regrade)
			}
			return nil
		})
	}
	fail := func(err error) error {
		note("failed", func(g *store.ReviewRegrade) { g.Error, g.DoneAt = err.Error(), h.o.Now().UTC() })
		_ = h.o.Store.Audit(ctx, rv.SessionID, store.AuditEntry{Actor: "worker", Action: "regrade-failed", Detail: map[string]any{"review": rv.ID, "error": err.Error()}})
		return fmt.Errorf("regrade %s in review lab %s: %w: %w", rv.SessionID, rv.ID, err, asynq.SkipRetry)
	}
	if rv.Status == store.ReviewStarting {
		note("waiting", nil)
	}
	for rv.Status == store.ReviewStarting {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(reviewWait):
		}
		if rv, err = h.o.Store.Review(ctx, p.ReviewID); err != nil {
			return err
		}
	}
	if rv.Status != store.ReviewReady {
		return fail(fmt.Errorf("the review lab is %s: %s", rv.Status, rv.Detail))
	}
	note("running", nil)
	sess, err := h.o.Store.Get(ctx, rv.SessionID)
	if err != nil {
		return fail(err)
	}
	ex, ok := h.o.Exams(sess.ExamID)
	if !ok {
		return fail(fmt.Errorf("unknown exam %q", sess.ExamID))
	}
	answers, err := h.o.Store.Answers(ctx, sess.ID)
	if err != nil {
		return err
	}
	gctx, cancel := context.WithTimeout(ctx, grading.Budget(ex))
	defer cancel()
	res, err := grading.Grade(gctx, h.o.Runtime, ex, rv.ID, grading.Options{
		Answers: store.AnswerTexts(answers), Trigger: grading.TriggerRegrade, Now: h.o.Now, Observer: h.o.Grading,
	})
	if err != nil {
		return fail(err)
	}
	if h.o.Grading != nil {
		h.o.Grading.Graded(grading.TriggerRegrade, time.Duration(res.DurationMS)*time.Millisecond)
	}
	res.SessionID = sess.ID
	res.Note = "graded in review lab " + rv.ID + ", restored from the session's archive after the exam"
	if err := h.o.Store.SaveResults(ctx, sess.ID, res); err != nil {
		return fmt.Errorf("regrade %s: %w", sess.ID, err)
	}
	note("done", func(g *store.ReviewRegrade) {
		g.Score, g.MaxScore, g.DoneAt, g.ResultsAt = res.Score, res.MaxScore, h.o.Now().UTC(), res.GradedAt
	})
	return h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "regrade",
		Detail: map[string]any{"review": rv.ID, "by": p.By, "score": res.Score, "max_score": res.MaxScore, "duration_ms": res.DurationMS}})
}
