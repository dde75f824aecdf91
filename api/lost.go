package api

import (
	"context"
	"strconv"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
)

// reprovisioner queues the replacement of a session's lost lab; the
// scheduler's Enqueuer has it.
type reprovisioner interface {
	Reprovision(ctx context.Context, sessionID, nonce string) (bool, error)
}

// lostRoutes adds the admin's actions on a lab lost with its host:
//
//	POST /api/admin/session/:id/reprovision       a fresh lab of the same spec; the paused time is credited once it is ready
//	POST /api/admin/session/:id/archive-reachable submit, archiving only the nodes that can still be reached
func (s *Server) lostRoutes(adm fiber.Router) {
	adm.Post("/session/:id/reprovision", s.adminReprovision)
	adm.Post("/session/:id/archive-reachable", s.adminArchiveReachable)
}

// adminReprovision has a fresh lab made for a ready session whose lab is
// lost or unknown (its clock paused). What remains of the old lab is
// removed; answers, recordings and the audit log stay with the session.
// Asking again while the fresh lab is being made changes nothing.
func (s *Server) adminReprovision(c *fiber.Ctx) error {
	ctx := c.UserContext()
	rq, ok := s.o.Enqueuer.(reprovisioner)
	if !ok {
		return fail(fiber.StatusNotImplemented, "this deployment cannot re-provision labs")
	}
	var trouble session.Trouble
	sess, err := s.o.Store.Update(ctx, c.Params("id"), func(x *session.Session) error {
		switch {
		case x.Status != session.StateReady:
			return fail(fiber.StatusConflict, "the session is "+string(x.Status)+"; only a ready session's lab can be re-provisioned")
		case !x.Paused():
			return fail(fiber.StatusConflict, "the session's lab is not lost or unknown; there is nothing to re-provision (reset a single node instead)")
		}
		trouble = x.Trouble
		return x.BeginReprovision(s.o.Now())
	})
	if err != nil {
		return err
	}
	nonce := strconv.FormatInt(sess.Trouble.Reprovision.UnixNano(), 36)
	queued, err := rq.Reprovision(ctx, sess.ID, nonce)
	if err != nil {
		s.log.Error("enqueue reprovision", "session", sess.ID, "err", err)
		return fail(fiber.StatusServiceUnavailable, "the re-provision could not be queued; try again")
	}
	if trouble.Reprovision.IsZero() {
		detail := map[string]any{"lab_state": string(trouble.State), "reason": trouble.Reason, "paused_at": trouble.Since}
		if err := s.audit(ctx, sess.ID, "reprovision", detail); err != nil {
			return err
		}
	}
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": queued, "session": s.view(sess)})
}

// adminArchiveReachable submits a ready session whose lab is partly or
// wholly gone: the archive keeps the nodes that can still be reached and
// its manifest lists the others as missing; the session's answers and
// recordings are kept as with any submit.
func (s *Server) adminArchiveReachable(c *fiber.Ctx) error {
	ctx := c.UserContext()
	var trouble session.Trouble
	var nodes []lab.NodeStatus
	moved := false
	sess, err := s.o.Store.Update(ctx, c.Params("id"), func(x *session.Session) error {
		if x.Status != session.StateReady {
			return fail(fiber.StatusConflict, "the session is "+string(x.Status)+"; only a ready session can be archived as far as its lab can be reached")
		}
		trouble, nodes = x.Trouble, x.Nodes
		var err error
		moved, err = x.SubmitReachable(s.o.Now())
		return err
	})
	if err != nil {
		return err
	}
	if _, err := s.o.Enqueuer.Archive(ctx, sess.ID, sess.SubmitReason); err != nil {
		// The submit is recorded; the expiry sweep re-enqueues the
		// archive of a submitted session.
		s.log.Error("enqueue archive", "session", sess.ID, "err", err)
		return fail(fiber.StatusServiceUnavailable, "submitted, but the archive could not be queued yet; it will be retried")
	}
	if moved {
		unusable := []string{}
		for _, n := range nodes {
			if n.State != lab.StateRunning {
				unusable = append(unusable, n.Name+" ("+string(n.State)+")")
			}
		}
		detail := map[string]any{"lab_state": string(trouble.State), "reason": trouble.Reason, "nodes_not_running": unusable}
		if !trouble.Since.IsZero() {
			detail["paused_at"] = trouble.Since
		}
		if err := s.audit(ctx, sess.ID, "archive-reachable", detail); err != nil {
			return err
		}
	}
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": true, "session": s.view(sess)})
}

// pausedView shows a candidate a paused clock: the time left when it
// stopped, and nodes in plain words — the runtime's account of its hosts
// is for the exam staff.
func pausedView(sess *session.Session, v *sessionView) {
	if !sess.Paused() {
		return
	}
	v.Paused = true
	v.PausedAt = sess.Trouble.Since
	nodes := make([]lab.NodeStatus, len(v.Nodes))
	for i, n := range v.Nodes {
		nodes[i] = lab.NodeStatus{Name: n.Name, State: n.State, Detail: "unavailable; your time is paused"}
	}
	v.Nodes = nodes
}
