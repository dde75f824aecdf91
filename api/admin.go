package api

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

func (s *Server) adminLogin(c *fiber.Ctx) error {
	var req struct {
		Token string `json:"token"`
	}
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if err := s.signin.Attempt(c, adminAccount); err != nil {
		return err
	}
	if req.Token == "" || !s.o.Auth.IsAdmin(req.Token) {
		s.signin.Failed(c, adminAccount)
		return fail(fiber.StatusUnauthorized, "wrong admin token")
	}
	s.setCookie(c, auth.AdminCookie, req.Token, 12*time.Hour)
	return c.JSON(fiber.Map{"ok": true})
}

func (s *Server) adminLogout(c *fiber.Ctx) error {
	s.clearCookie(c, auth.AdminCookie)
	return c.SendStatus(fiber.StatusNoContent)
}

// adminSessions lists sessions: ?status=a,b&q=search&sort=created&order=desc&page=1&per_page=50.
func (s *Server) adminSessions(c *fiber.Ctx) error {
	q := store.ListQuery{Search: c.Query("q", c.Query("search")), Sort: c.Query("sort", "created")}
	switch strings.ToLower(c.Query("order", "desc")) {
	case "desc":
		q.Desc = true
	case "asc":
	default:
		return fail(fiber.StatusBadRequest, "order must be asc or desc")
	}
	for _, st := range strings.Split(c.Query("status"), ",") {
		if st = strings.TrimSpace(st); st != "" {
			if !session.State(st).Valid() {
				return fail(fiber.StatusBadRequest, "unknown status "+quote(st))
			}
			q.Status = append(q.Status, session.State(st))
		}
	}
	page, err := intQuery(c, "page", 1, 1, 1_000_000)
	if err != nil {
		return err
	}
	per, err := intQuery(c, "per_page", 50, 1, 500)
	if err != nil {
		return err
	}
	q.Offset, q.Limit = (page-1)*per, per
	if err := s.scoreFilters(c, &q); err != nil {
		return err
	}
	res, err := s.o.Store.List(c.UserContext(), q)
	if err != nil {
		return err
	}
	listed, err := s.withEvidence(c, res.Sessions)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"total": res.Total, "page": page, "per_page": per, "sort": q.Sort,
		"order": map[bool]string{true: "desc", false: "asc"}[q.Desc], "sessions": listed})
}

// scoreFilters reads ?score_min=&score_max= (a range of scores) and
// ?passed=yes|no (against each exam's pass mark, or ?pass_mark=N).
func (s *Server) scoreFilters(c *fiber.Ctx, q *store.ListQuery) error {
	for _, f := range []struct {
		name string
		dst  **int
	}{{"score_min", &q.MinScore}, {"score_max", &q.MaxScore}} {
		if c.Query(f.name) == "" {
			continue
		}
		n, err := intQuery(c, f.name, 0, 0, 1_000_000)
		if err != nil {
			return err
		}
		*f.dst = &n
	}
	if q.MinScore != nil && q.MaxScore != nil && *q.MinScore > *q.MaxScore {
		return fail(fiber.StatusBadRequest, "score_min must not be above score_max")
	}
	passMark := -1
	if c.Query("pass_mark") != "" {
		n, err := intQuery(c, "pass_mark", 0, 0, 1_000_000)
		if err != nil {
			return err
		}
		passMark = n
	}
	switch strings.ToLower(c.Query("passed")) {
	case "":
		if passMark >= 0 {
			return fail(fiber.StatusBadRequest, "pass_mark needs passed=yes or passed=no")
		}
		return nil
	case "yes", "true":
		q.Passed = new(bool)
		*q.Passed = true
	case "no", "false":
		q.Passed = new(bool)
	default:
		return fail(fiber.StatusBadRequest, "passed must be yes or no")
	}
	q.PassMark = func(examID string) int {
		if passMark >= 0 {
			return passMark
		}
		if ex, ok := s.o.Exams(examID); ok {
			return ex.Grading.PassMark
		}
		return 0
	}
	return nil
}

func intQuery(c *fiber.Ctx, name string, def, lo, hi int) (int, error) {
	v := c.Query(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fail(fiber.StatusBadRequest, name+" must be a number from "+strconv.Itoa(lo)+" to "+strconv.Itoa(hi))
	}
	return n, nil
}

