package api

import (
	"context"
	"fmt"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// "Check my work": a candidate runs one task's checks on their live lab
// and learns pass or fail, with the names of the checks that are not
// hidden — never a command, an expected output or what a check printed.
// Runs are counted per task in the store and limited to the exam's
// grading.candidate_checks. The results are the candidate's alone: they
// never become the session's results.

// CheckView is one visible check as a candidate sees it.
type CheckView struct {
	Name   string `json:"name"`
	Passed bool   `json:"passed"`
}

// HiddenView counts the hidden checks of a task.
type HiddenView struct {
	Passed int `json:"passed"`
	Total  int `json:"total"`
}

// CheckMyWork is the answer to a candidate's check of one task.
type CheckMyWork struct {
	Task      string      `json:"task"`
	Passed    bool        `json:"passed"`
	Checks    []CheckView `json:"checks"`
	Hidden    *HiddenView `json:"hidden,omitempty"`
	Remaining int         `json:"remaining"`
	Limit     int         `json:"limit"`
}

// candidateChecks says whether "check my work" is on and how many runs
// each task has left.
func (s *Server) candidateChecks(c *fiber.Ctx) error {
	sess, ex, err := s.sessionExam(c)
	if err != nil {
		return err
	}
	limit := ex.Grading.CandidateChecks
	left := map[string]int{}
	if limit > 0 {
		used, err := s.o.Store.CandidateChecksUsed(c.UserContext(), sess.ID)
		if err != nil {
			return err
		}
		for _, t := range ex.Tasks {
			if len(t.Checks) > 0 {
				left[t.ID] = max(limit-used[t.ID], 0)
			}
		}
	}
	return c.JSON(fiber.Map{"enabled": limit > 0 && s.o.Runner != nil, "limit": limit, "remaining": left})
}

func (s *Server) checkMyWork(c *fiber.Ctx) error {
	if isAdminCtx(c) {
		return fail(fiber.StatusForbidden, "check my work is the candidate's own; admins regrade the session instead")
	}
	ctx := c.UserContext()
	sess, ex, err := s.sessionExam(c)
	if err != nil {
		return err
	}
	limit := ex.Grading.CandidateChecks
	if limit <= 0 || s.o.Runner == nil {
		return fail(fiber.StatusNotFound, "check my work is not available in this exam")
	}
	taskID := c.Params("task")
	t, ok := ex.Task(taskID)
	if !ok {
		return fail(fiber.StatusNotFound, "no task "+quote(taskID)+" in this exam")
	}
	if len(t.Checks) == 0 {
		return fail(fiber.StatusBadRequest, "task "+quote(taskID)+" has no checks to run")
	}
	if sess.Status != session.StateReady {
		return fail(fiber.StatusConflict, "the session is "+string(sess.Status)+"; checks run only while the lab is live")
	}
	remaining, ok, err := s.o.Store.CandidateCheck(ctx, sess.ID, taskID, limit)
	if err != nil {
		return err
	}
	if !ok {
		return c.Status(fiber.StatusTooManyRequests).JSON(fiber.Map{
			"error":     fmt.Sprintf("you have used all %d checks of this task", limit),
			"remaining": 0, "limit": limit,
		})
	}
	res, err := s.runCandidateCheck(ctx, sess, ex, taskID)
	if err != nil {
		return err
	}
	view := candidateView(res, taskID)
	view.Remaining, view.Limit = remaining, limit
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "candidate", Action: "check-my-work",
		Detail: map[string]any{"task": taskID, "passed": view.Passed, "score": res.Score, "remaining": remaining}})
	return c.JSON(view)
}

func (s *Server) runCandidateCheck(ctx context.Context, sess *session.Session, ex *exam.Exam, taskID string) (*grading.Results, error) {
	return s.grade(ctx, ex, sess.ID, grading.Options{Tasks: []string{taskID}, Trigger: grading.TriggerCandidate, LabID: sess.LabID})
}

// candidateView keeps of res what a candidate may see: pass or fail, and
// the names of the checks that are not hidden.
func candidateView(res *grading.Results, taskID string) CheckMyWork {
	v := CheckMyWork{Task: taskID, Passed: true, Checks: []CheckView{}}
	for _, t := range res.Tasks {
		if t.ID != taskID {
			continue
		}
		for _, cr := range t.Checks {
			v.Passed = v.Passed && cr.Passed
			if cr.Hidden {
				if v.Hidden == nil {
					v.Hidden = &HiddenView{}
				}
				v.Hidden.Total++
				if cr.Passed {
					v.Hidden.Passed++
				}
				continue
			}
			v.Checks = append(v.Checks, CheckView{Name: cr.Name, Passed: cr.Passed})
		}
	}
	return v
}
