package api

import (
	"context"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// maxExtendMinutes bounds one deadline change either way (a day).
const maxExtendMinutes = 24 * 60

// actionRoutes adds the admin's actions on one session. Each is recorded in
// the session's audit log with actor "admin" before it answers.
//
//	POST /api/admin/session/:id/snapshot             archive the live lab now (it stays up)
//	POST /api/admin/session/:id/submit               force submit: archive, then clean up
//	POST /api/admin/session/:id/cleanup              remove the lab (archiving first if still open)
//	POST /api/admin/session/:id/extend               {"minutes": N}: move the deadline by N minutes
//	POST /api/admin/session/:id/nodes/:node/reset    replace one node with a fresh container
//	POST /api/admin/session/:id/terminals/:node/watch  record a live view; answers the WebSocket path
//	GET  /api/admin/retention?days=N                 what a retention run would delete (dry run)
func (s *Server) actionRoutes(adm fiber.Router) {
	adm.Post("/session/:id/snapshot", s.adminSnapshot)
	adm.Post("/session/:id/submit", s.adminSubmit)
	adm.Post("/session/:id/cleanup", s.adminCleanup)
	adm.Post("/session/:id/extend", s.adminExtend)
	adm.Post("/session/:id/nodes/:node/reset", s.adminResetNode)
	adm.Post("/session/:id/terminals/:node/watch", s.adminWatch)
	adm.Get("/retention", s.adminRetention)
}

func (s *Server) audit(ctx context.Context, id, action string, detail map[string]any) error {
	return s.o.Store.Audit(ctx, id, store.AuditEntry{Actor: "admin", Action: action, Detail: detail})
}

// adminSubmit ends the candidate's work on the admin's word: the session
// is submitted (reason "admin"), archived and cleaned up like any submit.
func (s *Server) adminSubmit(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.Store.Get(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	if !sess.Status.Open() {
		return fail(fiber.StatusConflict, "session is "+string(sess.Status)+"; only an open session can be submitted")
	}
	if sess, err = s.submitSession(ctx, sess.ID, session.ByAdmin); err != nil {
		return err
	}
	if err := s.audit(ctx, sess.ID, "force-submit", nil); err != nil {
		return err
	}
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": true, "session": s.view(sess)})
}

// adminExtend moves an open session's deadline by N minutes (negative
// shortens it). A session whose lab is not up yet has no deadline; its
// time allowance changes instead, and the deadline counts from ready. The
// deadline index is updated with the record, so the expiry sweep acts on
// the new time; a deadline moved into the past is enforced on its next run.
func (s *Server) adminExtend(c *fiber.Ctx) error {
	ctx := c.UserContext()
	var req struct {
		Minutes int    `json:"minutes"`
		Reason  string `json:"reason"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Minutes == 0 || req.Minutes < -maxExtendMinutes || req.Minutes > maxExtendMinutes {
		return fail(fiber.StatusBadRequest, "minutes must be a non-zero number from -1440 to 1440")
	}
	if len(req.Reason) > 500 {
		return fail(fiber.StatusBadRequest, "reason is longer than 500 characters")
	}
	by := time.Duration(req.Minutes) * time.Minute
	var before time.Time
	sess, err := s.o.Store.Update(ctx, c.Params("id"), func(x *session.Session) error {
		if !x.Status.Open() {
			return fail(fiber.StatusConflict, "session is "+string(x.Status)+"; its deadline no longer applies")
		}
		before = x.Deadline
		return x.Extend(by)
	})
	if err != nil {
		return err
	}
	detail := map[string]any{"minutes": req.Minutes, "duration_seconds": sess.DurationSeconds}
	if !sess.Deadline.IsZero() {
		detail["deadline_before"] = before
		detail["deadline"] = sess.Deadline
	}
	if req.Reason != "" {
		detail["reason"] = req.Reason
	}
	if err := s.audit(ctx, sess.ID, "extend-deadline", detail); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"session": s.view(sess)})
}

// sessionNode loads the session and checks :node is one of its exam's nodes.
func (s *Server) sessionNode(c *fiber.Ctx) (*session.Session, string, error) {
	sess, err := s.o.Store.Get(c.UserContext(), c.Params("id"))
	if err != nil {
		return nil, "", err
	}
	node := c.Params("node")
	if !store.ValidTerminalID(node) {
		return nil, "", fail(fiber.StatusBadRequest, "bad node name "+quote(node))
	}
	ex, ok := s.o.Exams(sess.ExamID)
	if !ok {
		return nil, "", fail(fiber.StatusConflict, "the session's exam is not loaded")
	}
	if _, ok := ex.Node(node); !ok {
		return nil, "", fail(fiber.StatusNotFound, "no node "+quote(node)+" in this lab")
	}
	return sess, node, nil
}

// adminResetNode replaces one node of a ready lab with a fresh container;
// the worker records "node-reset-done" when it has.
func (s *Server) adminResetNode(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, node, err := s.sessionNode(c)
	if err != nil {
		return err
	}
	if sess.Status != session.StateReady {
		return fail(fiber.StatusConflict, "session is "+string(sess.Status)+"; nodes can be reset only while the lab is ready")
	}
	n := nonce()
	if _, err := s.o.Enqueuer.ResetNode(ctx, sess.ID, node, n); err != nil {
		return err
	}
	if err := s.audit(ctx, sess.ID, "reset-node", map[string]any{"node": node, "nonce": n}); err != nil {
		return err
	}
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": true, "node": node, "nonce": n})
}

// adminWatch records that an admin opens a live, read-only view of a
// terminal, and answers the relay's WebSocket path for it. The relay checks
// the admin credentials again on the WebSocket itself.
func (s *Server) adminWatch(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, node, err := s.sessionNode(c)
	if err != nil {
		return err
	}
	if !sess.Status.HasLab() {
		return fail(fiber.StatusConflict, "session is "+string(sess.Status)+" and has no lab to watch")
	}
	if err := s.audit(ctx, sess.ID, "watch-terminal", map[string]any{"node": node}); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"node": node, "websocket": "/ws/admin/session/" + sess.ID + "/terminal/" + node})
}

// adminRetention lists what a retention run with ?days=N would delete
// now, deleting nothing. Without days it uses the configured policy.
func (s *Server) adminRetention(c *fiber.Ctx) error {
	days := s.o.RetentionDays
	if v := c.Query("days"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 36500 {
			return fail(fiber.StatusBadRequest, "days must be a number from 1 to 36500")
		}
		days = n
	}
	if days <= 0 {
		return fail(fiber.StatusBadRequest, "retention is off: pass ?days=N to see what N days would delete")
	}
	cutoff := s.o.Now().Add(-time.Duration(days) * 24 * time.Hour)
	victims, err := s.o.Store.EndedBefore(c.UserContext(), cutoff)
	if err != nil {
		return err
	}
	if victims == nil {
		victims = []store.Summary{}
	}
	return c.JSON(fiber.Map{"dry_run": true, "days": days, "cutoff": cutoff.UTC(), "count": len(victims), "sessions": victims})
}
