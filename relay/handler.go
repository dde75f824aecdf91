package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/contrib/websocket"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/ratelimit"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Message kinds, named for this package's readers.
const (
	textMessage   = websocket.TextMessage
	binaryMessage = websocket.BinaryMessage
)

// Named timeouts of the handshake.
const (
	lookupTimeout = 10 * time.Second // token and session lookups
	closeLinger   = 2 * time.Second  // for the peer's answer to a close
	waitPoll      = time.Second      // between looks for a node or a shell
	// nodeRestartWait is how long a ready lab's node may be missing (an
	// admin resetting it) before the connection gives up.
	nodeRestartWait = 20 * time.Second
)

// Terminal size bounds; a resize outside them is a bad message.
const (
	maxRows = 1000
	maxCols = 1000
)

var defaultSize = lab.Size{Rows: 24, Cols: 80}

// control is a JSON message from the client.
type control struct {
	Type  string `json:"type"`
	Token string `json:"token,omitempty"`
	Rows  int    `json:"rows,omitempty"`
	Cols  int    `json:"cols,omitempty"`
}

// statusMsg tells the page what the relay is doing before the terminal is
// attached.
type statusMsg struct {
	Type    string `json:"type"`
	State   string `json:"state"`
	Message string `json:"message"`
}

func jsonBytes(v any) ([]byte, error) { return json.Marshal(v) }

// enter registers a handler with the relay unless it is shutting down.
func (r *Relay) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return false
	}
	r.handlers.Add(1)
	return true
}

// refuse ends a connection that never got attached: the close frame, then
// a moment to read the peer's answer so the frame is not lost to a reset.
func refuse(ws *websocket.Conn, code int, reason string) {
	if len(reason) > 120 {
		reason = reason[:120]
	}
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	_ = ws.SetReadDeadline(time.Now().Add(closeLinger))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			return
		}
	}
}

// originAllowed compares the Origin header with the allowed list. An empty
// header is a non-browser client (see the package doc).
func (r *Relay) originAllowed(origin string) bool {
	if origin == "" {
		return true
	}
	o := strings.TrimRight(strings.ToLower(origin), "/")
	for _, a := range r.o.Origins {
		if strings.TrimRight(strings.ToLower(a), "/") == o {
			return true
		}
	}
	return false
}

// credential finds the token for cookie: the cookie itself, a bearer
// header, or else a first-frame auth message.
func (r *Relay) credential(ws *websocket.Conn, cookie string) (string, error) {
	if t := ws.Cookies(cookie); t != "" {
		return t, nil
	}
	if t := auth.Bearer(ws.Headers("Authorization")); t != "" {
		return t, nil
	}
	_ = ws.SetReadDeadline(time.Now().Add(r.o.AuthTimeout))
	typ, data, err := ws.ReadMessage()
	if err != nil {
		return "", errors.New("no credentials: sign in, or send an auth message first")
	}
	var m control
	if typ != textMessage || json.Unmarshal(data, &m) != nil || m.Type != "auth" || m.Token == "" {
		return "", errors.New("authenticate first: the first message must be {\"type\":\"auth\",\"token\":…}")
	}
	return m.Token, nil
}

// initialSize reads ?rows=&cols= (a size, not a secret) so the shell starts
// at the page's size.
func initialSize(ws *websocket.Conn) lab.Size {
	rows, err1 := strconv.Atoi(ws.Query("rows"))
	cols, err2 := strconv.Atoi(ws.Query("cols"))
	if err1 != nil || err2 != nil || rows < 1 || cols < 1 || rows > maxRows || cols > maxCols {
		return defaultSize
	}
	return lab.Size{Rows: uint16(rows), Cols: uint16(cols)}
}

// nodeOf checks the node belongs to the session's exam.
func (r *Relay) nodeOf(sess *session.Session, node string) (*exam.Exam, bool) {
	ex, ok := r.o.Exams(sess.ExamID)
	if !ok || !store.ValidTerminalID(node) {
		return ex, false
	}
	_, ok = ex.Node(node)
	return ex, ok
}

// admit runs the checks every terminal WebSocket starts with: the Origin,
// then a credential (the named cookie, a bearer header or a first-frame
// token). It refuses the connection and reports false when one fails.
func (r *Relay) admit(ws *websocket.Conn, cookie string) (string, bool) {
	if origin := ws.Headers("Origin"); !r.originAllowed(origin) {
		refuse(ws, CloseForbidden, "origin "+strconv.Quote(origin)+" is not allowed")
		return "", false
	}
	token, err := r.credential(ws, cookie)
	if err != nil {
		refuse(ws, CloseAuth, err.Error())
		return "", false
	}
	return token, true
}

