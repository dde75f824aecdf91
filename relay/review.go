package relay

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/contrib/websocket"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
)

// Review terminals: GET /ws/admin/review/:rid/terminal/:node is an
// admin's interactive shell in a node of a review lab (a finished
// session's lab restored from its archive; see store/review.go). It is
// never a way into a candidate's live lab: the id must be a review lab's,
// and review labs have ids of their own. The connection takes the admin
// checks of the read-only view (Origin, then the admin credential under
// the sign-in limits). A review shell is simpler than a candidate's: no
// reattach and no grace period — it ends with its connection — but it is
// recorded the same way, as asciicast in the review lab's folder
// ({state}/reviews/{rid}/terminal-logs/), and its opening and closing are
// in the session's audit log. It closes with CloseEnded when the review
// lab ends.

// reviewPoll is how often a review terminal looks whether the relay is
// shutting down; the review lab's state is looked at every SessionCheck.
const reviewPoll = time.Second

// serveReview is GET /ws/admin/review/:rid/terminal/:node.
func (r *Relay) serveReview(ws *websocket.Conn) {
	if !r.enter() {
		refuse(ws, CloseGoingAway, "the terminal relay is restarting; reconnect in a moment")
		return
	}
	defer r.handlers.Done()
	token, ok := r.admit(ws, auth.AdminCookie)
	if !ok || !r.adminOnly(ws, token) {
		return
	}
	rid, node := ws.Params("rid"), ws.Params("node")
	ctx, cancel := context.WithTimeout(r.ctx, lookupTimeout)
	rv, err := r.o.Store.Review(ctx, rid)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrBadID):
		refuse(ws, CloseNotFound, "no such review lab")
		return
	case err != nil:
		r.log.Error("look up review lab for terminal", "review", rid, "err", err)
		refuse(ws, CloseInternal, "could not load the review lab; try again")
		return
	case rv.Status == store.ReviewStarting:
		refuse(ws, CloseUnavailable, "the review lab is still being restored; try again in a moment")
		return
	case rv.Status != store.ReviewReady:
		refuse(ws, CloseEnded, "the review lab has ended")
		return
	}
	ex, ok := r.o.Exams(rv.ExamID)
	if !ok || !store.ValidTerminalID(node) {
		refuse(ws, CloseNotFound, "there is no node "+strconv.Quote(node)+" in this lab")
		return
	}
	if _, ok := ex.Node(node); !ok {
		refuse(ws, CloseNotFound, "there is no node "+strconv.Quote(node)+" in this lab")
		return
	}
	if r.o.Observer != nil {
		defer r.o.Observer.TerminalOpened()()
	}
	t := &reviewTerm{r: r, ws: ws, rv: rv, node: node}
	t.run()
}

// reviewTerm is one admin shell in a review lab's node.
type reviewTerm struct {
	r    *Relay
	ws   *websocket.Conn
	rv   *store.Review
	node string

	wmu  sync.Mutex // one writer on the WebSocket at a time
	rec  *recorder
	proc lab.Process
}

func (t *reviewTerm) write(kind int, b []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	_ = t.ws.SetWriteDeadline(time.Now().Add(t.r.o.WriteTimeout))
	return t.ws.WriteMessage(kind, b)
}

func (t *reviewTerm) close(code int, reason string) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	_ = t.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	_ = t.ws.Close()
}

func (t *reviewTerm) audit(action string, detail map[string]any) {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	detail["review"], detail["node"] = t.rv.ID, t.node
	if err := t.r.o.Store.Audit(ctx, t.rv.SessionID, store.AuditEntry{Actor: "admin", Action: action, Detail: detail}); err != nil {
		t.r.log.Warn("audit review terminal", "review", t.rv.ID, "err", err)
	}
}

