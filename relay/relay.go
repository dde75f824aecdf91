// Package relay is the terminal relay: it carries a candidate's browser
// terminal over a WebSocket to a login shell in one node of their lab, and
// records what happens there.
//
// One WebSocket per (session, node). The candidate's own connection drives
// the shell; admins may watch any terminal read-only. A dropped connection
// leaves the shell running for a grace period, and a new connection from the
// same candidate reattaches to it and first receives a replay of recent
// output. The shell itself lives in its node, held by the platform's binary
// (held.go), so any relay reattaches to it: a restarted relay, or another
// one behind the same address; no sticky routing is needed. Nodes without
// the holder get a shell of the relay's own exec, which ends with the
// relay.
//
// Clients written against the seed name a terminal by its container,
// exam-{id8}-{node}: that route takes the session from the credential (the
// name only has to be of the caller's lab) and is the same terminal,
// admitted by the same checks.
//
// # Protocol
//
// Terminal data travels as binary frames both ways. Control messages are
// JSON text frames with a "type":
//
//	client → relay  {"type":"auth","token":"…"}          first frame, only without a cookie
//	                {"type":"resize","rows":40,"cols":120}
//	                {"type":"ping"}                       answered with {"type":"pong"}
//	relay → client  {"type":"status","state":"waiting","message":"…"}
//	                {"type":"ready","session":"…","node":"…","reattached":false,"read_only":false,"replay":1234}
//	                {"type":"exit","code":0,"message":"…"}
//	                {"type":"pong"}
//
// The relay sends WebSocket pings every PingInterval; a connection that
// answers nothing for two intervals is treated as dropped. Every refusal or
// end is a close frame with one of the Close* codes and a reason a person
// can read.
//
// # Auth and Origin
//
// The candidate is known by the examlab_session cookie, an Authorization
// bearer header, or a first-frame auth message; admins by the examlab_admin
// cookie, bearer header or first frame. Tokens are never read from the URL,
// which lands in access logs. A connection whose Origin header is not in
// Options.Origins is refused with CloseForbidden before any credential is
// looked at. A connection without an Origin header is admitted to the auth
// step: browsers always send Origin on WebSockets, so its absence means a
// non-browser client (a CLI, a test), which cannot ride a candidate's
// cookies and must present a token of its own.
//
// # Flow control
//
// Output is read from the shell in chunks into a bounded per-connection
// queue (SendQueueBytes). When the candidate's browser reads slower than the
// shell writes, the queue fills and the relay stops reading the shell, so
// the pressure reaches the shell's terminal and the process writing to it
// blocks; the relay's memory stays bounded. Input travels on its own path
// (the connection's read loop writes straight to the shell), so Ctrl-C
// reaches the shell however much output is waiting.
//
// # Recording
//
// Every shell is recorded as asciicast v2 in the session's terminal-logs
// folder: the first shell on a node in {node}.cast, later shells on the same
// node (after an exit or a grace expiry) in {node}.2.cast, {node}.3.cast…
// A reattach appends to the same file, through this relay or another one:
// a held shell's recording carries "attached/detached shell=… offset=…"
// markers that tell the next relay which part of the scrollback it has not
// recorded yet (held.go). Output ("o"), the
// candidate's input ("i") and resizes ("r") are recorded; a file that
// reaches MaxRecordingBytes stops recording output and says so with a
// marker ("m") event. Lines typed into the shell are also kept as command
// history (terminal-logs/{node}.json, source "relay").
package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/ratelimit"
	"github.com/examlab/examlab/store"
)

// Close codes the relay ends connections with. The 44xx codes mirror the
// HTTP statuses of the same meaning so that pages can explain them.
const (
	CloseNormal      = 1000 // the shell exited
	CloseGoingAway   = 1001 // the relay is shutting down
	CloseTooBig      = 1009 // a message exceeded MaxMessageBytes
	CloseInternal    = 1011 // the relay could not start the shell
	CloseTryLater    = 1013 // an admin viewer fell behind the output
	CloseBadMessage  = 4400 // a malformed control message
	CloseAuth        = 4401 // no or unknown credentials
	CloseForbidden   = 4403 // foreign Origin, someone else's session, not an admin
	CloseNotFound    = 4404 // no such session, or the node is not in the exam
	CloseIdle        = 4408 // no input for IdleTimeout
	CloseReplaced    = 4409 // the same terminal was opened in another window
	CloseEnded       = 4410 // the session ended or its lab is gone
	CloseTooMany     = 4429 // MaxTerminals reached for the session, or sign-in limits spent
	CloseUnavailable = 4503 // the node did not come up in time
)

