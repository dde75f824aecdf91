package api

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// runner starts processes in lab nodes, for the grader; both runtimes
// implement it.
type runner interface {
	Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error)
}

var _ grading.Runner = runner(nil)

func (s *Server) gradingRoutes(adm fiber.Router) {
	adm.Post("/session/:id/regrade", s.adminRegrade)
	adm.Put("/session/:id/marks/:task", s.adminMark)
	adm.Get("/results.csv", s.resultsCSV)
	adm.Get("/results.json", s.resultsJSON)
}

// gradable reports whether the session's lab is there to be graded: from
// ready until its cleanup. A lab still coming up has nothing to judge.
func gradable(st session.State) bool {
	return st == session.StateReady || st == session.StateSubmitted || st == session.StateArchiving
}

// manualTask reports whether a person marks t: the grader scores neither
// checks nor a correct option for it.
func manualTask(t exam.Task) bool {
	return len(t.Checks) == 0 && !(t.Kind == exam.KindChoice && t.Correct != "")
}

// adminRegrade runs the exam's checks on the session's live lab again and
// stores the results as the newest; the earlier ones are kept. A session
// that has ended is regraded in a review lab instead (regradeInReview).
func (s *Server) adminRegrade(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, ex, err := s.adminSessionExam(c)
	if err != nil {
		return err
	}
	if !gradable(sess.Status) && sess.Status.Terminal() {
		// The live lab is gone: the checks run in a review lab restored
		// from the archive, in a worker.
		return s.regradeInReview(c, sess, ex)
	}
	if s.o.Runner == nil {
		return fail(fiber.StatusServiceUnavailable, "this API cannot reach the labs to grade them")
	}
	if !gradable(sess.Status) {
		return fail(fiber.StatusConflict, "the session is "+string(sess.Status)+" and has no lab to grade yet")
	}
	answers, err := s.o.Store.Answers(ctx, sess.ID)
	if err != nil {
		return err
	}
	res, err := s.grade(ctx, ex, sess.ID, grading.Options{Answers: store.AnswerTexts(answers), Trigger: grading.TriggerRegrade, LabID: sess.LabID})
	if err != nil {
		return err
	}
	if labGone(res) {
		return fail(fiber.StatusConflict, "the session's lab is gone; nothing was graded and the earlier results stand")
	}
	if err := s.o.Store.SaveResults(ctx, sess.ID, res); err != nil {
		return err
	}
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "admin", Action: "regrade",
		Detail: map[string]any{"score": res.Score, "max_score": res.MaxScore, "duration_ms": res.DurationMS}})
	return c.JSON(res)
}

// grade runs a grading on a live lab within its budget, and measures it.
func (s *Server) grade(ctx context.Context, ex *exam.Exam, id string, opts grading.Options) (*grading.Results, error) {
	gctx, cancel := context.WithTimeout(ctx, grading.Budget(ex, opts.Tasks...))
	defer cancel()
	opts.Now, opts.Observer = s.o.Now, s.o.Grading
	res, err := grading.Grade(gctx, s.o.Runner, ex, id, opts)
	if err == nil && s.o.Grading != nil {
		s.o.Grading.Graded(opts.Trigger, time.Duration(res.DurationMS)*time.Millisecond)
	}
	return res, err
}

// labGone reports whether no check of res could run because its node was
// gone: results that judge nothing but the lab's absence.
func labGone(res *grading.Results) bool {
	n := 0
	for _, t := range res.Tasks {
		for _, cr := range t.Checks {
			if cr.Error == "" || !strings.HasSuffix(cr.Error, " is gone") && !strings.HasSuffix(cr.Error, " is not running") {
				return false
			}
			n++
		}
	}
	return n > 0
}

