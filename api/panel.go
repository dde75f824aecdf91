package api

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
)

// The admin panel: hand-written HTML, CSS and JavaScript embedded in the
// binary. xterm.js comes from web/vendor (copied from Debian's libjs-xterm
// by `make web`); the panel works without it, replaying into its own
// plain-text screen.
//
//go:embed web/admin
var adminFiles embed.FS

//go:embed web/vendor
var vendorFiles embed.FS

// panelRoutes serves the admin panel. The pages hold no data — every
// number on them comes from /api/admin/*, which needs the admin login — so
// the login page and its assets are public.
//
//	GET /admin                   sessions list (or the login form)
//	GET /admin/session/:id       one session
//	GET /admin/assets/*          the panel's scripts and styles
//	GET /admin/assets/vendor/*   xterm.js
func (s *Server) panelRoutes() {
	pages, _ := fs.Sub(adminFiles, "web/admin")
	vendor, _ := fs.Sub(vendorFiles, "web/vendor")
	index := func(c *fiber.Ctx) error {
		b, err := fs.ReadFile(pages, "index.html")
		if err != nil {
			return err
		}
		c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
		c.Set("Content-Security-Policy", panelCSP)
		return c.Send(b)
	}
	s.app.Get("/admin", index)
	s.app.Get("/admin/session/:id", index)
	s.app.Use("/admin/assets/vendor", filesystem.New(filesystem.Config{Root: http.FS(vendor)}))
	s.app.Use("/admin/assets", filesystem.New(filesystem.Config{Root: http.FS(pages)}))
}

// panelCSP keeps the panel to its own scripts: no inline script, no other
// origin; WebSockets only back to this host (the live terminal view).
const panelCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