// Defaults for zero Options fields.
const (
	DefaultMaxTerminals      = 16
	DefaultMaxMessageBytes   = 64 << 10
	DefaultIdleTimeout       = 30 * time.Minute
	DefaultGrace             = 2 * time.Minute
	DefaultReplayBytes       = 256 << 10
	DefaultSendQueueBytes    = 256 << 10
	DefaultChunkBytes        = 32 << 10
	DefaultPingInterval      = 25 * time.Second
	DefaultAuthTimeout       = 10 * time.Second
	DefaultWriteTimeout      = 15 * time.Second
	DefaultNodeWait          = 3 * time.Minute
	DefaultSessionCheck      = 5 * time.Second
	DefaultMaxRecordingBytes = 64 << 20
)

// DefaultHolder is where nodes have the platform's binary: in the
// grader's tools volume (grading.ToolsDir).
const DefaultHolder = "/.examlab/examlab"

// DefaultShell is the login shell started in a node.
var DefaultShell = []string{"/bin/bash", "-l"}

// runner starts processes in lab nodes; both lab runtimes implement it.
type runner interface {
	Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error)
}

// observer counts terminal connections (the platform's metrics).
type observer interface {
	// TerminalOpened counts one connection open and returns what counts it
	// closed again.
	TerminalOpened() (closed func())
}

// Options configure a Relay. Zero values mean the documented defaults.
type Options struct {
	// Store resolves candidate tokens and sessions and holds recordings.
	// Required.
	Store *store.Store
	// Runner execs shells in lab nodes. Required.
	Runner runner
	// Exams returns the exam of a session, which names its nodes. Required.
	Exams func(id string) (*exam.Exam, bool)
	// Auth checks candidate and admin credentials, as the API does.
	// Required.
	Auth *auth.Auth
	// Limits, when set, are the sign-in limits (ratelimit.Signin): an
	// admin token offered to the read-only terminal view spends the client
	// address's wrong-credential budget like a sign-in, and is refused
	// (4429) while it is spent. Proxies tell the client address behind
	// trusted proxies.
	Limits  credentialLimits
	Proxies ratelimit.Proxies
	// Origins are the Origin header values accepted (scheme://host[:port]).
	// Empty accepts no browser at all; connections without an Origin header
	// are always admitted to authentication.
	Origins []string
	// MaxTerminals bounds a candidate's open terminal connections per
	// session; default 16.
	MaxTerminals int
	// MaxMessageBytes bounds one incoming WebSocket message (larger ones
	// close the connection with 1009) and the size of outgoing data frames;
	// default 64 KiB.
	MaxMessageBytes int
	// IdleTimeout closes a candidate's connection that has sent no
	// keystroke or resize for this long (the shell stays for Grace);
	// default 30m, negative disables.
	IdleTimeout time.Duration
	// Grace is how long a shell outlives its dropped connection, waiting
	// for a reattach; default 2m.
	Grace time.Duration
	// ReplayBytes is how much recent output a reattach replays; default
	// 256 KiB.
	ReplayBytes int
	// SendQueueBytes bounds the output queued for one connection; default
	// 256 KiB. It is the relay's memory per terminal beyond the replay.
	SendQueueBytes int
	// PingInterval is how often the relay pings each connection; default 25s.
	PingInterval time.Duration
	// AuthTimeout is how long a connection without a cookie has to send its
	// auth message; default 10s.
	AuthTimeout time.Duration
	// WriteTimeout bounds one write to a client; default 15s.
	WriteTimeout time.Duration
	// NodeWait is how long a connection waits for a node of a provisioning
	// lab to start; default 3m.
	NodeWait time.Duration
	// SessionCheck is how often live shells' sessions are checked, so that
	// a submitted session's terminals close; default 5s.
	SessionCheck time.Duration
	// MaxRecordingBytes bounds one recording file; default 64 MiB.
	MaxRecordingBytes int64
	// Shell is the command run in a node; default DefaultShell.
	Shell []string
	// Holder is the platform's binary in the nodes, run as the terminal
	// holder (held.go); default DefaultHolder. "none" runs every shell in
	// this relay's exec, as does a node without the binary.
	Holder string
	// Observer, when set, counts open terminal connections.
	Observer observer
	Logger   *slog.Logger
}

// Relay serves terminal WebSockets. It is safe for concurrent use.
type Relay struct {
	o     Options
	log   *slog.Logger
	chunk int

	// ctx bounds every shell; cancelled once Shutdown has drained.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	shells   map[termKey]*shell
	slots    map[string]int // candidate connections per session
	clients  map[*client]struct{}
	closing  bool
	handlers sync.WaitGroup
	bg       sync.WaitGroup

	queued     atomic.Int64
	peakQueued atomic.Int64
	peakConn   atomic.Int64
}

type termKey struct{ session, node string }

func (k termKey) String() string { return k.session + "/" + k.node }