// adminDetails is everything about one session: metadata, answers with
// timestamps, terminal logs, node states, snapshot files, audit log, and
// what of its ended lab the runtime still keeps (leftovers).
func (s *Server) adminDetails(c *fiber.Ctx) error {
	ctx := c.UserContext()
	id := c.Params("id")
	sess, err := s.o.Store.Get(ctx, id)
	if err != nil {
		return err
	}
	answers, err := s.o.Store.Answers(ctx, id)
	if err != nil {
		return err
	}
	histories, err := s.o.Store.Histories(ctx, id)
	if err != nil {
		return err
	}
	termFiles, err := s.o.Store.Files(ctx, id, store.TerminalDir)
	if err != nil {
		return err
	}
	snaps, err := s.o.Store.Files(ctx, id, store.SnapshotDir)
	if err != nil {
		return err
	}
	var manifest *store.Manifest
	if m, err := s.o.Store.Manifest(ctx, id); err == nil {
		manifest = m
		sums := map[string]string{}
		for _, f := range m.Files {
			sums[f.Name] = f.SHA256
		}
		for i := range snaps {
			snaps[i].SHA256 = sums[snaps[i].Name]
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	audit, err := s.o.Store.AuditLog(ctx, id)
	if err != nil {
		return err
	}
	grades, err := s.gradingDetails(ctx, sess)
	if err != nil {
		return err
	}
	ev, err := s.o.Store.Evidence(ctx, id, false)
	if err != nil {
		return err
	}
	leftovers, err := s.o.Store.SessionLeftovers(ctx, id)
	if err != nil {
		return err
	}
	v := s.view(sess)
	v.Error = sess.Error // the exam staff read the runtime's own words
	if sess.Nodes != nil {
		v.Nodes = sess.Nodes // in full, not as a paused candidate sees them
	}
	if p := s.progressNodes(ctx, sess); p != nil {
		v.Nodes = p
	}
	return c.JSON(fiber.Map{
		"session":        v,
		"metadata":       sess,
		"answers":        answers,
		"terminal_logs":  histories,
		"terminal_files": termFiles,
		"nodes":          v.Nodes,
		"snapshots":      snaps,
		"manifest":       manifest,
		"audit":          audit,
		"grading":        grades,
		"evidence":       ev,
		"leftovers":      leftovers,
		"lab":            labView(sess),
	})
}

// adminLeftovers lists every part of an ended lab the runtime still keeps
// (store.Leftover), oldest first: the reaper retries each, and none of
// their subnets goes to a new lab meanwhile.
func (s *Server) adminLeftovers(c *fiber.Ctx) error {
	all, err := s.o.Store.Leftovers(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"leftovers": all, "count": len(all)})
}

func nonce() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// adminSnapshot archives a live lab now; the lab stays up.
func (s *Server) adminSnapshot(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.Store.Get(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	if !sess.Status.HasLab() {
		return fail(fiber.StatusConflict, "session is "+string(sess.Status)+" and has no lab to snapshot")
	}
	n := nonce()
	if _, err := s.o.Enqueuer.Snapshot(ctx, sess.ID, n); err != nil {
		return err
	}
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "admin", Action: "snapshot", Detail: map[string]any{"nonce": n}})
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": true, "nonce": n})
}

// adminCleanup removes a session's lab. A session the candidate is still
// working in is submitted and archived first, so nothing of theirs is lost.
func (s *Server) adminCleanup(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.Store.Get(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	action := "cleanup"
	switch {
	case sess.Status.Open() || sess.Status == session.StateSubmitted || sess.Status == session.StateArchiving:
		if sess, err = s.submitSession(ctx, sess.ID, session.ByAdmin); err != nil {
			return err
		}
		action = "cleanup-after-archive"
	default:
		if _, err := s.o.Enqueuer.Cleanup(ctx, sess.ID, "admin"); err != nil {
			return err
		}
	}
	_ = s.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "admin", Action: action})
	return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"queued": true, "action": action, "status": sess.Status})
}

// labView says which lab a session runs in, for the exam staff: a lab
// claimed from a warm pool keeps the warm lab's names (Docker cannot
// rename a container or a network, nor Nomad a job), so its containers
// are exam-{lab_id[:8]}-{node}, not named after the session.
func labView(sess *session.Session) fiber.Map {
	id := sess.Lab()
	return fiber.Map{
		"lab_id":         id,
		"from_warm_pool": sess.FromWarmPool(),
		"containers":     lab.ContainerName(id, "*"),
		"network":        lab.NetworkName(id),
	}
}
