package api

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
)

// MonitorPath is where the queue monitor (asynqmon) is mounted; its
// RootPath must be the same.
const MonitorPath = "/admin/monitor"

// readyTimeout bounds all readiness checks of one probe together.
const readyTimeout = 3 * time.Second

// Check is one readiness check: Redis answers, the lab runtime answers.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// OpsOptions are the operator endpoints of a process.
type OpsOptions struct {
	// Role names the process in health answers ("serve", "api", "worker"…).
	Role string
	// Checks run on /readyz; all must pass.
	Checks []Check
	// Metrics serves Prometheus' text format on /metrics; nil: no route.
	Metrics http.Handler
	// Monitor is the asynq web monitor, mounted under MonitorPath behind
	// admin auth; nil: no monitor.
	Monitor http.Handler
	Logger  *slog.Logger
}

// opsRoutes adds the API process's operator endpoints. Health and
// readiness are public (load balancers and orchestrators probe them, and
// they say nothing beyond ok or which check fails); metrics and the queue
// monitor need admin credentials.
func (s *Server) opsRoutes() {
	o := s.o.Ops
	if o.Logger == nil {
		o.Logger = s.log
	}
	a := s.app
	a.Get("/healthz", healthz(o))
	a.Get("/readyz", readyz(o))
	if o.Metrics != nil {
		a.Get("/metrics", s.requireAdmin, adaptor.HTTPHandler(o.Metrics))
	}
	if o.Monitor != nil {
		mon := adaptor.HTTPHandler(o.Monitor)
		a.All(MonitorPath, s.requireAdmin, mon)
		a.All(MonitorPath+"/*", s.requireAdmin, mon)
	}
}

// NewOpsApp is the small HTTP server a process without the API (a worker,
// a standalone relay) runs on its ops listener: /healthz, /readyz and
// /metrics. It has no authentication, so it belongs on loopback or an
// operators' network (the -ops-listen flag; off by default).
func NewOpsApp(o OpsOptions) *fiber.App {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	app := fiber.New(fiber.Config{AppName: "examlab ops", DisableStartupMessage: true, ReadTimeout: 10 * time.Second})
	app.Use(securityHeaders)
	app.Get("/healthz", healthz(o))
	app.Get("/readyz", readyz(o))
	if o.Metrics != nil {
		app.Get("/metrics", adaptor.HTTPHandler(o.Metrics))
	}
	app.Use(func(c *fiber.Ctx) error {
		return c.Status(fiber.StatusNotFound).JSON(fiber.Map{"error": "no such route: " + c.Path()})
	})
	return app
}

// healthz answers as long as the process serves HTTP at all.
func healthz(o OpsOptions) fiber.Handler {
	return func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"status": "ok", "role": o.Role})
	}
}

// readyz runs every check concurrently under one timeout. A failing check
// is named with why in a few fixed words (readyReason); its error, which
// may name internal addresses, is only logged: probes are unauthenticated.
func readyz(o OpsOptions) fiber.Handler {
	return func(c *fiber.Ctx) error {
		ctx, cancel := context.WithTimeout(c.UserContext(), readyTimeout)
		defer cancel()
		results := make(map[string]string, len(o.Checks))
		reasons := map[string]string{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, ch := range o.Checks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, why := "ok", ""
				if err := ch.Fn(ctx); err != nil {
					o.Logger.Warn("readiness check failed", "check", ch.Name, "err", err)
					res, why = "failing", readyReason(err)
				}
				mu.Lock()
				results[ch.Name] = res
				if why != "" {
					reasons[ch.Name] = why
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		status, code := "ready", fiber.StatusOK
		for _, r := range results {
			if r != "ok" {
				status, code = "not ready", fiber.StatusServiceUnavailable
			}
		}
		body := fiber.Map{"status": status, "role": o.Role, "checks": results}
		if len(reasons) > 0 {
			body["reasons"] = reasons
		}
		return c.Status(code).JSON(body)
	}
}