// New builds a relay; Register mounts it.
func New(o Options) (*Relay, error) {
	if o.Store == nil || o.Runner == nil || o.Exams == nil || o.Auth == nil {
		return nil, errors.New("new relay: store, runner, exams and auth are required")
	}
	if o.MaxTerminals <= 0 {
		o.MaxTerminals = DefaultMaxTerminals
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.MaxMessageBytes < 1024 {
		return nil, fmt.Errorf("new relay: max message bytes %d is below 1024", o.MaxMessageBytes)
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	if o.ReplayBytes <= 0 {
		o.ReplayBytes = DefaultReplayBytes
	}
	if o.SendQueueBytes <= 0 {
		o.SendQueueBytes = DefaultSendQueueBytes
	}
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.AuthTimeout <= 0 {
		o.AuthTimeout = DefaultAuthTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.NodeWait <= 0 {
		o.NodeWait = DefaultNodeWait
	}
	if o.SessionCheck <= 0 {
		o.SessionCheck = DefaultSessionCheck
	}
	if o.MaxRecordingBytes <= 0 {
		o.MaxRecordingBytes = DefaultMaxRecordingBytes
	}
	if len(o.Shell) == 0 {
		o.Shell = DefaultShell
	}
	if o.Holder == "" {
		o.Holder = DefaultHolder
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	r := &Relay{
		o:       o,
		log:     o.Logger.With("component", "relay"),
		chunk:   min(DefaultChunkBytes, o.MaxMessageBytes),
		shells:  map[termKey]*shell{},
		slots:   map[string]int{},
		clients: map[*client]struct{}{},
	}
	// A queue holds at least two chunks, so that one can be written while
	// the next is read.
	r.chunk = min(r.chunk, max(o.SendQueueBytes/2, 1024))
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.bg.Add(1)
	go r.watchSessions()
	return r, nil
}

// Register mounts the terminal routes on rt:
//
//	GET /ws/session/:id/terminal/:node        the candidate's terminal
//	GET /api/terminal/:container              the same, by container name (the seed's route)
//	GET /ws/admin/session/:id/terminal/:node  an admin's read-only view
//	GET /ws/admin/review/:rid/terminal/:node  an admin's shell in a review lab (review.go)
func (r *Relay) Register(rt fiber.Router) {
	cfg := websocket.Config{
		// Origin is checked after the upgrade so that the page learns why
		// it was refused from the close frame.
		ReadBufferSize:  4 << 10,
		WriteBufferSize: r.chunk + 64,
		RecoverHandler:  r.recoverPanic,
	}
	rt.Get("/ws/session/:id/terminal/:node", requireUpgrade, websocket.New(r.serveCandidate, cfg))
	rt.Get("/api/terminal/:container", requireUpgrade, websocket.New(r.serveContainer, cfg))
	rt.Get("/ws/admin/session/:id/terminal/:node", requireUpgrade, r.noteClient, websocket.New(r.serveAdmin, cfg))
	rt.Get("/ws/admin/review/:rid/terminal/:node", requireUpgrade, r.noteClient, websocket.New(r.serveReview, cfg))
}

// requireUpgrade answers plain HTTP requests on the WebSocket routes.
func requireUpgrade(c *fiber.Ctx) error {
	if !websocket.IsWebSocketUpgrade(c) {
		return fiber.NewError(fiber.StatusUpgradeRequired, "this is a WebSocket endpoint")
	}
	return c.Next()
}

func (r *Relay) recoverPanic(c *websocket.Conn) {
	if v := recover(); v != nil {
		r.log.Error("terminal handler panicked", "panic", v, "path", c.Params("id")+"/"+c.Params("node"))
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(CloseInternal, "internal error"), time.Now().Add(time.Second))
	}
}

// credentialLimits is the part of the sign-in limits the relay uses.
type credentialLimits interface {
	Guard(ctx context.Context, addr netip.Addr) error
	Failed(ctx context.Context, addr netip.Addr, account string) error
}

// localClient holds the client address a WebSocket was opened from.
const localClient = "examlab.client"

// noteClient records the client address before the upgrade, while the
// request's headers are still at hand.
func (r *Relay) noteClient(c *fiber.Ctx) error {
	c.Locals(localClient, r.o.Proxies.RequestClient(c))
	return c.Next()
}

// Stats are the relay's live counters.
type Stats struct {
	// Shells running (attached or within their grace period).
	Shells int `json:"shells"`
	// Connections open, candidates and admin viewers.
	Connections int `json:"connections"`
	// QueuedBytes is output waiting in connections' send queues now, and
	// PeakQueuedBytes the most ever waiting at once.
	QueuedBytes     int64 `json:"queued_bytes"`
	PeakQueuedBytes int64 `json:"peak_queued_bytes"`
	// PeakConnQueuedBytes is the most one connection ever had waiting: the
	// number QueueLimitBytes bounds.
	PeakConnQueuedBytes int64 `json:"peak_conn_queued_bytes"`
	// ReplayBytes is output held for reattach replays.
	ReplayBytes int64 `json:"replay_bytes"`
	// QueueLimitBytes bounds one connection's queue: QueuedBytes never
	// exceeds it times Connections.
	QueueLimitBytes int64 `json:"queue_limit_bytes"`
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{
		Shells:              len(r.shells),
		Connections:         len(r.clients),
		QueuedBytes:         r.queued.Load(),
		PeakQueuedBytes:     r.peakQueued.Load(),
		PeakConnQueuedBytes: r.peakConn.Load(),
		QueueLimitBytes:     int64(r.o.SendQueueBytes),
	}
	for _, s := range r.shells {
		st.ReplayBytes += int64(s.replayLen())
	}
	return st
}

// notePeakConn records one connection's queue length if it is the most
// any has had.
func (r *Relay) notePeakConn(v int64) {
	for {
		p := r.peakConn.Load()
		if v <= p || r.peakConn.CompareAndSwap(p, v) {
			return
		}
	}
}

func (r *Relay) addQueued(n int64) {
	v := r.queued.Add(n)
	for {
		p := r.peakQueued.Load()
		if v <= p || r.peakQueued.CompareAndSwap(p, v) {
			return
		}
	}
}

// Shutdown closes every connection (1001), ends every shell, and waits for
// recordings and histories to be written or ctx to end.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return nil
	}
	r.closing = true
	shells := make([]*shell, 0, len(r.shells))
	for _, s := range r.shells {
		shells = append(shells, s)
	}
	clients := make([]*client, 0, len(r.clients))
	for c := range r.clients {
		clients = append(clients, c)
	}
	r.mu.Unlock()

	for _, c := range clients {
		c.closeNow(CloseGoingAway, "the terminal relay is restarting; reconnect in a moment")
	}
	for _, s := range shells {
		go s.terminate("relay shutdown")
	}
	done := make(chan struct{})
	go func() {
		for _, s := range shells {
			<-s.done
		}
		r.handlers.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("shut down relay: %w", ctx.Err())
	}
	r.cancel()
	r.bg.Wait()
	return err
}

// watchSessions ends the shells of sessions that are no longer open: a
// submit or an expiry must end the candidate's work in the terminals too.
// It looks at every session with shells each SessionCheck, and at once at
// a session a worker is about to grade (store.EndTerminals).
func (r *Relay) watchSessions() {
	defer r.bg.Done()
	t := time.NewTicker(r.o.SessionCheck)
	defer t.Stop()
	ends := r.o.Store.EndTerminalsRequests(r.ctx)
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			r.checkSessions("")
		case id, ok := <-ends:
			if !ok {
				ends = nil // the relay is closing
				continue
			}
			r.checkSessions(id)
		}
	}
}

