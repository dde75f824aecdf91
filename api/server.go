// Package api is examlab's HTTP front: candidate and admin REST, auth,
// the embedded web pages, and the mount points for the terminal relay and
// the queue monitor.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/ratelimit"
	"github.com/examlab/examlab/store"
)

// enqueuer is the part of the scheduler the API drives.
type enqueuer interface {
	Provision(ctx context.Context, sessionID string, round int) (bool, error)
	Archive(ctx context.Context, sessionID, reason string) (bool, error)
	Cleanup(ctx context.Context, sessionID, reason string) (bool, error)
	Snapshot(ctx context.Context, sessionID, nonce string) (bool, error)
	ResetNode(ctx context.Context, sessionID, node, nonce string) (bool, error)
}

// gradingObserver receives grading measurements (metrics).
type gradingObserver interface {
	grading.Observer
	Graded(trigger string, d time.Duration)
}

// Options wires the API. Store, Enqueuer, Exam, Auth and Signin are required.
type Options struct {
	Store    *store.Store
	Enqueuer enqueuer
	// Exam is the exam new candidates take.
	Exam *exam.Exam
	// Exams resolves the exam of an existing session; default: only Exam.
	Exams func(id string) (*exam.Exam, bool)
	// RuntimeName is recorded on new sessions ("docker", "nomad").
	RuntimeName string
	// Runner, when set, runs the exam's checks in live labs: an admin's
	// regrade and a candidate's "check my work". It is the API's only
	// use of the runtime, and only those requests wait on it: status,
	// node states and listings come from the store (progressNodes).
	Runner runner
	// Grading hears of every check run and every grading (metrics);
	// optional.
	Grading gradingObserver
	// Auth checks admin and candidate credentials (shared with the relay).
	Auth *auth.Auth
	// CookieSecure marks cookies Secure (serve behind HTTPS).
	CookieSecure bool
	// Signin limits sign-ins, in Redis so that every API process shares
	// the budgets.
	Signin *ratelimit.Signin
	// Proxies decide each request's client address: the forwarding header
	// is read only from a trusted proxy. Zero: the socket peer.
	Proxies ratelimit.Proxies
	// PublicURL is how browsers reach the API; invitation links start
	// with it. Default: the URL of the request that asks for a link.
	PublicURL string
	// Mounts run after the API's own routes are registered: the relay's
	// WebSocket routes, the queue monitor, metrics.
	Mounts []func(app *fiber.App)
	// BodyLimit caps request bodies; default 1 MiB.
	BodyLimit int
	// Ops are the health, readiness, metrics and queue-monitor endpoints.
	Ops OpsOptions
	// ReviewTTL is how long a review lab lives; default DefaultReviewTTL.
	ReviewTTL time.Duration
	// RetentionDays is the configured policy the retention dry run uses
	// when the admin names no number of days; 0: off.
	RetentionDays int
	Logger        *slog.Logger
	Now           func() time.Time
}

// Server is the Fiber application.
type Server struct {
	o      Options
	app    *fiber.App
	log    *slog.Logger
	signin signin
}

