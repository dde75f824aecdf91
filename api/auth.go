package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Cookie names. Both are HttpOnly and SameSite=Strict, so page scripts
// cannot read them and other sites cannot ride them.
const (
	CandidateCookie = "examlab_session"
	AdminCookie     = "examlab_admin"
)

// Locals keys set by the auth middleware.
const (
	localSession = "session"
	localAdmin   = "admin"
)

func bearer(c *fiber.Ctx) string {
	h := c.Get(fiber.HeaderAuthorization)
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// isAdmin reports whether the request carries the admin token, as a
// bearer token or the admin cookie.
func (s *Server) isAdmin(c *fiber.Ctx) bool {
	for _, t := range []string{bearer(c), c.Cookies(AdminCookie)} {
		if t != "" && s.adminTokenMatches(t) {
			return true
		}
	}
	return false
}

// adminTokenMatches compares in constant time (over fixed-size hashes, so
// the length does not leak either).
func (s *Server) adminTokenMatches(t string) bool {
	a := sha256.Sum256([]byte(t))
	b := sha256.Sum256([]byte(s.o.AdminToken))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// candidate resolves the candidate's session from cookie or bearer token.
func (s *Server) candidate(c *fiber.Ctx) (*session.Session, error) {
	for _, t := range []string{bearer(c), c.Cookies(CandidateCookie)} {
		if t == "" || s.adminTokenMatches(t) {
			continue
		}
		sess, err := s.o.Store.ByToken(c.UserContext(), t)
		if err == nil {
			return sess, nil
		}
		if err != store.ErrUnauthorized {
			return nil, err
		}
	}
	return nil, errAuth
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
	c.Cookie(&fiber.Cookie{
		Name:     name,
		Value:    value,
		Path:     "/",
		HTTPOnly: true,
		Secure:   s.o.CookieSecure,
		SameSite: fiber.CookieSameSiteStrictMode,
		Expires:  time.Now().Add(ttl),
	})
}

func (s *Server) clearCookie(c *fiber.Ctx, name string) {
	c.Cookie(&fiber.Cookie{Name: name, Value: "", Path: "/", HTTPOnly: true, Secure: s.o.CookieSecure,
		SameSite: fiber.CookieSameSiteStrictMode, Expires: time.Unix(1, 0)})
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