func (t *reviewTerm) run() {
	r := t.r
	size := initialSize(t.ws)
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	p, err := r.o.Runner.Exec(ctx, t.rv.ID, t.node, lab.ExecRequest{Cmd: r.o.Shell, TTY: true, Size: size, Env: []string{"TERM=xterm-256color"}})
	if err != nil {
		r.log.Warn("open review terminal", "review", t.rv.ID, "node", t.node, "err", err)
		refuse(t.ws, CloseUnavailable, t.node+" of the review lab is not running")
		return
	}
	t.proc = p
	defer p.Close()
	started := time.Now()
	detail := map[string]any{}
	if dir, err := r.o.Store.ReviewDir(t.rv.ID); err == nil {
		rec, err := createRecording(filepath.Join(dir, store.TerminalDir), t.node, size, started, "review lab "+t.rv.ID+" "+t.node, r.o.MaxRecordingBytes)
		if err != nil {
			r.log.Warn("record review terminal", "review", t.rv.ID, "err", err)
		} else {
			t.rec = rec
			detail["recording"] = filepath.Join("reviews", t.rv.ID, store.TerminalDir, rec.name)
		}
	}
	t.audit("review-terminal-opened", detail)
	defer func() {
		if t.rec != nil {
			_ = t.rec.Close()
		}
		t.audit("review-terminal-closed", map[string]any{"seconds": int(time.Since(started).Seconds())})
	}()
	ready, _ := json.Marshal(readyMsg{Type: "ready", Session: t.rv.ID, Node: t.node})
	if err := t.write(textMessage, ready); err != nil {
		return
	}

	done := make(chan struct{})
	var once sync.Once
	end := func(code int, reason string) {
		once.Do(func() {
			t.close(code, reason)
			close(done)
		})
	}
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		t.output(end)
	}()
	go t.watch(done, end)
	t.input(end)
	end(CloseGoingAway, "")
	// The shell's output ends once its connection is released; the
	// recording is closed only after the last of it.
	_ = p.Close()
	<-outDone
}

// output copies the shell's output to the admin, recording it.
func (t *reviewTerm) output(end func(int, string)) {
	buf := make([]byte, t.r.chunk)
	for {
		n, err := t.proc.Read(buf)
		if n > 0 {
			if t.rec != nil {
				t.rec.Output(time.Now(), buf[:n])
			}
			if werr := t.write(binaryMessage, buf[:n]); werr != nil {
				end(CloseGoingAway, "")
				return
			}
		}
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
			code, _ := t.proc.Wait(ctx)
			cancel()
			msg, _ := json.Marshal(map[string]any{"type": "exit", "code": code, "message": "the shell exited"})
			_ = t.write(textMessage, msg)
			end(CloseNormal, "the shell exited")
			return
		}
	}
}

// input reads the admin's frames until the connection goes: keystrokes to
// the shell, resizes and pings handled here.
func (t *reviewTerm) input(end func(int, string)) {
	t.ws.SetReadLimit(int64(t.r.o.MaxMessageBytes))
	_ = t.ws.SetReadDeadline(time.Time{})
	for {
		typ, data, err := t.ws.ReadMessage()
		if err != nil {
			return
		}
		switch typ {
		case binaryMessage:
			if t.rec != nil {
				t.rec.Input(time.Now(), data)
			}
			if _, err := t.proc.Write(data); err != nil {
				end(CloseGoingAway, "")
				return
			}
		case textMessage:
			var m control
			if json.Unmarshal(data, &m) != nil {
				end(CloseBadMessage, "a control message must be JSON")
				return
			}
			switch m.Type {
			case "resize":
				if m.Rows < 1 || m.Cols < 1 || m.Rows > maxRows || m.Cols > maxCols {
					end(CloseBadMessage, "a resize must be between 1x1 and 1000x1000")
					return
				}
				sz := lab.Size{Rows: uint16(m.Rows), Cols: uint16(m.Cols)}
				_ = t.proc.Resize(t.r.ctx, sz)
				if t.rec != nil {
					t.rec.Resize(time.Now(), sz)
				}
			case "ping":
				_ = t.write(textMessage, []byte(`{"type":"pong"}`))
			}
		}
	}
}

// watch ends the terminal when the review lab ends or the relay shuts
// down.
func (t *reviewTerm) watch(done chan struct{}, end func(int, string)) {
	tick := time.NewTicker(reviewPoll)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-done:
			return
		case <-t.r.ctx.Done():
			end(CloseGoingAway, "the terminal relay is restarting")
			return
		case <-tick.C:
		}
		if t.r.isClosing() {
			end(CloseGoingAway, "the terminal relay is restarting; reconnect in a moment")
			return
		}
		if time.Since(last) < t.r.o.SessionCheck {
			continue
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(t.r.ctx, lookupTimeout)
		rv, err := t.r.o.Store.Review(ctx, t.rv.ID)
		cancel()
		if err == nil && rv.Status != store.ReviewReady {
			end(CloseEnded, "the review lab has ended")
			return
		}
	}
}

// isClosing reports whether Shutdown has begun.
func (r *Relay) isClosing() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closing
}
