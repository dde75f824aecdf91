package api

import (
	"encoding/json"
	"errors"
	"net/url"
	"slices"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// seedRoutes keeps the seed's candidate routes for clients written against
// the seed. They name no session: each acts on the caller's own, found from
// the credential, and is the modern route's handler behind a guard that
// says which session that is. The terminal route is the relay's
// (/api/terminal/:container).
func (s *Server) seedRoutes() {
	a := s.app
	a.Post("/api/candidate/login", s.login)
	a.Post("/api/candidate/:email/start", s.requireOwnSession, s.requireOwnEmail, s.start)
	a.Post("/api/candidate/answers", s.requireOwnSession, s.saveSeedAnswers)
	a.Post("/api/candidate/submit", s.requireOwnSession, s.submit)
}

// requireOwnSession admits a candidate to their own session. The admin
// token is no candidate's: it is refused (403) rather than taken for no
// credential at all, as on the relay's candidate routes.
func (s *Server) requireOwnSession(c *fiber.Ctx) error {
	sess, err := s.candidate(c)
	if errors.Is(err, errAuth) {
		admin, aerr := s.adminCredential(c)
		if aerr != nil {
			return aerr
		}
		if admin {
			return fail(fiber.StatusForbidden, "these routes act on a candidate's own session; admins use /api/session/:id")
		}
		if bearer(c) != "" || c.Cookies(auth.AdminCookie) != "" {
			s.signin.Failed(c, adminAccount)
		}
	}
	if err != nil {
		return err
	}
	c.Locals(localSession, sess)
	c.Locals(localSessionID, sess.ID)
	return c.Next()
}

// requireOwnEmail checks the :email of the seed's start route names the
// signed-in candidate. The email only has to agree with the credential:
// on its own it lets no one start anything.
func (s *Server) requireOwnEmail(c *fiber.Ctx) error {
	raw, err := url.PathUnescape(c.Params("email"))
	if err != nil {
		return fail(fiber.StatusBadRequest, "the path needs a valid email address")
	}
	email, err := store.NormalizeEmail(raw)
	if err != nil {
		return fail(fiber.StatusBadRequest, "the path needs a valid email address")
	}
	own, err := store.NormalizeEmail(c.Locals(localSession).(*session.Session).Email)
	if err != nil || email != own {
		// Do not reveal whether the other candidate has a session.
		return fail(fiber.StatusForbidden, "not your session")
	}
	return c.Next()
}

// saveSeedAnswers is the seed's POST /api/candidate/answers: one answer,
// {"task_id": "…", "value": <json>}, or several, {"answers": {"t1": <json>,
// …}}. Every answer is checked as the per-task route checks it before any
// is saved, so a batch with one bad task id saves nothing.
func (s *Server) saveSeedAnswers(c *fiber.Ctx) error {
	sess, ex, err := s.sessionExam(c)
	if err != nil {
		return err
	}
	if len(c.Body()) > len(ex.Tasks)*(s.o.Store.MaxAnswerBytes()+2*answerSlack)+answerSlack {
		return fail(fiber.StatusRequestEntityTooLarge, "answers too large")
	}
	var req struct {
		TaskID  *string                    `json:"task_id"`
		Value   json.RawMessage            `json:"value"`
		Answers map[string]json.RawMessage `json:"answers"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	batch := req.Answers != nil
	switch {
	case batch && (req.TaskID != nil || req.Value != nil):
		return fail(fiber.StatusBadRequest, `request body has either "task_id" and "value", or "answers"`)
	case batch && len(req.Answers) == 0:
		return fail(fiber.StatusBadRequest, `"answers" names no task`)
	case !batch && req.TaskID == nil:
		return fail(fiber.StatusBadRequest, `request body needs "task_id" and "value", or "answers"`)
	case !batch:
		req.Answers = map[string]json.RawMessage{*req.TaskID: req.Value}
	}

	ids := make([]string, 0, len(req.Answers))
	for id := range req.Answers {
		ids = append(ids, id)
	}
	slices.Sort(ids) // the same refusal for the same batch, and saves in order
	for _, id := range ids {
		if err := knownTask(ex, id); err != nil {
			return err
		}
		if err := s.checkValue(req.Answers[id]); err != nil {
			return fail(statusOf(err), "task "+quote(id)+": "+err.Error())
		}
	}
	saved := make([]store.Answer, 0, len(ids))
	for _, id := range ids {
		a, err := s.o.Store.SaveAnswer(c.UserContext(), sess.ID, id, req.Answers[id])
		if err != nil {
			return err
		}
		saved = append(saved, a)
	}
	if !batch {
		return c.JSON(saved[0])
	}
	return c.JSON(fiber.Map{"answers": saved})
}