// ownTerminal is what tells the candidate routes apart: which node of the
// caller's own session the route names, or why the route names none of
// theirs. Every other check is serveOwn's, the same for each route.
type ownTerminal func(ws *websocket.Conn, sess *session.Session) (node string, refused *attachErr)

// sessionTerminal reads GET /ws/session/:id/terminal/:node, where the
// session is named and must be the caller's.
func sessionTerminal(ws *websocket.Conn, sess *session.Session) (string, *attachErr) {
	if ws.Params("id") != sess.ID {
		// Whether the other session exists is not revealed.
		return "", &attachErr{CloseForbidden, "not your session"}
	}
	return ws.Params("node"), nil
}

// containerTerminal reads GET /api/terminal/:container, the seed's route:
// the container is named exam-{id8}-{node} (lab.ContainerName) and must be
// one of the caller's lab.
func containerTerminal(ws *websocket.Conn, sess *session.Session) (string, *attachErr) {
	node, ok := strings.CutPrefix(ws.Params("container"), lab.ContainerName(sess.ID, ""))
	if !ok {
		// Whether the other container exists is not revealed.
		return "", &attachErr{CloseForbidden, "not a container of your lab"}
	}
	return node, nil
}

// serveCandidate is GET /ws/session/:id/terminal/:node.
func (r *Relay) serveCandidate(ws *websocket.Conn) { r.serveOwn(ws, sessionTerminal) }

// serveContainer is GET /api/terminal/:container.
func (r *Relay) serveContainer(ws *websocket.Conn) { r.serveOwn(ws, containerTerminal) }

// serveOwn admits a candidate to a terminal of their own session, the one
// path every candidate route takes: Origin and credential, a candidate's
// token (not the admin's), the node the route names, a live lab, a node of
// the exam and a free slot.
func (r *Relay) serveOwn(ws *websocket.Conn, terminal ownTerminal) {
	if !r.enter() {
		refuse(ws, CloseGoingAway, "the terminal relay is restarting; reconnect in a moment")
		return
	}
	defer r.handlers.Done()
	token, ok := r.admit(ws, auth.CandidateCookie)
	if !ok {
		return
	}
	if r.o.Auth.IsAdmin(token) {
		refuse(ws, CloseForbidden, "admins watch terminals read-only under /ws/admin/")
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, lookupTimeout)
	sess, err := r.o.Auth.Candidate(ctx, token)
	cancel()
	switch {
	case errors.Is(err, auth.ErrUnauthorized):
		refuse(ws, CloseAuth, "unknown or expired sign-in; sign in again")
		return
	case err != nil:
		r.log.Error("look up terminal token", "err", err)
		refuse(ws, CloseInternal, "could not check your sign-in; try again")
		return
	}
	node, refused := terminal(ws, sess)
	switch {
	case refused != nil:
		refuse(ws, refused.code, refused.reason)
		return
	case sess.Status.Pending():
		refuse(ws, CloseUnavailable, "the lab is not started yet")
		return
	case !sess.Status.LiveLab():
		refuse(ws, CloseEnded, "the session is "+string(sess.Status)+"; the terminals are closed")
		return
	}
	if _, ok := r.nodeOf(sess, node); !ok {
		refuse(ws, CloseNotFound, "there is no node "+strconv.Quote(node)+" in this lab")
		return
	}
	key := termKey{session: sess.ID, node: node}
	if !r.takeSlot(key) {
		refuse(ws, CloseTooMany, fmt.Sprintf("at most %d terminals may be open at once", r.o.MaxTerminals))
		return
	}
	defer r.releaseSlot(key.session)

	c := r.newClient(ws, key, false)
	r.serve(c, func() (*shell, error) { return r.candidateShell(c, initialSize(ws)) })
}

// serveAdmin is GET /ws/admin/session/:id/terminal/:node: a read-only view
// of the candidate's shell.
func (r *Relay) serveAdmin(ws *websocket.Conn) {
	if !r.enter() {
		refuse(ws, CloseGoingAway, "the terminal relay is restarting; reconnect in a moment")
		return
	}
	defer r.handlers.Done()
	token, ok := r.admit(ws, auth.AdminCookie)
	if !ok {
		return
	}
	key := termKey{session: ws.Params("id"), node: ws.Params("node")}
	if !r.adminOnly(ws, token) {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, lookupTimeout)
	sess, err := r.o.Store.Get(ctx, key.session)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrBadID):
		refuse(ws, CloseNotFound, "no such session")
		return
	case err != nil:
		r.log.Error("look up session for terminal view", "session", key.session, "err", err)
		refuse(ws, CloseInternal, "could not load the session; try again")
		return
	}
	if _, ok := r.nodeOf(sess, key.node); !ok {
		refuse(ws, CloseNotFound, "there is no node "+strconv.Quote(key.node)+" in this lab")
		return
	}
	c := r.newClient(ws, key, true)
	r.serve(c, func() (*shell, error) { return r.viewerShell(c) })
}

