package api

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
)

// sessionView is what a candidate (and the admin list) sees of a session.
type sessionView struct {
	ID          string           `json:"id"`
	Email       string           `json:"email"`
	ExamID      string           `json:"exam_id"`
	Status      session.State    `json:"status"`
	CreatedAt   time.Time        `json:"created_at"`
	StartedAt   time.Time        `json:"started_at,omitzero"`
	ReadyAt     time.Time        `json:"ready_at,omitzero"`
	SubmittedAt time.Time        `json:"submitted_at,omitzero"`
	CompletedAt time.Time        `json:"completed_at,omitzero"`
	Deadline    time.Time        `json:"deadline,omitzero"`
	Remaining   int64            `json:"remaining_seconds"`
	Duration    int64            `json:"duration_seconds"`
	Nodes       []lab.NodeStatus `json:"nodes"`
	Error       string           `json:"error,omitempty"`
	ServerTime  time.Time        `json:"server_time"`
	// While queued (me, status and start): the place in line, how many
	// go first, and a rough wait when there is one (see queuePlace).
	// Paused: the lab is unusable and the clock stands still since
	// PausedAt; Remaining is what was left then (lost.go).
	Paused          bool      `json:"paused,omitempty"`
	PausedAt        time.Time `json:"paused_at,omitzero"`
	QueuePosition   int       `json:"queue_position,omitempty"`
	QueueAhead      *int      `json:"queue_ahead,omitempty"`
	EstimateSeconds *int64    `json:"estimate_seconds,omitempty"`
}

func (s *Server) view(sess *session.Session) sessionView {
	now := s.o.Now().UTC()
	v := sessionView{
		ID: sess.ID, Email: sess.Email, ExamID: sess.ExamID, Status: sess.Status,
		CreatedAt: sess.CreatedAt, StartedAt: sess.StartedAt, ReadyAt: sess.ReadyAt,
		SubmittedAt: sess.SubmittedAt, CompletedAt: sess.CompletedAt, Deadline: sess.Deadline,
		Duration: sess.DurationSeconds, Nodes: sess.Nodes, Error: sess.CandidateError(), ServerTime: now,
	}
	if v.Nodes == nil {
		v.Nodes = []lab.NodeStatus{}
	}
	v.Remaining = int64(sess.Remaining(now) / time.Second)
	pausedView(sess, &v)
	return v
}

// progressNodes are the node states a worker leaves while it changes the
// session's lab — a provision, a node reset, a fresh lab for a lost one
// (store.PutProgress) — when they are newer than the record. The API never
// asks the runtime: with many labs starting at once the engine answers
// slowly, and every candidate's page would wait on it. Once the change is
// over the record holds the nodes, and the lost-lab sweep keeps them in
// step with the lab.
func (s *Server) progressNodes(ctx context.Context, sess *session.Session) []lab.NodeStatus {
	if !sess.Status.LiveLab() {
		return nil
	}
	// Progress is kept under the lab's id (the worker knows the lab).
	p, err := s.o.Store.ReadProgress(ctx, sess.Lab())
	if err != nil {
		s.log.Warn("node progress", "session", sess.ID, "err", err)
		return nil
	}
	if p == nil || p.At.Before(sess.UpdatedAt) {
		return nil
	}
	return p.Nodes
}

// candidateView is the view a candidate's page polls: the record, the
// nodes' progress while the lab changes, and the place in line while
// queued. While paused the record's nodes, in plain words, stand
// (pausedView).
func (s *Server) candidateView(ctx context.Context, sess *session.Session) sessionView {
	v := s.view(sess)
	if p := s.progressNodes(ctx, sess); p != nil && !sess.Paused() {
		v.Nodes = p
	}
	s.queuePlace(ctx, sess, &v)
	return v
}

