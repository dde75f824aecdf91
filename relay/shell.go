package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/examlab/examlab/holder"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
)

// Named timeouts of a shell's life.
const (
	startTimeout   = 30 * time.Second // exec the shell and open its recording
	hangupTimeout  = 10 * time.Second // run the hangup in the node
	hangupSettle   = 3 * time.Second  // for the shell to go after its hangup
	waitTimeout    = 5 * time.Second  // for the exit code once output ended
	historyTimeout = 10 * time.Second // one history write
	historyDelay   = time.Second      // typed lines gather this long before a write
	resizeTimeout  = 5 * time.Second
)

// tagVar marks every process of one terminal in the node's environment, so
// that the relay can hang the terminal up however the runtime's exec
// behaves when its connection closes (Docker keeps the process running).
const tagVar = holder.TagVar

// hangupScript sends SIGHUP to every process carrying the terminal's tag,
// as a dropped SSH session would: the shell and its jobs end, nohup'd
// processes stay.
const hangupScript = `tag="` + tagVar + `=$1"
pids=""
for d in /proc/[0-9]*; do
	[ "${d#/proc/}" = "$$" ] && continue
	if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$tag"; then pids="$pids ${d#/proc/}"; fi
done
[ -z "$pids" ] || kill -HUP $pids 2>/dev/null
exit 0`

// shell is one login shell in a node, with its recording, replay buffer,
// the candidate's connection driving it and admins watching it.
type shell struct {
	r       *Relay
	key     termKey
	tag     string
	started time.Time
	// lab is the id of the session's lab, which execs name: the
	// session's own, or a warm lab it claimed (session.Session.Lab).
	lab string

	// ready is closed once start has finished; startErr says how.
	ready    chan struct{}
	startErr error
	// done is closed once the shell has ended and everything is written.
	done chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	proc   lab.Process
	rec    *recorder
	// held is set when the shell lives in the node's holder rather than
	// in this relay's exec; resumed when it was running before this relay
	// attached to it.
	held    *heldProc
	resumed bool

	mu        sync.Mutex
	ring      *ring
	owner     *client
	viewers   map[*client]struct{}
	grace     *time.Timer
	ending    bool
	endCode   int
	endReason string
	// detaching: the relay lets go of a held shell, which lives on.
	detaching bool

	// inMu orders input: a replaced connection and its successor may both
	// be writing for a moment.
	inMu  sync.Mutex
	lines lineTracker

	histMu    sync.Mutex
	hist      []store.HistoryEntry
	histTimer *time.Timer
	flushMu   sync.Mutex
}

var errRelayClosing = errors.New("relay is shutting down")

// acquire returns the live shell of key, starting one if there is none.
// fresh reports that this call started it.
func (r *Relay) acquire(key termKey, size lab.Size) (sh *shell, fresh bool, err error) {
	for {
		r.mu.Lock()
		if r.closing {
			r.mu.Unlock()
			return nil, false, errRelayClosing
		}
		if sh := r.shells[key]; sh != nil {
			r.mu.Unlock()
			<-sh.ready
			if sh.startErr != nil {
				return nil, false, sh.startErr
			}
			if sh.isEnding() {
				<-sh.done
				continue
			}
			return sh, false, nil
		}
		sh := &shell{
			r: r, key: key, tag: newTag(),
			ready: make(chan struct{}), done: make(chan struct{}),
			ring: newRing(r.o.ReplayBytes), viewers: map[*client]struct{}{},
		}
		r.shells[key] = sh
		r.mu.Unlock()

		// Noted before it starts, so that a worker waiting for the
		// session's terminals to close never misses one being born.
		r.noteShell(sh, true)
		if err := sh.start(size); err != nil {
			r.mu.Lock()
			if r.shells[key] == sh {
				delete(r.shells, key)
			}
			r.mu.Unlock()
			r.noteShell(sh, false)
			sh.startErr = err
			close(sh.ready)
			close(sh.done)
			return nil, false, err
		}
		close(sh.ready)
		return sh, true, nil
	}
}

// lookup returns the live shell of key, if any, without starting one.
func (r *Relay) lookup(key termKey) *shell {
	r.mu.Lock()
	sh := r.shells[key]
	r.mu.Unlock()
	if sh == nil {
		return nil
	}
	<-sh.ready
	if sh.startErr != nil || sh.isEnding() {
		return nil
	}
	return sh
}