// New builds the API's routes.
func New(o Options) (*Server, error) {
	if o.Store == nil || o.Enqueuer == nil || o.Exam == nil || o.Auth == nil || o.Signin == nil {
		return nil, errors.New("new api: store, enqueuer, exam, auth and signin are required")
	}
	if o.Exams == nil {
		o.Exams = func(id string) (*exam.Exam, bool) { return o.Exam, id == o.Exam.ID }
	}
	if o.BodyLimit == 0 {
		o.BodyLimit = 1 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{o: o, log: o.Logger, signin: signin{limits: o.Signin, log: o.Logger}}
	s.app = fiber.New(fiber.Config{
		AppName:               "examlab",
		BodyLimit:             o.BodyLimit,
		ErrorHandler:          errorHandler(o.Logger),
		DisableStartupMessage: true,
		ReadTimeout:           30 * time.Second,
		IdleTimeout:           120 * time.Second,
	})
	s.app.Use(recover.New())
	s.app.Use(securityHeaders)
	s.app.Use(s.resolveClient)
	s.routes()
	for _, m := range o.Mounts {
		m(s.app)
	}
	s.app.Use(func(c *fiber.Ctx) error { return fail(fiber.StatusNotFound, "no such route: "+c.Path()) })
	return s, nil
}

// App returns the Fiber app (tests drive it with app.Test or a listener).
func (s *Server) App() *fiber.App { return s.app }

// Listen serves on addr until Shutdown.
func (s *Server) Listen(addr string) error { return s.app.Listen(addr) }

// Shutdown stops accepting connections and waits for in-flight requests.
func (s *Server) Shutdown(ctx context.Context) error { return s.app.ShutdownWithContext(ctx) }

func securityHeaders(c *fiber.Ctx) error {
	c.Set("X-Content-Type-Options", "nosniff")
	c.Set("X-Frame-Options", "DENY")
	c.Set("Referrer-Policy", "no-referrer")
	c.Set("Cache-Control", "no-store")
	return c.Next()
}

// localClient holds the request's client address (resolveClient).
const localClient = "client"

// resolveClient records the one client address every later handler, limit
// and log uses: the client the forwarding header names when the peer is
// a trusted proxy, else the peer. Fiber's c.IP() is left as the socket
// peer (its proxy support believes the leftmost, client-written entry),
// and the API does not use it.
func (s *Server) resolveClient(c *fiber.Ctx) error {
	c.Locals(localClient, s.o.Proxies.RequestClient(c))
	return c.Next()
}

// clientAddr is the request's client address (see resolveClient).
func clientAddr(c *fiber.Ctx) netip.Addr {
	a, _ := c.Locals(localClient).(netip.Addr)
	return a
}

func (s *Server) routes() {
	a := s.app

	// Candidate: login and the session they own. Sign-ins are limited
	// inside the handlers (s.signin), which know the account.
	a.Post("/api/login", s.login)
	a.Post("/api/logout", s.logout)
	a.Get("/api/signin", s.signinOptions)
	a.Get("/api/exam", s.examInfo)
	a.Get("/api/me", s.requireCandidate, s.me)

	own := a.Group("/api/session/:id", s.requireOwner)
	own.Get("/", s.sessionStatus)
	own.Get("/status", s.sessionStatus)
	own.Post("/start", s.start)
	own.Get("/answers", s.answers)
	own.Put("/answers/:taskId", s.saveAnswer)
	own.Post("/answers/:taskId", s.saveAnswer)
	own.Post("/submit", s.submit)
	own.Post("/terminal/:terminalId/history", s.postHistory)
	own.Get("/checks", s.candidateChecks)
	own.Post("/tasks/:task/check", s.checkMyWork)

	// Candidate: the seed's routes, kept for clients written against it.
	s.seedRoutes()

	// Admin: the seed's endpoints, same paths.
	a.Post("/api/admin/login", s.adminLogin)
	a.Post("/api/admin/logout", s.adminLogout)
	adm := a.Group("/api/admin", s.requireAdmin)
	adm.Get("/sessions", s.adminSessions)
	adm.Get("/session/:id/details", s.adminDetails)
	adm.Get("/leftovers", s.adminLeftovers)
	a.Post("/api/session/:id/snapshot", s.requireAdmin, s.adminSnapshot)
	a.Post("/api/session/:id/cleanup", s.requireAdmin, s.adminCleanup)
	s.actionRoutes(adm)
	s.lostRoutes(adm)
	s.gradingRoutes(adm)
	s.reviewRoutes(adm)
	s.sittingRoutes(adm)
	s.queueRoutes(adm)
	s.downloadRoutes(adm)
	s.evidenceRoutes(adm)
	s.opsRoutes()
	s.panelRoutes()
	s.pageRoutes()
}