// adminOnly admits token as the admin's or refuses the connection. A
// token offered here is a guess until it proves right: the address's
// wrong-credential budget is checked first and charged when it is wrong,
// as for a sign-in.
func (r *Relay) adminOnly(ws *websocket.Conn, token string) bool {
	if r.o.Limits != nil {
		addr, _ := ws.Locals(localClient).(netip.Addr)
		if err := r.o.Limits.Guard(r.ctx, addr); errors.Is(err, ratelimit.ErrLimited) {
			refuse(ws, CloseTooMany, "too many wrong sign-ins from this address; try again later")
			return false
		} else if err != nil {
			r.log.Error("check sign-in limits", "err", err)
			refuse(ws, CloseInternal, "could not check your sign-in; try again")
			return false
		}
		if !r.o.Auth.IsAdmin(token) {
			if err := r.o.Limits.Failed(r.ctx, addr, ""); err != nil {
				r.log.Error("charge a wrong admin token", "err", err)
			}
		}
	}
	if !r.o.Auth.IsAdmin(token) {
		refuse(ws, CloseForbidden, "admin credentials required")
		return false
	}
	return true
}

// attachErr carries the close code an attach failure ends the connection with.
type attachErr struct {
	code   int
	reason string
}

func (e *attachErr) Error() string { return e.reason }

// serve runs an admitted connection: attach (in the background, so that a
// client leaving during a long wait is noticed), then the read loop until
// the client goes, then detach.
func (r *Relay) serve(c *client, attach func() (*shell, error)) {
	r.track(c)
	defer r.untrack(c)
	if r.o.Observer != nil {
		defer r.o.Observer.TerminalOpened()()
	}

	var sh atomic.Pointer[shell]
	attached := make(chan struct{})
	writing := false
	go func() {
		defer close(attached)
		s, err := attach()
		if err != nil {
			var ae *attachErr
			if errors.As(err, &ae) {
				c.closeNow(ae.code, ae.reason)
			} else {
				r.log.Error("attach terminal", "session", c.key.session, "node", c.key.node, "err", err)
				c.closeNow(CloseInternal, "could not open the terminal: "+err.Error())
			}
			return
		}
		c.inMu.Lock()
		sh.Store(s)
		if c.earlySize != nil {
			_ = s.resize(*c.earlySize)
		}
		if len(c.early) > 0 {
			_ = s.input(c.early)
		}
		c.early, c.earlySize = nil, nil
		c.inMu.Unlock()
		writing = true
		go c.writeLoop()
	}()

	r.readLoop(c, &sh)

	c.closeNow(CloseGoingAway, "")
	<-attached
	if s := sh.Load(); s != nil {
		s.detach(c)
	}
	if writing {
		<-c.wrote
	}
	c.drain()
}

// candidateShell finds or starts the shell and attaches c as its driver,
// waiting while the node of a lab still coming up does not run yet.
func (r *Relay) candidateShell(c *client, size lab.Size) (*shell, error) {
	started := time.Now()
	told := false
	for {
		if c.closed() {
			return nil, &attachErr{CloseGoingAway, "gone"}
		}
		sh, fresh, err := r.acquire(c.key, size)
		if err == nil {
			if sh.attach(c, !fresh || sh.resumed) {
				return sh, nil
			}
			continue // it ended in between; start another
		}
		if errors.Is(err, errRelayClosing) {
			return nil, &attachErr{CloseGoingAway, "the terminal relay is restarting; reconnect in a moment"}
		}
		if !errors.Is(err, lab.ErrNotFound) && !errors.Is(err, lab.ErrNotRunning) {
			return nil, err
		}
		// The node is not running. Worth waiting for while the lab is
		// coming up, or briefly while an admin resets a node.
		ctx, cancel := context.WithTimeout(r.ctx, lookupTimeout)
		sess, gerr := r.o.Store.Get(ctx, c.key.session)
		cancel()
		if gerr != nil {
			return nil, gerr
		}
		wait := nodeRestartWait
		switch sess.Status {
		case session.StateProvisioning:
			wait = r.o.NodeWait
		case session.StateReady:
		default:
			return nil, &attachErr{CloseEnded, "the session is " + string(sess.Status) + "; the terminals are closed"}
		}
		if time.Since(started) > wait {
			return nil, &attachErr{CloseUnavailable, c.key.node + " did not start in time; reload to try again"}
		}
		if !told {
			told = true
			_ = c.writeJSONNow(statusMsg{Type: "status", State: "waiting", Message: "waiting for " + c.key.node + " to start"})
		}
		select {
		case <-c.done:
		case <-time.After(waitPoll):
		}
	}
}