// start execs the shell and opens its recording. Without a recording there
// is no terminal: the record of the exam must be complete. The shell is
// the node's held one (holder.go) when the node has the holder, else a
// shell of this exec.
func (s *shell) start(size lab.Size) error {
	s.ctx, s.cancel = context.WithCancel(s.r.ctx)
	s.started = time.Now()
	dir, err := s.r.o.Store.Path(s.key.session, store.TerminalDir)
	if err != nil {
		s.cancel()
		return err
	}
	s.lab = s.key.session
	if sess, err := s.r.o.Store.Get(s.ctx, s.key.session); err == nil {
		s.lab = sess.Lab()
	}
	if s.r.o.Holder != "none" {
		err := s.startHeld(dir, size)
		if err == nil || !errors.Is(err, holder.ErrNoHolder) {
			if err != nil {
				s.cancel()
			}
			return err
		}
		s.r.log.Warn("no terminal holder in the node; the shell lives in this relay", "session", s.key.session, "node", s.key.node, "err", err)
	}
	// The exec lives as long as the shell, so its context is the shell's;
	// a start that hangs is cut off by cancelling that context.
	slow := time.AfterFunc(startTimeout, s.cancel)
	proc, err := s.r.o.Runner.Exec(s.ctx, s.lab, s.key.node, lab.ExecRequest{
		Cmd:  s.r.o.Shell,
		TTY:  true,
		Size: size,
		Env:  []string{"TERM=xterm-256color", tagVar + "=" + s.tag},
	})
	if !slow.Stop() {
		if err == nil {
			proc.Close()
		}
		s.cancel()
		return fmt.Errorf("start shell in %s: no answer within %s", s.key.node, startTimeout)
	}
	if err != nil {
		s.cancel()
		return fmt.Errorf("start shell in %s: %w", s.key.node, err)
	}
	rec, err := createRecording(dir, s.key.node, size, s.started, s.key.session+" "+s.key.node, s.r.o.MaxRecordingBytes)
	if err != nil {
		proc.Close()
		s.hangup()
		s.cancel()
		return err
	}
	s.proc, s.rec = proc, rec
	s.r.log.Info("terminal started", "session", s.key.session, "node", s.key.node, "recording", rec.name)
	go s.pump()
	return nil
}

func (s *shell) isEnding() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ending
}

func (s *shell) replayLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ring.Len()
}

// readyMsg is the first message of an attached connection.
type readyMsg struct {
	Type       string `json:"type"`
	Session    string `json:"session"`
	Node       string `json:"node"`
	Reattached bool   `json:"reattached"`
	ReadOnly   bool   `json:"read_only"`
	Replay     int    `json:"replay"`
}

// attach makes c the shell's driver (or a viewer when c is read-only). The
// ready message and the replay are set as c's prelude under the lock that
// orders output, so c sees recent output once and then everything new. A
// driver already attached is closed as replaced. attach reports false when
// the shell is ending.
func (s *shell) attach(c *client, reattached bool) bool {
	s.mu.Lock()
	if s.ending {
		s.mu.Unlock()
		return false
	}
	replay := s.ring.Bytes()
	ready, _ := jsonBytes(readyMsg{Type: "ready", Session: s.key.session, Node: s.key.node,
		Reattached: reattached, ReadOnly: c.readOnly, Replay: len(replay)})
	c.prelude = append(c.prelude, frame{kind: textMessage, data: ready})
	for len(replay) > 0 {
		n := min(len(replay), s.r.chunk)
		c.prelude = append(c.prelude, frame{kind: binaryMessage, data: replay[:n]})
		replay = replay[n:]
	}
	var old *client
	if c.readOnly {
		s.viewers[c] = struct{}{}
	} else {
		old, s.owner = s.owner, c
		if s.grace != nil {
			s.grace.Stop()
			s.grace = nil
		}
	}
	s.mu.Unlock()
	if old != nil && old != c {
		old.closeNow(CloseReplaced, "this terminal was opened in another window")
	}
	if reattached && !c.readOnly {
		s.rec.Marker(time.Now(), "reconnected")
	}
	return true
}

