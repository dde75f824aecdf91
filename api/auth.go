package api

import (
	"errors"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/session"
)

// Locals keys set by the auth middleware.
const (
	localSession = "session"
	localAdmin   = "admin"
	// localSessionID is the session a route acts on, as its guard admitted
	// it: the :id of /api/session/:id, or the caller's own session on the
	// seed's routes, which name none.
	localSessionID = "session-id"
)

// sessionID is the session the route's guard admitted; "" (which no
// session has) on a route without one.
func sessionID(c *fiber.Ctx) string { id, _ := c.Locals(localSessionID).(string); return id }

func bearer(c *fiber.Ctx) string { return auth.Bearer(c.Get(fiber.HeaderAuthorization)) }

// isAdmin reports whether the request carries the admin token, as a
// bearer token or the admin cookie.
func (s *Server) isAdmin(c *fiber.Ctx) bool {
	return s.o.Auth.AnyAdmin(bearer(c), c.Cookies(auth.AdminCookie))
}

// candidate resolves the candidate's session from bearer token or cookie.
func (s *Server) candidate(c *fiber.Ctx) (*session.Session, error) {
	sess, err := s.o.Auth.Candidate(c.UserContext(), bearer(c), c.Cookies(auth.CandidateCookie))
	if errors.Is(err, auth.ErrUnauthorized) {
		return nil, errAuth
	}
	return sess, err
}

// requireAdmin guards admin routes.
func (s *Server) requireAdmin(c *fiber.Ctx) error {
	if !s.isAdmin(c) {
		// A signed-in candidate is known but not allowed; anyone else has
		// not authenticated as an admin at all.
		if _, err := s.candidate(c); err == nil {
			return fail(fiber.StatusForbidden, "admin credentials required")
		}
		return fail(fiber.StatusUnauthorized, "admin credentials required")
	}
	c.Locals(localAdmin, true)
	return c.Next()
}

// requireOwner guards /api/session/:id routes: the candidate who owns the
// session, or an admin.
func (s *Server) requireOwner(c *fiber.Ctx) error {
	if s.isAdmin(c) {
		c.Locals(localAdmin, true)
		c.Locals(localSessionID, c.Params("id"))
		return c.Next()
	}
	sess, err := s.candidate(c)
	if err != nil {
		return err
	}
	if sess.ID != c.Params("id") {
		// Do not reveal whether the other session exists.
		return fail(fiber.StatusForbidden, "not your session")
	}
	c.Locals(localSession, sess)
	c.Locals(localSessionID, sess.ID)
	return c.Next()
}

// requireCandidate guards routes that act on the caller's own session.
func (s *Server) requireCandidate(c *fiber.Ctx) error {
	sess, err := s.candidate(c)
	if err != nil {
		return err
	}
	c.Locals(localSession, sess)
	return c.Next()
}

func (s *Server) setCookie(c *fiber.Ctx, name, value string, ttl time.Duration) {
	c.Cookie(auth.Cookie(name, value, s.o.CookieSecure, ttl))
}

func (s *Server) clearCookie(c *fiber.Ctx, name string) {
	c.Cookie(auth.ClearCookie(name, s.o.CookieSecure))
}

func isAdminCtx(c *fiber.Ctx) bool { v, _ := c.Locals(localAdmin).(bool); return v }

func actor(c *fiber.Ctx) string {
	if isAdminCtx(c) {
		return "admin"
	}
	if s, ok := c.Locals(localSession).(*session.Session); ok {
		return s.Email
	}
	return "anonymous"
}