// viewerShell waits for the candidate's shell on the node and attaches c
// to it read-only.
func (r *Relay) viewerShell(c *client) (*shell, error) {
	told := false
	lastCheck := time.Now()
	for {
		if c.closed() {
			return nil, &attachErr{CloseGoingAway, "gone"}
		}
		if sh := r.lookup(c.key); sh != nil && sh.attach(c, true) {
			return sh, nil
		}
		if !told {
			told = true
			_ = c.writeJSONNow(statusMsg{Type: "status", State: "waiting",
				Message: "no terminal is open on " + c.key.node + "; waiting for the candidate to open one"})
		}
		if time.Since(lastCheck) > r.o.SessionCheck {
			lastCheck = time.Now()
			ctx, cancel := context.WithTimeout(r.ctx, lookupTimeout)
			sess, err := r.o.Store.Get(ctx, c.key.session)
			cancel()
			if err == nil && !sess.Status.LiveLab() && !sess.Status.Pending() {
				return nil, &attachErr{CloseEnded, "the session is " + string(sess.Status) + "; no terminal is live"}
			}
		}
		select {
		case <-c.done:
		case <-r.ctx.Done():
			return nil, &attachErr{CloseGoingAway, "the terminal relay is restarting"}
		case <-time.After(waitPoll):
		}
	}
}

// readLoop reads the client's frames until it goes: data to the shell,
// control messages handled here. It never waits on output, so keystrokes
// (Ctrl-C above all) reach the shell however much output is queued.
func (r *Relay) readLoop(c *client, sh *atomic.Pointer[shell]) {
	ws := c.ws
	ws.SetReadLimit(int64(r.o.MaxMessageBytes))
	alive := 2*r.o.PingInterval + 5*time.Second
	extend := func() {
		if !c.closed() {
			_ = ws.SetReadDeadline(time.Now().Add(alive))
		}
	}
	extend()
	ws.SetPongHandler(func(string) error { extend(); return nil })
	toldReadOnly := false
	for {
		typ, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		extend()
		if c.closed() {
			continue // waiting for the peer's close
		}
		switch typ {
		case binaryMessage:
			if c.readOnly {
				if !toldReadOnly {
					toldReadOnly = true
					c.trySendJSON(statusMsg{Type: "status", State: "read-only", Message: "this view is read-only; typing is ignored"})
				}
				continue
			}
			c.touch()
			c.inMu.Lock()
			if s := sh.Load(); s != nil {
				if err := s.input(data); err != nil {
					r.log.Debug("terminal input", "err", err)
				}
			} else if len(c.early)+len(data) <= maxEarlyInput {
				c.early = append(c.early, data...)
			}
			c.inMu.Unlock()
		case textMessage:
			var m control
			if err := json.Unmarshal(data, &m); err != nil {
				c.closeNow(CloseBadMessage, "control messages are JSON objects with a type")
				continue
			}
			switch m.Type {
			case "resize":
				if m.Rows < 1 || m.Cols < 1 || m.Rows > maxRows || m.Cols > maxCols {
					c.closeNow(CloseBadMessage, fmt.Sprintf("resize needs rows and cols between 1 and %d", maxRows))
					continue
				}
				if c.readOnly {
					continue
				}
				c.touch()
				sz := lab.Size{Rows: uint16(m.Rows), Cols: uint16(m.Cols)}
				c.inMu.Lock()
				if s := sh.Load(); s != nil {
					if err := s.resize(sz); err != nil {
						r.log.Debug("terminal resize", "err", err)
					}
				} else {
					c.earlySize = &sz
				}
				c.inMu.Unlock()
			case "ping":
				c.trySendJSON(map[string]string{"type": "pong"})
			case "auth":
				// Already authenticated; a page may send it anyway.
			default:
				// Unknown types are ignored so that pages may be newer
				// than the relay.
			}
		}
	}
}

// takeSlot admits one more candidate connection for the session, unless it
// already has MaxTerminals. A connection replacing the driver of the same
// node is always admitted: it is about to free the old one's slot.
func (r *Relay) takeSlot(key termKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	replacing := false
	if sh := r.shells[key]; sh != nil {
		sh.mu.Lock()
		replacing = sh.owner != nil
		sh.mu.Unlock()
	}
	if r.slots[key.session] >= r.o.MaxTerminals && !replacing {
		return false
	}
	r.slots[key.session]++
	return true
}

func (r *Relay) releaseSlot(session string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.slots[session]--; r.slots[session] <= 0 {
		delete(r.slots, session)
	}
}

func (r *Relay) track(c *client) {
	r.mu.Lock()
	r.clients[c] = struct{}{}
	r.mu.Unlock()
}

func (r *Relay) untrack(c *client) {
	r.mu.Lock()
	delete(r.clients, c)
	r.mu.Unlock()
}