func decodeJSON(c *fiber.Ctx, dst any) error {
	if len(c.Body()) == 0 {
		return errBadJSON
	}
	dec := json.NewDecoder(bytesReader(c.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fail(fiber.StatusBadRequest, "request body: "+err.Error())
	}
	return nil
}

// login signs a candidate in. With {"code"} the access code names the
// roster entry; with {"email"} (and optionally "sitting" and "name") a
// sitting that allows open registration adds the candidate to its roster
// and issues them a code, answered this once. Email alone admits no one
// anywhere else, and a refusal never tells whether an email is on a roster.
func (s *Server) login(c *fiber.Ctx) error {
	var req struct {
		Code    string `json:"code"`
		Email   string `json:"email"`
		Name    string `json:"name"`
		Sitting string `json:"sitting"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	ctx, now := c.UserContext(), s.o.Now()
	if req.Code != "" {
		norm, err := sitting.NormalizeCode(req.Code)
		if err != nil {
			// A malformed code is still an attempt and a failure of its
			// address, or the shape check would be a free oracle.
			if lerr := s.signin.Attempt(c, ""); lerr != nil {
				return lerr
			}
			s.signin.Failed(c, "")
			return err
		}
		// The account a code sign-in is counted under is the code itself
		// (hashed): its failures throttle whoever guesses at it.
		account := "code:" + sitting.HashCode(norm)
		if err := s.signin.Attempt(c, account); err != nil {
			return err
		}
		st, e, err := s.o.Store.EntryByCode(ctx, norm)
		if errors.Is(err, sitting.ErrUnknownCode) {
			s.signin.Failed(c, account)
		}
		if err != nil {
			return err
		}
		if err := st.Admits(now); err != nil {
			return err
		}
		return s.signIn(c, st, e, "")
	}
	if req.Email == "" {
		return fail(fiber.StatusBadRequest, "enter the access code from your invitation")
	}
	email, err := store.NormalizeEmail(req.Email)
	if err != nil {
		return fail(fiber.StatusBadRequest, "a valid email address is required")
	}
	if len(req.Name) > sitting.MaxName {
		return fail(fiber.StatusBadRequest, "the name is too long")
	}
	account := "email:" + email
	if err := s.signin.Attempt(c, account); err != nil {
		return err
	}
	st, err := s.openRegistration(ctx, req.Sitting, now)
	if errors.Is(err, errNeedCode) {
		s.signin.Failed(c, account)
	}
	if err != nil {
		return err
	}
	// Signing in again goes through the code issued the first time: an
	// email alone must never reach someone else's session.
	if _, err := s.o.Store.EntryByEmail(ctx, st.ID, email); err == nil {
		s.signin.Failed(c, account)
		return errNeedCode
	} else if !errors.Is(err, store.ErrNoEntry) {
		return err
	}
	name := strings.TrimSpace(req.Name)
	if name == "" {
		name = email
	}
	issued, err := s.o.Store.AddEntries(ctx, st.ID, []sitting.Row{{Line: 1, Email: email, Name: name}}, true)
	if errors.Is(err, sitting.ErrInvalid) {
		return errNeedCode // registered a moment ago by a concurrent request
	}
	if err != nil {
		return err
	}
	return s.signIn(c, st, &issued[0].Entry, issued[0].Code)
}

// signinOptions tells the sign-in page whether an email alone may be used
// anywhere right now: the sittings open now with open registration.
func (s *Server) signinOptions(c *fiber.Ctx) error {
	all, err := s.o.Store.Sittings(c.UserContext())
	if err != nil {
		return err
	}
	type openSitting struct {
		ID     string    `json:"id"`
		Title  string    `json:"title"`
		Closes time.Time `json:"closes"`
	}
	open := []openSitting{}
	now := s.o.Now()
	for _, st := range all {
		if st.OpenRegistration && st.Admits(now) == nil {
			open = append(open, openSitting{st.ID, st.Title, st.Closes})
		}
	}
	return c.JSON(fiber.Map{"open_registration": open})
}

// sittingAdmits refuses a start outside the window of the session's
// sitting (a deleted sitting admits no one either).
func (s *Server) sittingAdmits(ctx context.Context, sess *session.Session) error {
	if sess.SittingID == "" {
		return nil
	}
	st, err := s.o.Store.GetSitting(ctx, sess.SittingID)
	if errors.Is(err, store.ErrNoSitting) {
		return fail(fiber.StatusForbidden, "this sitting no longer exists; ask the exam staff")
	}
	if err != nil {
		return err
	}
	return st.Admits(s.o.Now())
}

// errNeedCode refuses an email-only sign-in the same way whether or not the
// email is on a roster.
var errNeedCode = fail(fiber.StatusUnauthorized, "sign in with the access code from your invitation")

// openRegistration finds the sitting an email-only sign-in joins: the one
// named, or else the only sitting open now that allows it.
func (s *Server) openRegistration(ctx context.Context, id string, now time.Time) (*sitting.Sitting, error) {
	if id != "" {
		st, err := s.o.Store.GetSitting(ctx, id)
		if errors.Is(err, store.ErrNoSitting) || errors.Is(err, store.ErrBadID) || (err == nil && !st.OpenRegistration) {
			return nil, errNeedCode
		}
		if err != nil {
			return nil, err
		}
		return st, st.Admits(now)
	}
	all, err := s.o.Store.Sittings(ctx)
	if err != nil {
		return nil, err
	}
	var open []*sitting.Sitting
	for _, st := range all {
		if st.OpenRegistration && st.Admits(now) == nil {
			open = append(open, st)
		}
	}
	if len(open) != 1 {
		return nil, errNeedCode
	}
	return open[0], nil
}

// signIn gives the entry's session a fresh token and answers with it;
// code is set only when it was issued just now.
func (s *Server) signIn(c *fiber.Ctx, st *sitting.Sitting, e *sitting.Entry, code string) error {
	ex, ok := s.o.Exams(st.ExamID)
	if !ok {
		return fail(fiber.StatusConflict, "this sitting's exam is not available; ask the exam staff")
	}
	sess, token, err := s.o.Store.SignIn(c.UserContext(), store.SignIn{
		SittingID: st.ID, EntryID: e.ID, ExamID: ex.ID, Duration: ex.Duration.Duration, Runtime: s.o.RuntimeName,
	})
	if err != nil {
		return err
	}
	s.setCookie(c, auth.CandidateCookie, token, 24*time.Hour)
	out := fiber.Map{"session_id": sess.ID, "token": token, "status": sess.Status, "session": s.view(sess),
		"sitting": fiber.Map{"id": st.ID, "title": st.Title, "opens": st.Opens, "closes": st.Closes}}
	if code != "" {
		out["code"] = code
	}
	return c.JSON(out)
}

func (s *Server) logout(c *fiber.Ctx) error {
	s.clearCookie(c, auth.CandidateCookie)
	return c.SendStatus(fiber.StatusNoContent)
}

// examInfo is the exam's public face: tasks and topology, no answers.
func (s *Server) examInfo(c *fiber.Ctx) error {
	e := s.o.Exam
	if sess, err := s.candidate(c); err == nil {
		if ex, ok := s.o.Exams(sess.ExamID); ok {
			e = ex
		}
	}
	return c.JSON(fiber.Map{"id": e.ID, "title": e.Title, "duration_seconds": int64(e.Duration.Seconds()),
		"tasks": e.Tasks, "nodes": e.NodeNames()})
}

func (s *Server) me(c *fiber.Ctx) error {
	sess := c.Locals(localSession).(*session.Session)
	return c.JSON(s.candidateView(c.UserContext(), sess))
}

// loadSession reads the session the route's guard admitted.
func (s *Server) loadSession(c *fiber.Ctx) (*session.Session, error) {
	return s.o.Store.Get(c.UserContext(), sessionID(c))
}

// sessionStatus is what the candidate's page polls. The candidate's own
// request reuses the record its guard just read with the token; an
// admin's reads it.
func (s *Server) sessionStatus(c *fiber.Ctx) error {
	sess, ok := c.Locals(localSession).(*session.Session)
	if !ok {
		var err error
		if sess, err = s.loadSession(c); err != nil {
			return err
		}
	}
	return c.JSON(s.candidateView(c.UserContext(), sess))
}

// start queues the session for a lab slot and, when one is free, admits
// it and enqueues the provision (scheduler.Start); it returns at once.
// Starting again keeps the session's place in line.
func (s *Server) start(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.loadSession(c)
	if err != nil {
		return err
	}
	switch sess.Status {
	case session.StateCreated, session.StateQueued, session.StateProvisioning:
	case session.StateReady:
		return c.JSON(s.view(sess))
	default:
		return fail(fiber.StatusConflict, "session is "+string(sess.Status)+"; it cannot be started")
	}
	if err := s.sittingAdmits(ctx, sess); err != nil {
		return err
	}
	sess, err = scheduler.Start(ctx, s.o.Store, s.o.Enqueuer, sess.ID, s.o.Now())
	if errors.Is(err, scheduler.ErrNotQueued) {
		s.log.Error("enqueue provision", "session", sess.ID, "err", err)
		return fail(fiber.StatusServiceUnavailable, "could not queue the lab; try again")
	}
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusAccepted).JSON(s.candidateView(ctx, sess))
}

func (s *Server) answers(c *fiber.Ctx) error {
	as, err := s.o.Store.Answers(c.UserContext(), sessionID(c))
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"answers": as})
}

// saveAnswer stores one task's answer and acknowledges only once it is on
// disk. The body is {"value": <any JSON>}.
func (s *Server) saveAnswer(c *fiber.Ctx) error {
	sess, ex, err := s.sessionExam(c)
	if err != nil {
		return err
	}
	taskID := c.Params("taskId")
	if err := knownTask(ex, taskID); err != nil {
		return err
	}
	if len(c.Body()) > s.o.Store.MaxAnswerBytes()+answerSlack {
		return fail(fiber.StatusRequestEntityTooLarge, "answer too large")
	}
	var req struct {
		Value json.RawMessage `json:"value"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if err := s.checkValue(req.Value); err != nil {
		return err
	}
	a, err := s.o.Store.SaveAnswer(c.UserContext(), sess.ID, taskID, req.Value)
	if err != nil {
		return err
	}
	return c.JSON(a)
}

// answerSlack is what a request body may hold beyond an answer's value:
// the braces, the key and, in a batch, the task id.
const answerSlack = 64

// sessionExam loads the route's session and the exam it takes.
func (s *Server) sessionExam(c *fiber.Ctx) (*session.Session, *exam.Exam, error) {
	sess, err := s.loadSession(c)
	if err != nil {
		return nil, nil, err
	}
	ex, ok := s.o.Exams(sess.ExamID)
	if !ok {
		return nil, nil, fail(fiber.StatusConflict, "the session's exam is not loaded")
	}
	return sess, ex, nil
}

// knownTask refuses a task id the exam does not have.
func knownTask(ex *exam.Exam, taskID string) error {
	if _, ok := ex.Task(taskID); !ok {
		return fail(fiber.StatusNotFound, "no task "+quote(taskID)+" in this exam")
	}
	return nil
}

// checkValue refuses an answer the store would not keep, so that a batch
// is refused whole before any of it is saved.
func (s *Server) checkValue(value json.RawMessage) error {
	if len(value) == 0 {
		return fail(fiber.StatusBadRequest, `request body needs a "value"`)
	}
	if len(value) > s.o.Store.MaxAnswerBytes() {
		return fail(fiber.StatusRequestEntityTooLarge, "answer too large")
	}
	return nil
}

// submit ends the candidate's work: the session moves to submitted and the
// archive (then cleanup) is enqueued.
func (s *Server) submit(c *fiber.Ctx) error {
	ctx := c.UserContext()
	reason := session.ByCandidate
	if isAdminCtx(c) {
		reason = session.ByAdmin
	}
	sess, err := s.submitSession(ctx, sessionID(c), reason)
	if err != nil {
		return err
	}
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: actor(c), Action: "submit"})
	return c.Status(fiber.StatusAccepted).JSON(s.view(sess))
}

