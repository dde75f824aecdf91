package workers

import (
	"context"
	"fmt"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// gradeSubmitted runs the exam's checks in a submitted session's lab and
// stores results.json, before the snapshot captures the lab (and, with
// it, the results). The candidate's terminals are closed first, so that
// nothing changes the lab while it is judged. A rerun after a crash finds
// the results of this submission and does not grade again: the lab may
// have changed since (a half-done snapshot, a node that died).
//
// The results are saved only while lease, the archive's, is still this
// run's (fence): a run taken for gone saves nothing beside the new one's.
func (h *Handlers) gradeSubmitted(ctx context.Context, sess *session.Session, ex *exam.Exam, lease *store.Lease) error {
	history, err := h.o.Store.ResultsHistory(ctx, sess.ID)
	if err != nil {
		return fmt.Errorf("grade %s: %w", sess.ID, err)
	}
	for _, r := range history {
		if gradedSubmission(r.Trigger) && !r.GradedAt.Before(sess.SubmittedAt) {
			return nil
		}
	}
	closed, err := h.o.Store.WaitTerminalsClosed(ctx, sess.ID, h.o.TerminalWait)
	if err != nil {
		return fmt.Errorf("grade %s: close terminals: %w", sess.ID, err)
	}
	if !closed {
		// A relay that crashed leaves its note until it expires; its
		// shells went with it. Grading does not wait longer on it.
		h.log.Warn("grading with terminals still noted open", "session", sess.ID)
		h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "grade-terminals-open"})
	}
	answers, err := h.o.Store.Answers(ctx, sess.ID)
	if err != nil {
		return fmt.Errorf("grade %s: %w", sess.ID, err)
	}
	// The budget starts once a slot is free: waiting behind other
	// gradings must not eat this one's checks' time.
	waited := h.o.Now()
	select {
	case h.gradeSlots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("grade %s: waiting for a grading slot: %w", sess.ID, ctx.Err())
	}
	defer func() { <-h.gradeSlots }()
	if w := h.o.Now().Sub(waited); w > time.Second {
		h.log.Info("grading waited for a slot", "session", sess.ID, "waited", w.Round(time.Millisecond))
	}
	trigger := grading.TriggerSubmit
	if sess.SubmitReason == session.ByDeadline {
		trigger = grading.TriggerDeadline
	}
	gctx, cancel := context.WithTimeout(ctx, grading.Budget(ex))
	defer cancel()
	res, err := grading.Grade(gctx, h.o.Runtime, ex, sess.ID, grading.Options{
		Answers: store.AnswerTexts(answers), Trigger: trigger, Now: h.o.Now, Observer: h.o.Grading, LabID: sess.LabID,
	})
	if err != nil {
		return err
	}
	if h.o.Grading != nil {
		h.o.Grading.Graded(trigger, time.Duration(res.DurationMS)*time.Millisecond)
	}
	if err := fence(ctx, lease); err != nil {
		return fmt.Errorf("grade %s: %w", sess.ID, err)
	}
	if err := h.o.Store.SaveResults(ctx, sess.ID, res); err != nil {
		return fmt.Errorf("grade %s: %w", sess.ID, err)
	}
	return h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "graded",
		Detail: map[string]any{"trigger": trigger, "score": res.Score, "max_score": res.MaxScore, "duration_ms": res.DurationMS}})
}

// gradedSubmission reports whether results of trigger graded a submitted
// lab (not a regrade or a candidate's own check of a live one).
func gradedSubmission(trigger string) bool {
	return trigger == grading.TriggerSubmit || trigger == grading.TriggerDeadline
}
