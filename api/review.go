package api

import (
	"context"
	"errors"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// DefaultReviewTTL is how long a review lab lives when Options.ReviewTTL
// is zero.
const DefaultReviewTTL = 2 * time.Hour

// reviewQueue is the part of the scheduler that starts, ends and regrades
// in review labs.
type reviewQueue interface {
	ReviewStart(ctx context.Context, p scheduler.ReviewPayload) (bool, error)
	ReviewEnd(ctx context.Context, p scheduler.ReviewPayload) (bool, error)
	ReviewRegrade(ctx context.Context, p scheduler.ReviewPayload) (bool, error)
}

var _ reviewQueue = (*scheduler.Enqueuer)(nil)

func (s *Server) reviewRoutes(adm fiber.Router) {
	adm.Post("/session/:id/review", s.adminStartReview)
	adm.Get("/session/:id/review", s.adminReview)
	adm.Delete("/session/:id/review", s.adminEndReview)
}

func (s *Server) reviewQueue() (reviewQueue, error) {
	q, ok := s.o.Enqueuer.(reviewQueue)
	if !ok {
		return nil, fail(fiber.StatusServiceUnavailable, "this API cannot start review labs")
	}
	return q, nil
}

func (s *Server) reviewTTL() time.Duration {
	if s.o.ReviewTTL > 0 {
		return s.o.ReviewTTL
	}
	return DefaultReviewTTL
}

// adminStartReview is POST /api/admin/session/:id/review: a review lab
// restored from the finished session's archive. A session with a live
// review lab gets that one (200); a new one is 202 and comes up in a
// worker.
func (s *Server) adminStartReview(c *fiber.Ctx) error {
	sess, ex, err := s.adminSessionExam(c)
	if err != nil {
		return err
	}
	rv, created, err := s.startReview(c.UserContext(), sess, ex, actor(c))
	if err != nil {
		return err
	}
	code := fiber.StatusOK
	if created {
		code = fiber.StatusAccepted
	}
	return c.Status(code).JSON(fiber.Map{"review": rv, "created": created})
}

// startReview checks that a review lab can be restored for sess and
// records and queues one, or returns its live one.
func (s *Server) startReview(ctx context.Context, sess *session.Session, ex *exam.Exam, by string) (*store.Review, bool, error) {
	q, err := s.reviewQueue()
	if err != nil {
		return nil, false, err
	}
	if !sess.Status.Terminal() {
		return nil, false, fail(fiber.StatusConflict, "the session is "+string(sess.Status)+
			"; a review lab is restored from the archive of a session that has ended (while its lab is up, watch its terminals instead)")
	}
	if cur, err := s.o.Store.ReviewOf(ctx, sess.ID); err == nil {
		return cur, false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, false, err
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: sess.ID, Candidate: sess.Email})
	if err != nil {
		return nil, false, err
	}
	if _, err := s.o.Store.CheckArchive(ctx, sess.ID, spec.Nodes, true); err != nil {
		return nil, false, err
	}
	rv, created, err := s.o.Store.StartReview(ctx, sess, by, s.reviewTTL())
	if err != nil || !created {
		return rv, false, err
	}
	if _, err := q.ReviewStart(ctx, scheduler.ReviewPayload{ReviewID: rv.ID, SessionID: sess.ID, By: by}); err != nil {
		// Nothing will bring it up: it ends now and gives its slot back.
		_, _ = s.o.Store.UpdateReview(context.WithoutCancel(ctx), rv.ID, func(r *store.Review) error {
			r.Status, r.Detail, r.EndedAt = store.ReviewFailed, "could not be queued", s.o.Now().UTC()
			return nil
		})
		return nil, false, err
	}
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: by, Action: "review-start",
		Detail: map[string]any{"review": rv.ID, "expires_at": rv.ExpiresAt, "ttl": rv.TTL.String()}})
	return rv, true, nil
}

// adminReview is GET /api/admin/session/:id/review: the session's live
// review lab, or null.
func (s *Server) adminReview(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.Store.Get(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	rv, err := s.o.Store.ReviewOf(ctx, sess.ID)
	if errors.Is(err, store.ErrNotFound) {
		return c.JSON(fiber.Map{"review": nil})
	}
	if err != nil {
		return err
	}
	// Coming up, the lab's nodes are its worker's progress; once ready
	// the record has them, kept in step by the lost-lab sweep. The
	// runtime is not asked here (see progressNodes).
	if rv.Status == store.ReviewStarting {
		if p, err := s.o.Store.ReadProgress(ctx, rv.ID); err != nil {
			s.log.Warn("review lab progress", "review", rv.ID, "err", err)
		} else if p != nil {
			rv.Nodes = p.Nodes
		}
	}
	return c.JSON(fiber.Map{"review": rv})
}

// adminEndReview is DELETE /api/admin/session/:id/review: the live review
// lab is removed now rather than at its expiry (202; a worker removes
// it).
func (s *Server) adminEndReview(c *fiber.Ctx) error {
	ctx := c.UserContext()
	q, err := s.reviewQueue()
	if err != nil {
		return err
	}
	sess, err := s.o.Store.Get(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	rv, err := s.o.Store.ReviewOf(ctx, sess.ID)
	if errors.Is(err, store.ErrNotFound) {
		return fail(fiber.StatusNotFound, "the session has no review lab running")
	}
	if err != nil {
		return err
	}
	by := actor(c)
	if _, err := q.ReviewEnd(ctx, scheduler.ReviewPayload{ReviewID: rv.ID, SessionID: sess.ID, By: by, Reason: "ended early by " + by}); err != nil {
		return err
	}
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: by, Action: "review-end", Detail: map[string]any{"review": rv.ID}})
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": true, "review": rv})
}

// regradeInReview queues a regrade of a finished session in its review
// lab, starting one (or reusing the running one): 202 with the review lab,
// whose record shows the regrade's progress and outcome.
func (s *Server) regradeInReview(c *fiber.Ctx, sess *session.Session, ex *exam.Exam) error {
	ctx := c.UserContext()
	q, err := s.reviewQueue()
	if err != nil {
		return err
	}
	by := actor(c)
	rv, _, err := s.startReview(ctx, sess, ex, by)
	if err != nil {
		return err
	}
	n := nonce()
	rv, err = s.o.Store.UpdateReview(ctx, rv.ID, func(r *store.Review) error {
		if !r.Status.Live() {
			return fail(fiber.StatusConflict, "the review lab ended a moment ago; regrade again to start another")
		}
		r.Regrade = &store.ReviewRegrade{State: "queued", Nonce: n, QueuedAt: s.o.Now().UTC(), QueuedBy: by}
		return nil
	})
	if err != nil {
		return err
	}
	if _, err := q.ReviewRegrade(ctx, scheduler.ReviewPayload{ReviewID: rv.ID, SessionID: sess.ID, By: by, Nonce: n}); err != nil {
		return err
	}
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: by, Action: "regrade-queued", Detail: map[string]any{"review": rv.ID, "nonce": n}})
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": true, "in_review_lab": true, "review": rv, "nonce": n})
}
