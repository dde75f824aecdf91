package api

import (
	"context"
	"errors"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
)

// queueRoutes adds the admission queue's admin routes. Admitting and
// removing are recorded in the session's audit log.
//
//	GET    /api/admin/queue                  every sitting's running labs, capacity and line
//	POST   /api/admin/queue/:session/admit   admit now, beyond the capacity and the lab limit
//	DELETE /api/admin/queue/:session         {"reason"} optional: take out of the line; the session fails with the reason
func (s *Server) queueRoutes(adm fiber.Router) {
	adm.Get("/queue", s.adminQueue)
	adm.Post("/queue/:session/admit", s.adminQueueAdmit)
	adm.Delete("/queue/:session", s.adminQueueRemove)
}

// queuePlace adds a queued session's place in line to its view: position
// (1: next), how many go first and, once labs have ended lately, a rough
// wait (store.EstimateWait). Without it the page still says it waits.
func (s *Server) queuePlace(ctx context.Context, sess *session.Session, v *sessionView) {
	p, ok, err := s.o.Store.QueuePlace(ctx, sess)
	if err != nil {
		s.log.Warn("queue place", "session", sess.ID, "err", err)
		return
	}
	if !ok {
		return
	}
	ahead := p.Ahead
	v.QueuePosition, v.QueueAhead = p.Position, &ahead
	if p.HasEstimate {
		secs := int64(p.Estimate / time.Second)
		v.EstimateSeconds = &secs
	}
}

func (s *Server) adminQueue(c *fiber.Ctx) error {
	q, err := s.o.Store.Queue(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(q)
}

// queueRefusal answers an admission action on a session that does not
// wait in the queue.
func queueRefusal(err error) error {
	if errors.Is(err, scheduler.ErrNotQueuedForAdmission) {
		return fail(fiber.StatusConflict, err.Error())
	}
	return err
}

// adminQueueAdmit gives a queued session a lab slot now, whatever its
// sitting's capacity and the deployment's limit.
func (s *Server) adminQueueAdmit(c *fiber.Ctx) error {
	ctx := c.UserContext()
	before, err := s.o.Store.Get(ctx, c.Params("session"))
	if err != nil {
		return err
	}
	sess, err := scheduler.AdmitNow(ctx, s.o.Store, s.o.Enqueuer, before.ID, s.o.Now())
	if errors.Is(err, scheduler.ErrNotQueued) {
		s.log.Error("enqueue provision", "session", before.ID, "err", err)
		return fail(fiber.StatusServiceUnavailable, "admitted, but the lab could not be queued yet; it will be retried")
	}
	if err != nil {
		return queueRefusal(err)
	}
	detail := map[string]any{"from": before.Status}
	if before.Status == session.StateQueued {
		detail["waited_seconds"] = int64(s.o.Now().Sub(before.StartedAt) / time.Second)
	}
	if err := s.audit(ctx, sess.ID, "queue-admit", detail); err != nil {
		return err
	}
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"session": s.view(sess)})
}

// adminQueueRemove takes a session out of the line. It fails with the
// reason (see scheduler.Withdraw): the candidate's page says so, and a
// reset of their roster entry lets them start afresh.
func (s *Server) adminQueueRemove(c *fiber.Ctx) error {
	ctx := c.UserContext()
	var req struct {
		Reason string `json:"reason"`
	}
	if len(c.Body()) > 0 {
		if err := decodeJSON(c, &req); err != nil {
			return err
		}
	}
	if len(req.Reason) > 500 {
		return fail(fiber.StatusBadRequest, "reason is longer than 500 characters")
	}
	sess, err := scheduler.Withdraw(ctx, s.o.Store, c.Params("session"), req.Reason, s.o.Now())
	if err != nil {
		return queueRefusal(err)
	}
	detail := map[string]any{}
	if req.Reason != "" {
		detail["reason"] = req.Reason
	}
	if err := s.audit(ctx, sess.ID, "queue-remove", detail); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"session": s.view(sess)})
}
