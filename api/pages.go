package api

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
)

// The candidate's exam page: hand-written HTML, CSS and JavaScript embedded
// in the binary. xterm.js is embedded from web/vendor, which `make web`
// fills from Debian's packages; web/vendor/README.md is committed so the
// pattern matches even before that, and the page then says plainly that
// the terminal component is missing.
//
//go:embed web/candidate
var candidateFiles embed.FS

//go:embed web/vendor
var candidateVendor embed.FS

// pageRoutes serves the exam page. It holds no data: everything on it
// comes from /api/... and /ws/..., which check the candidate's cookie.
//
//	GET /                 the exam page (sign-in, tasks, terminals)
//	GET /static/*         its script and stylesheet
//	GET /static/vendor/*  xterm.js
func (s *Server) pageRoutes() {
	pages, _ := fs.Sub(candidateFiles, "web/candidate")
	vendor, _ := fs.Sub(candidateVendor, "web/vendor")
	index, err := fs.ReadFile(pages, "index.html")
	if err != nil {
		// The file is embedded at build time; missing means a broken build.
		panic("api: embedded exam page missing: " + err.Error())
	}
	s.app.Get("/", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
		c.Set("Content-Security-Policy", pageCSP)
		return c.Send(index)
	})
	s.app.Use("/static/vendor", filesystem.New(filesystem.Config{Root: http.FS(vendor)}))
	s.app.Use("/static", filesystem.New(filesystem.Config{Root: http.FS(pages)}))
}

// pageCSP allows the page's own scripts only (no inline script), and
// connections only back to its own origin: the API and the terminal
// WebSockets. Inline styles are allowed because xterm.js's DOM renderer
// writes its theme into a style element.
const pageCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
