package api

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
)

// webFiles are the hand-written pages (web/candidate, web/admin) and the
// xterm.js bundle both use (web/vendor, built from Debian's packages by
// deploy/web.sh and committed, so a plain `go build` serves terminals).
//
//go:generate ../deploy/web.sh
//go:embed web/candidate web/admin web/vendor
var webFiles embed.FS

// webSub is one folder of the embedded web tree.
func webSub(dir string) fs.FS {
	sub, err := fs.Sub(webFiles, dir)
	if err != nil {
		// Embedded at build time; failing here means a broken build.
		panic("api: embedded " + dir + ": " + err.Error())
	}
	return sub
}

// servePage registers a page: its index.html (read once, at start-up) at
// each of paths with the page's Content-Security-Policy, its own assets
// under assets, and the shared xterm.js under assets+"/vendor".
func (s *Server) servePage(dir, assets, csp string, paths ...string) {
	pages := webSub(dir)
	index, err := fs.ReadFile(pages, "index.html")
	if err != nil {
		panic("api: embedded " + dir + "/index.html: " + err.Error())
	}
	h := func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
		c.Set("Content-Security-Policy", csp)
		return c.Send(index)
	}
	for _, p := range paths {
		s.app.Get(p, h)
	}
	s.app.Use(assets+"/vendor", filesystem.New(filesystem.Config{Root: http.FS(webSub("web/vendor"))}))
	s.app.Use(assets, filesystem.New(filesystem.Config{Root: http.FS(pages)}))
}