// detach removes c. When the driver leaves, the shell waits Grace for a
// reattach before it is hung up.
func (s *shell) detach(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.viewers, c)
	if s.owner != c {
		return
	}
	s.owner = nil
	if s.ending || s.grace != nil {
		return
	}
	s.grace = time.AfterFunc(s.r.o.Grace, func() {
		s.end(CloseEnded, "the candidate's terminal was closed for "+s.r.o.Grace.String())
	})
}

// input passes typed bytes to the shell, recording them and the command
// lines they complete.
func (s *shell) input(p []byte) error {
	s.inMu.Lock()
	defer s.inMu.Unlock()
	now := time.Now()
	s.rec.Input(now, p)
	if lines := s.lines.Feed(p); len(lines) > 0 {
		s.addHistory(now, lines)
	}
	if _, err := s.proc.Write(p); err != nil {
		return fmt.Errorf("write to shell in %s: %w", s.key.node, err)
	}
	return nil
}

// resize changes the shell's terminal size.
func (s *shell) resize(sz lab.Size) error {
	ctx, cancel := context.WithTimeout(s.ctx, resizeTimeout)
	defer cancel()
	if err := s.proc.Resize(ctx, sz); err != nil {
		return err
	}
	s.rec.Resize(time.Now(), sz)
	return nil
}

// pump carries output from the shell to the recording, the replay buffer,
// the viewers and the driver. Waiting on the driver's full queue is what
// slows the shell down; viewers that fall behind are dropped instead.
func (s *shell) pump() {
	defer s.finish()
	buf := make([]byte, s.r.chunk)
	for {
		n, err := s.proc.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			s.rec.Output(time.Now(), data)
			s.mu.Lock()
			s.ring.Write(data)
			owner := s.owner
			var lagging []*client
			for v := range s.viewers {
				if !v.trySendData(data) {
					lagging = append(lagging, v)
					delete(s.viewers, v)
				}
			}
			s.mu.Unlock()
			for _, v := range lagging {
				v.closeNow(CloseTryLater, "the view fell behind the terminal's output; reconnect")
			}
			if owner != nil {
				owner.sendData(data)
			}
		}
		if err != nil {
			return
		}
	}
}

