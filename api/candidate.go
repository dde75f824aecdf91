package api

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
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
}

func (s *Server) view(sess *session.Session) sessionView {
	now := s.o.Now().UTC()
	v := sessionView{
		ID: sess.ID, Email: sess.Email, ExamID: sess.ExamID, Status: sess.Status,
		CreatedAt: sess.CreatedAt, StartedAt: sess.StartedAt, ReadyAt: sess.ReadyAt,
		SubmittedAt: sess.SubmittedAt, CompletedAt: sess.CompletedAt, Deadline: sess.Deadline,
		Duration: sess.DurationSeconds, Nodes: sess.Nodes, Error: sess.Error, ServerTime: now,
	}
	if v.Nodes == nil {
		v.Nodes = []lab.NodeStatus{}
	}
	v.Remaining = int64(sess.Remaining(now) / time.Second)
	return v
}

// liveNodes overlays the runtime's current node states while a lab is up,
// so the page can show progress node by node during provisioning.
func (s *Server) liveNodes(ctx context.Context, sess *session.Session) []lab.NodeStatus {
	if s.o.Runtime == nil || !sess.Status.LiveLab() {
		return nil
	}
	ex, ok := s.o.Exams(sess.ExamID)
	if !ok {
		return nil
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: sess.ID, Candidate: sess.Email})
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	nodes, err := s.o.Runtime.Status(ctx, spec)
	if err != nil {
		s.log.Warn("live node status", "session", sess.ID, "err", err)
		return nil
	}
	return nodes
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

func (s *Server) login(c *fiber.Ctx) error {
	var req struct {
		Email string `json:"email"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	email, err := store.NormalizeEmail(req.Email)
	if err != nil {
		return fail(fiber.StatusBadRequest, "a valid email address is required")
	}
	if err := s.signin.Attempt(c, email); err != nil {
		return err
	}
	sess, token, err := s.o.Store.Login(c.UserContext(), email, s.o.Exam.ID, s.o.Exam.Duration.Duration, s.o.RuntimeName)
	if err != nil {
		return err
	}
	s.setCookie(c, auth.CandidateCookie, token, 24*time.Hour)
	return c.JSON(fiber.Map{"session_id": sess.ID, "token": token, "status": sess.Status, "session": s.view(sess)})
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
	return c.JSON(s.view(sess))
}

func (s *Server) loadSession(c *fiber.Ctx) (*session.Session, error) {
	return s.o.Store.Get(c.UserContext(), c.Params("id"))
}

func (s *Server) sessionStatus(c *fiber.Ctx) error {
	sess, err := s.loadSession(c)
	if err != nil {
		return err
	}
	v := s.view(sess)
	if live := s.liveNodes(c.UserContext(), sess); live != nil {
		v.Nodes = live
	}
	return c.JSON(v)
}

// start moves the session to provisioning and enqueues the provision; it
// returns at once. Starting again re-enqueues, which the task id makes a
// no-op while the first provision is queued or running.
func (s *Server) start(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.loadSession(c)
	if err != nil {
		return err
	}
	switch sess.Status {
	case session.StateCreated, session.StateProvisioning:
	case session.StateReady:
		return c.JSON(s.view(sess))
	default:
		return fail(fiber.StatusConflict, "session is "+string(sess.Status)+"; it cannot be started")
	}
	sess, err = scheduler.Start(ctx, s.o.Store, s.o.Enqueuer, sess.ID, s.o.Now())
	if errors.Is(err, scheduler.ErrNotQueued) {
		s.log.Error("enqueue provision", "session", sess.ID, "err", err)
		return fail(fiber.StatusServiceUnavailable, "could not queue the lab; try again")
	}
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusAccepted).JSON(s.view(sess))
}

func (s *Server) answers(c *fiber.Ctx) error {
	as, err := s.o.Store.Answers(c.UserContext(), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"answers": as})
}

// saveAnswer stores one task's answer and acknowledges only once it is on
// disk. The body is {"value": <any JSON>}.
func (s *Server) saveAnswer(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.loadSession(c)
	if err != nil {
		return err
	}
	taskID := c.Params("taskId")
	ex, ok := s.o.Exams(sess.ExamID)
	if !ok {
		return fail(fiber.StatusConflict, "the session's exam is not loaded")
	}
	if _, ok := ex.Task(taskID); !ok {
		return fail(fiber.StatusNotFound, "no task "+quote(taskID)+" in this exam")
	}
	if len(c.Body()) > s.o.Store.MaxAnswerBytes()+64 {
		return fail(fiber.StatusRequestEntityTooLarge, "answer too large")
	}
	var req struct {
		Value json.RawMessage `json:"value"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if len(req.Value) == 0 {
		return fail(fiber.StatusBadRequest, `request body needs a "value"`)
	}
	a, err := s.o.Store.SaveAnswer(ctx, sess.ID, taskID, req.Value)
	if err != nil {
		return err
	}
	return c.JSON(a)
}

// submit ends the candidate's work: the session moves to submitted and the
// archive (then cleanup) is enqueued.
func (s *Server) submit(c *fiber.Ctx) error {
	ctx := c.UserContext()
	reason := session.ByCandidate
	if isAdminCtx(c) {
		reason = session.ByAdmin
	}
	sess, err := s.submitSession(ctx, c.Params("id"), reason)
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
