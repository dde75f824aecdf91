package api

// panelRoutes serves the admin panel: hand-written HTML, CSS and
// JavaScript embedded in the binary. The pages hold no data — every number
// on them comes from /api/admin/*, which needs the admin login — so the
// login page and its assets are public. Without xterm.js the panel replays
// into its own plain-text screen.
//
//	GET /admin                   sessions list (or the login form)
//	GET /admin/session/:id       one session
//	GET /admin/sittings          sittings list and the new-sitting form
//	GET /admin/sittings/:id      one sitting and its roster
//	GET /admin/queue             the admission queue: every sitting's labs and line (?sitting= one)
//	GET /admin/assets/*          the panel's scripts and styles
//	GET /admin/assets/vendor/*   xterm.js
func (s *Server) panelRoutes() {
	s.servePage("web/admin", "/admin/assets", panelCSP, "/admin", "/admin/session/:id", "/admin/sittings", "/admin/sittings/:id", "/admin/queue")
}

// panelCSP keeps the panel to its own scripts: no inline script, no other
// origin; WebSockets only back to this host (the live terminal view).
const panelCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