// adminMark awards points to a task a person marks.
func (s *Server) adminMark(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, ex, err := s.adminSessionExam(c)
	if err != nil {
		return err
	}
	taskID := c.Params("task")
	t, ok := ex.Task(taskID)
	if !ok {
		return fail(fiber.StatusNotFound, "no task "+quote(taskID)+" in this exam")
	}
	if !manualTask(t) {
		return fail(fiber.StatusBadRequest, "task "+quote(taskID)+" is scored by its checks or its correct option, not by hand")
	}
	var req struct {
		Points *int   `json:"points"`
		Note   string `json:"note"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Points == nil {
		return fail(fiber.StatusBadRequest, `request body needs "points"`)
	}
	m, err := s.o.Store.SetMark(ctx, sess.ID, store.Mark{Task: taskID, Points: *req.Points, Note: req.Note, By: "admin"}, t.Points)
	if errors.Is(err, store.ErrInvalid) {
		return fail(fiber.StatusBadRequest, fmt.Sprintf("points must be between 0 and the task's %d", t.Points))
	}
	if err != nil {
		return err
	}
	row, err := s.resultRow(ctx, sess, ex)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"mark": m, "score": row.Score, "max_score": row.MaxScore})
}

func (s *Server) adminSessionExam(c *fiber.Ctx) (*session.Session, *exam.Exam, error) {
	sess, err := s.o.Store.Get(c.UserContext(), c.Params("id"))
	if err != nil {
		return nil, nil, err
	}
	ex, ok := s.o.Exams(sess.ExamID)
	if !ok {
		return nil, nil, fail(fiber.StatusConflict, "the session's exam is not loaded")
	}
	return sess, ex, nil
}

// ResultRow is one session's line of the results export.
type ResultRow struct {
	Email    string `json:"email"`
	Name     string `json:"name"`
	Session  string `json:"session"`
	Status   string `json:"status"`
	Score    int    `json:"score"`
	MaxScore int    `json:"max_score"`
	// Tasks are each task's points; a task not scored yet (a text answer
	// not marked, a lab not graded) is absent.
	Tasks    map[string]int `json:"tasks"`
	GradedAt string         `json:"graded_at"`
}

// resultRow scores one session: its latest results with the manual
// marks. A session never graded still scores its choice answers and its
// marks.
func (s *Server) resultRow(ctx context.Context, sess *session.Session, ex *exam.Exam) (ResultRow, error) {
	res, err := s.o.Store.LatestResults(ctx, sess.ID)
	if errors.Is(err, store.ErrNotFound) {
		res, err = s.scoreAnswers(ctx, sess, ex)
	}
	if err != nil {
		return ResultRow{}, err
	}
	marks, err := s.o.Store.Marks(ctx, sess.ID)
	if err != nil {
		return ResultRow{}, err
	}
	sc := store.Score(res, marks, ex.MaxScore())
	row := ResultRow{Email: sess.Email, Name: sess.Name, Session: sess.ID, Status: string(sess.Status),
		Score: sc.Score, MaxScore: sc.MaxScore, Tasks: sc.Tasks}
	if res != nil && res.Trigger != "" && !sc.GradedAt.IsZero() {
		row.GradedAt = sc.GradedAt.UTC().Format("2006-01-02T15:04:05Z")
	}
	return row, nil
}

// scoreAnswers scores the tasks that need no lab (choice answers, and the
// manual ones as such) of a session never graded; nil when there are none.
func (s *Server) scoreAnswers(ctx context.Context, sess *session.Session, ex *exam.Exam) (*grading.Results, error) {
	var tasks []string
	for _, t := range ex.Tasks {
		if len(t.Checks) == 0 {
			tasks = append(tasks, t.ID)
		}
	}
	if len(tasks) == 0 {
		return nil, nil
	}
	answers, err := s.o.Store.Answers(ctx, sess.ID)
	if err != nil {
		return nil, err
	}
	// No check runs, so no runner is needed; the empty trigger marks the
	// results as computed here, never graded.
	res, err := grading.Grade(ctx, nil, ex, sess.ID, grading.Options{Tasks: tasks, Answers: store.AnswerTexts(answers), Now: s.o.Now})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// resultRows scores every session, oldest first.
func (s *Server) resultRows(ctx context.Context) ([]ResultRow, []string, error) {
	var rows []ResultRow
	taskSet := map[string]bool{}
	var taskIDs []string
	addTasks := func(ex *exam.Exam) {
		for _, t := range ex.Tasks {
			if !taskSet[t.ID] {
				taskSet[t.ID] = true
				taskIDs = append(taskIDs, t.ID)
			}
		}
	}
	addTasks(s.o.Exam)
	for offset := 0; ; offset += 500 {
		page, err := s.o.Store.List(ctx, store.ListQuery{Sort: "created", Offset: offset, Limit: 500})
		if err != nil {
			return nil, nil, err
		}
		for _, sum := range page.Sessions {
			sess, err := s.o.Store.Get(ctx, sum.ID)
			if errors.Is(err, store.ErrNotFound) {
				continue // deleted meanwhile
			}
			if err != nil {
				return nil, nil, err
			}
			ex, ok := s.o.Exams(sess.ExamID)
			if !ok {
				continue
			}
			addTasks(ex)
			row, err := s.resultRow(ctx, sess, ex)
			if err != nil {
				return nil, nil, err
			}
			rows = append(rows, row)
		}
		if offset+len(page.Sessions) >= page.Total || len(page.Sessions) == 0 {
			break
		}
	}
	return rows, taskIDs, nil
}

func (s *Server) resultsJSON(c *fiber.Ctx) error {
	rows, tasks, err := s.resultRows(c.UserContext())
	if err != nil {
		return err
	}
	if rows == nil {
		rows = []ResultRow{}
	}
	return c.JSON(fiber.Map{"tasks": tasks, "sessions": rows})
}

func (s *Server) resultsCSV(c *fiber.Ctx) error {
	rows, tasks, err := s.resultRows(c.UserContext())
	if err != nil {
		return err
	}
	header := append([]string{"email", "name", "session", "status", "score", "max_score"}, tasks...)
	header = append(header, "graded_at")
	records := [][]string{header}
	for _, r := range rows {
		rec := []string{r.Email, r.Name, r.Session, r.Status, strconv.Itoa(r.Score), strconv.Itoa(r.MaxScore)}
		for _, t := range tasks {
			if p, ok := r.Tasks[t]; ok {
				rec = append(rec, strconv.Itoa(p))
			} else {
				rec = append(rec, "")
			}
		}
		records = append(records, append(rec, r.GradedAt))
	}
	b, err := encodeCSV(records)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
	c.Set(fiber.HeaderContentDisposition, `attachment; filename="results.csv"`)
	return c.Send(b)
}

// encodeCSV writes records as RFC 4180 CSV (quoted where a cell holds a
// comma, a quote or a line break) behind a UTF-8 byte order mark, every
// cell kept from running as a spreadsheet formula.
func encodeCSV(records [][]string) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("\ufeff")
	w := csv.NewWriter(&buf)
	for _, rec := range records {
		safe := make([]string, len(rec))
		for i, v := range rec {
			safe[i] = cell(v)
		}
		if err := w.Write(safe); err != nil {
			return nil, fmt.Errorf("write results export: %w", err)
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return nil, fmt.Errorf("write results export: %w", err)
	}
	return buf.Bytes(), nil
}

// GradingDetails is a session's grading as its page shows it.
type GradingDetails struct {
	Results *grading.Results      `json:"results"`
	History []*grading.Results    `json:"history"`
	Marks   map[string]store.Mark `json:"marks"`
	Score   *ResultRow            `json:"score"`
	// Manual lists the tasks a person marks, with their points.
	Manual []ManualTask `json:"manual"`
	// CheckRuns counts the candidate's "check my work" runs per task.
	CheckRuns map[string]int `json:"check_runs"`
	PassMark  int            `json:"pass_mark"`
	Gradable  bool           `json:"gradable"`
}

// ManualTask is a task a person marks.
type ManualTask struct {
	ID     string `json:"id"`
	Title  string `json:"title"`
	Kind   string `json:"kind"`
	Points int    `json:"points"`
}

func (s *Server) gradingDetails(ctx context.Context, sess *session.Session) (*GradingDetails, error) {
	ex, ok := s.o.Exams(sess.ExamID)
	if !ok {
		return nil, nil
	}
	d := &GradingDetails{PassMark: ex.Grading.PassMark, Gradable: gradable(sess.Status) && s.o.Runner != nil, Manual: []ManualTask{}}
	if sess.Status.Terminal() {
		// Regraded in a review lab restored from the archive, if any.
		_, err := s.o.Store.Manifest(ctx, sess.ID)
		d.Gradable = err == nil
	}
	history, err := s.o.Store.ResultsHistory(ctx, sess.ID)
	if err != nil {
		return nil, err
	}
	d.History = history
	if len(history) > 0 {
		d.Results = history[len(history)-1]
	}
	if d.Marks, err = s.o.Store.Marks(ctx, sess.ID); err != nil {
		return nil, err
	}
	row, err := s.resultRow(ctx, sess, ex)
	if err != nil {
		return nil, err
	}
	d.Score = &row
	for _, t := range ex.Tasks {
		if manualTask(t) {
			d.Manual = append(d.Manual, ManualTask{ID: t.ID, Title: t.Title, Kind: t.Kind, Points: t.Points})
		}
	}
	if d.CheckRuns, err = s.o.Store.CandidateChecksUsed(ctx, sess.ID); err != nil {
		return nil, err
	}
	return d, nil
}