// exitMsg tells attached connections the shell has ended.
type exitMsg struct {
	Type    string `json:"type"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// finish runs once the shell's output has ended: it learns why, tells the
// connections, closes the recording and writes the history.
func (s *shell) finish() {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	exit, werr := s.proc.Wait(ctx)
	cancel()

	s.mu.Lock()
	code, reason := s.endCode, s.endReason
	if !s.ending {
		s.ending = true
		switch {
		case errors.Is(werr, errReplaced):
			// Another relay attached to the held shell.
			s.detaching = true
			code, reason = CloseReplaced, "this terminal was opened in another window"
		case errors.Is(werr, errHolderLost):
			s.detaching = true
			code, reason = CloseGoingAway, "the connection to the terminal was lost; reconnect to continue"
		case werr == nil:
			code, reason = CloseNormal, fmt.Sprintf("the shell exited with code %d", exit)
		case errors.Is(werr, lab.ErrNotFound), errors.Is(werr, lab.ErrNotRunning):
			code, reason = CloseEnded, "the lab node is gone"
		default:
			code, reason = CloseEnded, "the connection to the node was lost"
		}
		s.endCode, s.endReason = code, reason
	}
	if s.grace != nil {
		s.grace.Stop()
		s.grace = nil
	}
	clients := make([]*client, 0, len(s.viewers)+1)
	if s.owner != nil {
		clients = append(clients, s.owner)
	}
	for v := range s.viewers {
		clients = append(clients, v)
	}
	s.owner, s.viewers = nil, map[*client]struct{}{}
	detached := s.detaching && s.held != nil
	s.mu.Unlock()

	s.r.mu.Lock()
	if s.r.shells[s.key] == s {
		delete(s.r.shells, s.key)
	}
	s.r.mu.Unlock()

	if werr != nil {
		exit = -1
	}
	for _, c := range clients {
		go func() {
			if !detached {
				c.sendJSON(exitMsg{Type: "exit", Code: exit, Message: reason})
			}
			c.sendClose(code, reason)
		}()
	}
	if detached {
		// The shell lives on in its node: the next relay to attach
		// continues this recording from the offset marked here.
		s.rec.Marker(time.Now(), holdMark(markDetached, s.tag, s.rec.Offset()))
	} else {
		s.rec.Marker(time.Now(), "ended: "+reason)
	}
	if err := s.rec.Close(); err != nil {
		s.r.log.Error("close recording", "session", s.key.session, "node", s.key.node, "err", err)
	}
	s.flushHistory()
	s.proc.Close()
	s.cancel()
	if !detached {
		// A held shell's note stays for the relay that attaches next; it
		// lapses on its own if none does.
		s.r.noteShell(s, false)
	}
	s.r.log.Info("terminal ended", "session", s.key.session, "node", s.key.node, "reason", reason, "detached", detached)
	close(s.done)
}

// end closes the shell's connections with code and reason and hangs the
// shell up. The pump's finish does the rest.
func (s *shell) end(code int, reason string) {
	<-s.ready
	if s.startErr != nil {
		return
	}
	s.mu.Lock()
	if s.ending {
		s.mu.Unlock()
		return
	}
	s.ending, s.endCode, s.endReason = true, code, reason
	clients := s.clientsLocked()
	s.mu.Unlock()
	for _, c := range clients {
		c.closeNow(code, reason)
	}
	s.hangup()
	select {
	case <-s.done:
	case <-time.After(hangupSettle):
		// A shell that ignores the hangup keeps running in the node until
		// the lab is removed; the relay lets go of it.
		s.proc.Close()
	}
}

// clientsLocked lists who is connected to the shell: its owner first,
// then its viewers. s.mu must be held.
func (s *shell) clientsLocked() []*client {
	clients := make([]*client, 0, len(s.viewers)+1)
	if s.owner != nil {
		clients = append(clients, s.owner)
	}
	for v := range s.viewers {
		clients = append(clients, v)
	}
	return clients
}

// terminate ends the shell because the relay is going away; a held shell
// is let go instead, to live on in its node for the next relay.
func (s *shell) terminate(why string) {
	if s.held != nil {
		s.letGo(CloseGoingAway, "the terminal relay is restarting; reconnect in a moment")
		return
	}
	s.end(CloseGoingAway, why)
}

// letGo closes a held shell's connections and its exec without hanging
// the shell up; finish marks the recording for the next relay.
func (s *shell) letGo(code int, reason string) {
	<-s.ready
	if s.startErr != nil {
		return
	}
	s.mu.Lock()
	if s.ending {
		s.mu.Unlock()
		<-s.done
		return
	}
	s.ending, s.detaching, s.endCode, s.endReason = true, true, code, reason
	clients := s.clientsLocked()
	s.mu.Unlock()
	for _, c := range clients {
		c.closeNow(code, reason)
	}
	s.proc.Close()
	<-s.done
}

// hangup sends SIGHUP to the terminal's processes in the node.
func (s *shell) hangup() {
	ctx, cancel := context.WithTimeout(context.Background(), hangupTimeout)
	defer cancel()
	out, code, err := lab.Output(ctx, s.r.o.Runner, s.labID(), s.key.node, "/bin/sh", "-c", hangupScript, "examlab-hangup", s.tag)
	if err != nil && !errors.Is(err, lab.ErrNotFound) && !errors.Is(err, lab.ErrNotRunning) {
		s.r.log.Warn("hang up terminal", "session", s.key.session, "node", s.key.node, "err", err, "exit", code, "output", out)
	}
}

// labID is the lab the shell runs in (set when it starts).
func (s *shell) labID() string {
	if s.lab != "" {
		return s.lab
	}
	return s.key.session
}

func (s *shell) addHistory(at time.Time, lines []string) {
	s.histMu.Lock()
	defer s.histMu.Unlock()
	for _, l := range lines {
		s.hist = append(s.hist, store.HistoryEntry{At: at.UTC(), Command: l, Source: "relay"})
	}
	if s.histTimer == nil {
		s.histTimer = time.AfterFunc(historyDelay, s.flushHistory)
	}
}

// flushHistory writes the lines gathered so far to the session's history.
func (s *shell) flushHistory() {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.histMu.Lock()
	entries := s.hist
	s.hist = nil
	if s.histTimer != nil {
		s.histTimer.Stop()
		s.histTimer = nil
	}
	s.histMu.Unlock()
	if len(entries) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), historyTimeout)
	defer cancel()
	if _, err := s.r.o.Store.AppendHistory(ctx, s.key.session, s.key.node, entries); err != nil {
		s.r.log.Error("write terminal history", "session", s.key.session, "node", s.key.node, "lines", len(entries), "err", err)
	}
}
