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

// candidate resolves the candidate's session from bearer token or cookie.
func (s *Server) candidate(c *fiber.Ctx) (*session.Session, error) {
	sess, err := s.o.Auth.Candidate(c.UserContext(), bearer(c), c.Cookies(auth.CandidateCookie))
	if errors.Is(err, auth.ErrUnauthorized) {
		return nil, errAuth
	}
	return sess, err
}

// adminCredential reports whether the request carries the admin token.
// A presented credential is a guess at that token unless it proves to be
// the token, so the client address's wrong-credential budget (the one
// sign-ins spend) is checked first and charged when the credential is
// nobody's: the admin routes are no way around the sign-in limits.
func (s *Server) adminCredential(c *fiber.Ctx) (bool, error) {
	b, ck := bearer(c), c.Cookies(auth.AdminCookie)
	if b == "" && ck == "" {
		return false, nil
	}
	if err := s.signin.Guard(c); err != nil {
		return false, err
	}
	return s.o.Auth.AnyAdmin(b, ck), nil
}

// requireAdmin guards admin routes.
func (s *Server) requireAdmin(c *fiber.Ctx) error {
	ok, err := s.adminCredential(c)
	if err != nil {
		return err
	}
	if !ok {
		// A signed-in candidate is known but not allowed; anyone else has
		// not authenticated as an admin at all.
		if _, err := s.candidate(c); err == nil {
			return fail(fiber.StatusForbidden, "admin credentials required")
		}
		if bearer(c) != "" || c.Cookies(auth.AdminCookie) != "" {
			s.signin.Failed(c, adminAccount)
		}
		return fail(fiber.StatusUnauthorized, "admin credentials required")
	}
	c.Locals(localAdmin, true)
	return c.Next()
}

// requireOwner guards /api/session/:id routes: the candidate who owns the
// session, or an admin.
func (s *Server) requireOwner(c *fiber.Ctx) error {
	// The candidate's own token first: a hall's candidates never wait on
	// the address's wrong-credential budget (spent, perhaps, by typos).
	sess, err := s.candidate(c)
	if errors.Is(err, errAuth) {
		ok, aerr := s.adminCredential(c)
		if aerr != nil {
			return aerr
		}
		if ok {
			c.Locals(localAdmin, true)
			c.Locals(localSessionID, c.Params("id"))
			return c.Next()
		}
		if bearer(c) != "" || c.Cookies(auth.AdminCookie) != "" {
			s.signin.Failed(c, adminAccount)
		}
	}
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
