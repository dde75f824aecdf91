package api

// pageRoutes serves the candidate's exam page: hand-written HTML, CSS and
// JavaScript embedded in the binary. It holds no data: everything on it
// comes from /api/... and /ws/..., which check the candidate's cookie.
//
//	GET /                 the exam page (sign-in, tasks, terminals)
//	GET /join             the same page, opened from an invitation link
//	                      (/join#code=…: the code stays in the fragment,
//	                      which browsers never send to a server)
//	GET /static/*         its script and stylesheet
//	GET /static/vendor/*  xterm.js
func (s *Server) pageRoutes() {
	s.servePage("web/candidate", "/static", pageCSP, "/", "/join")
}

// pageCSP allows the page's own scripts only (no inline script), and
// connections only back to its own origin: the API and the terminal
// WebSockets. Inline styles are allowed because xterm.js's DOM renderer
// writes its theme into a style element.
const pageCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