// submitSession is the one submit (scheduler.Submit) as the API answers it.
func (s *Server) submitSession(ctx context.Context, id, reason string) (*session.Session, error) {
	sess, _, err := scheduler.Submit(ctx, s.o.Store, s.o.Enqueuer, id, reason, s.o.Now())
	if errors.Is(err, scheduler.ErrNotQueued) {
		// The submit is recorded; the expiry sweep re-enqueues stragglers.
		s.log.Error("enqueue archive", "session", id, "err", err)
		return nil, fail(fiber.StatusServiceUnavailable, "submitted, but the archive could not be queued yet; it will be retried")
	}
	return sess, err
}

// postHistory records command history a page reports for one terminal.
// It is kept apart from what the relay records itself ("source").
func (s *Server) postHistory(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.loadSession(c)
	if err != nil {
		return err
	}
	if sess.Status.Terminal() {
		// The session's record is sealed: history belongs to the exam.
		return fail(fiber.StatusConflict, "the session has ended")
	}
	term := c.Params("terminalId")
	ex, _ := s.o.Exams(sess.ExamID)
	if ex == nil || !store.ValidTerminalID(term) {
		return fail(fiber.StatusBadRequest, "bad terminal id")
	}
	if _, ok := ex.Node(term); !ok {
		return fail(fiber.StatusNotFound, "no terminal "+quote(term)+" in this lab")
	}
	var req struct {
		Entries []struct {
			Command string    `json:"command"`
			At      time.Time `json:"at"`
		} `json:"entries"`
		Commands []string `json:"commands"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	var entries []store.HistoryEntry
	for _, e := range req.Entries {
		entries = append(entries, store.HistoryEntry{At: e.At, Command: e.Command, Source: "client"})
	}
	for _, cmd := range req.Commands {
		entries = append(entries, store.HistoryEntry{Command: cmd, Source: "client"})
	}
	if len(entries) == 0 {
		return fail(fiber.StatusBadRequest, `request body needs "entries" or "commands"`)
	}
	if len(entries) > 1000 {
		return fail(fiber.StatusRequestEntityTooLarge, "at most 1000 entries per request")
	}
	for _, e := range entries {
		if len(e.Command) > 4096 {
			return fail(fiber.StatusRequestEntityTooLarge, "command longer than 4096 bytes")
		}
	}
	h, err := s.o.Store.AppendHistory(ctx, sess.ID, term, entries)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"terminal": term, "count": len(h.Entries)})
}