// noteShell records a shell's start (live) or end in the store, where a
// worker about to grade the session looks for live terminals.
func (r *Relay) noteShell(s *shell, live bool) { r.noteShellTag(s.key.session, s.tag, live) }

func (r *Relay) noteShellTag(session, tag string, live bool) {
	ctx, cancel := context.WithTimeout(context.Background(), r.o.SessionCheck)
	defer cancel()
	var err error
	if live {
		err = r.o.Store.TerminalOpened(ctx, session, tag)
	} else {
		err = r.o.Store.TerminalClosed(ctx, session, tag)
	}
	if err != nil {
		r.log.Warn("note terminal", "session", session, "live", live, "err", err)
	}
}

// checkSessions ends the shells of sessions (of only) that left the live
// state, and renews the notes of the others' shells.
func (r *Relay) checkSessions(only string) {
	r.mu.Lock()
	bySession := map[string][]*shell{}
	for k, s := range r.shells {
		if only == "" || k.session == only {
			bySession[k.session] = append(bySession[k.session], s)
		}
	}
	r.mu.Unlock()
	for id, shells := range bySession {
		ctx, cancel := context.WithTimeout(r.ctx, r.o.SessionCheck)
		sess, err := r.o.Store.Get(ctx, id)
		cancel()
		var reason string
		switch {
		case errors.Is(err, store.ErrNotFound):
			reason = "the session no longer exists"
		case err != nil:
			// A store hiccup is not a reason to cut a candidate off.
			r.log.Warn("check session of live terminals", "session", id, "err", err)
			continue
		case !sess.Status.LiveLab():
			reason = "the session is " + string(sess.Status) + "; the terminals are closed"
		default:
			for _, s := range shells {
				if !s.isEnding() {
					r.noteShell(s, true)
				}
			}
			continue
		}
		for _, s := range shells {
			go s.end(CloseEnded, reason)
		}
	}
}

func newTag() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
