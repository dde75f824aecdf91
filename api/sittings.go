package api

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"mime"
	"regexp"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
)

// sittingRoutes adds the admin's sittings and rosters. Every change is
// recorded in the sitting's own audit trail with actor "admin" before it
// answers.
//
//	GET    /api/admin/sittings                            every sitting with its roster counts
//	POST   /api/admin/sittings                            create one
//	GET    /api/admin/sittings/:id                        one sitting, its roster (no code hashes) with each entry's session, its audit trail
//	PATCH  /api/admin/sittings/:id                        edit title, window, capacity, open registration
//	DELETE /api/admin/sittings/:id                        delete it (refused while any of its sessions has not ended)
//	POST   /api/admin/sittings/:id/roster?preview=1       the CSV body parsed and checked, nothing written
//	POST   /api/admin/sittings/:id/roster                 import the CSV body: every row or none
//	POST   /api/admin/sittings/:id/roster/export          the roster as CSV with fresh codes and links; every earlier code stops working
//	POST   /api/admin/sittings/:id/roster/:entry/reissue  a new code for one entry, shown this once
//	POST   /api/admin/sittings/:id/roster/:entry/reset    free the entry for a new session (refused while its session runs)
//	DELETE /api/admin/sittings/:id/roster/:entry          take the entry off the roster (refused while its session runs)
func (s *Server) sittingRoutes(adm fiber.Router) {
	adm.Get("/sittings", s.adminSittings)
	adm.Post("/sittings", s.createSitting)
	adm.Get("/sittings/:id", s.adminSitting)
	adm.Patch("/sittings/:id", s.editSitting)
	adm.Delete("/sittings/:id", s.deleteSitting)
	adm.Post("/sittings/:id/roster", s.importRoster)
	adm.Post("/sittings/:id/roster/export", s.exportRoster)
	adm.Post("/sittings/:id/roster/:entry/reissue", s.reissueCode)
	adm.Post("/sittings/:id/roster/:entry/reset", s.resetEntry)
	adm.Delete("/sittings/:id/roster/:entry", s.removeEntry)
	// The app reads at most BodyLimit of any body before routing; a roster
	// file may be ten times that, so its route alone reads more.
	s.app.Server().HeaderReceived = s.rosterUploadConfig
}

// A roster upload may be read up to rosterBodyLimit, beyond
// sitting.MaxRosterBytes, so that a file somewhat over the limit is read
// whole and refused with the reason rather than cut off mid-upload; and it
// may take rosterReadTimeout on a slow link.
const (
	rosterBodyLimit   = sitting.MaxRosterBytes + 6<<20
	rosterReadTimeout = 5 * time.Minute
)

var rosterUploadPath = regexp.MustCompile(`^/api/admin/sittings/[^/]+/roster/?$`)

// rosterUploadConfig raises the body limit and read timeout for a roster
// upload by an admin. It runs when a request's header has arrived, before
// any body is read or any route is matched, so it checks the admin
// credentials itself: anyone else keeps the app's limit.
func (s *Server) rosterUploadConfig(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if string(h.Method()) != fiber.MethodPost {
		return fasthttp.RequestConfig{}
	}
	path, _, _ := strings.Cut(string(h.RequestURI()), "?")
	if !rosterUploadPath.MatchString(strings.ToLower(path)) {
		return fasthttp.RequestConfig{}
	}
	if !s.o.Auth.AnyAdmin(auth.Bearer(string(h.Peek(fiber.HeaderAuthorization))), string(h.Cookie(auth.AdminCookie))) {
		return fasthttp.RequestConfig{}
	}
	return fasthttp.RequestConfig{MaxRequestBodySize: rosterBodyLimit, ReadTimeout: rosterReadTimeout}
}

// sittingView is a sitting as the admin sees it: its fields, where its
// window stands now, and its roster's counts.
type sittingView struct {
	*sitting.Sitting
	// State is upcoming, open or closed.
	State string `json:"state"`
	// Roster counts the entries; SignedIn those with a session; Running
	// those whose lab is being brought up or is up; Ended those whose
	// session has ended (an admin may reset them).
	Roster   int `json:"roster"`
	SignedIn int `json:"signed_in"`
	Running  int `json:"running"`
	Ended    int `json:"ended"`
}

// entryView is a roster entry without its code hash, with its session.
type entryView struct {
	ID             string        `json:"id"`
	Email          string        `json:"email"`
	Name           string        `json:"name"`
	ExternalID     string        `json:"external_id,omitempty"`
	CodeIssuedAt   time.Time     `json:"code_issued_at"`
	AddedAt        time.Time     `json:"added_at"`
	Line           int           `json:"line,omitempty"`
	SelfRegistered bool          `json:"self_registered,omitempty"`
	SessionID      string        `json:"session_id,omitempty"`
	SessionStatus  session.State `json:"session_status,omitempty"`
}

func viewEntry(e *sitting.Entry, statuses map[string]session.State) entryView {
	return entryView{
		ID: e.ID, Email: e.Email, Name: e.Name, ExternalID: e.ExternalID, CodeIssuedAt: e.CodeIssuedAt,
		AddedAt: e.AddedAt, Line: e.Line, SelfRegistered: e.SelfRegistered,
		SessionID: e.SessionID, SessionStatus: statuses[e.SessionID],
	}
}

func (s *Server) viewSitting(st *sitting.Sitting, roster []sitting.Entry, statuses map[string]session.State) sittingView {
	v := sittingView{Sitting: st, State: "open", Roster: len(roster)}
	switch err := st.Admits(s.o.Now()); {
	case errors.Is(err, sitting.ErrNotOpen):
		v.State = "upcoming"
	case err != nil:
		v.State = "closed"
	}
	for _, e := range roster {
		if e.SessionID == "" {
			continue
		}
		v.SignedIn++
		switch st := statuses[e.SessionID]; {
		case st.LiveLab():
			v.Running++
		case st.Terminal():
			v.Ended++
		}
	}
	return v
}

// sessionStatuses are the states of the sessions of these rosters.
func (s *Server) sessionStatuses(ctx context.Context, rosters ...[]sitting.Entry) (map[string]session.State, error) {
	var ids []string
	for _, r := range rosters {
		for _, e := range r {
			if e.SessionID != "" {
				ids = append(ids, e.SessionID)
			}
		}
	}
	return s.o.Store.SessionStatuses(ctx, ids)
}

func (s *Server) adminSittings(c *fiber.Ctx) error {
	ctx := c.UserContext()
	all, err := s.o.Store.Sittings(ctx)
	if err != nil {
		return err
	}
	rosters := make([][]sitting.Entry, len(all))
	for i, st := range all {
		if rosters[i], err = s.o.Store.Roster(ctx, st.ID); err != nil {
			return err
		}
	}
	statuses, err := s.sessionStatuses(ctx, rosters...)
	if err != nil {
		return err
	}
	out := make([]sittingView, len(all))
	for i, st := range all {
		out[i] = s.viewSitting(st, rosters[i], statuses)
	}
	return c.JSON(fiber.Map{"sittings": out, "exams": s.examIDs(), "default_exam": s.o.Exam.ID})
}

// examIDs are the exams a new sitting may hold.
func (s *Server) examIDs() []string { return []string{s.o.Exam.ID} }

func (s *Server) adminSitting(c *fiber.Ctx) error {
	ctx := c.UserContext()
	st, err := s.o.Store.GetSitting(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	roster, err := s.o.Store.Roster(ctx, st.ID)
	if err != nil {
		return err
	}
	statuses, err := s.sessionStatuses(ctx, roster)
	if err != nil {
		return err
	}
	entries := make([]entryView, len(roster))
	for i := range roster {
		entries[i] = viewEntry(&roster[i], statuses)
	}
	audit, err := s.o.Store.SittingAudit(ctx, st.ID)
	if err != nil {
		return err
	}
	warm, err := s.warmView(ctx, st)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"sitting": s.viewSitting(st, roster, statuses), "entries": entries, "audit": audit, "warm": warm})
}

// warmPoolView is a sitting's warm pool as admins see it.
type warmPoolView struct {
	Size          int             `json:"size"`
	Ready         int             `json:"ready"`
	Making        int             `json:"making"`
	LeadSeconds   int64           `json:"lead_seconds"`
	MaxAgeSeconds int64           `json:"max_age_seconds"`
	CheckSeconds  int64           `json:"check_seconds"`
	Filling       bool            `json:"filling"`
	Labs          []store.WarmLab `json:"labs"`
}

func (s *Server) warmView(ctx context.Context, st *sitting.Sitting) (warmPoolView, error) {
	v := warmPoolView{Size: st.Warm, LeadSeconds: int64(st.WarmLead() / time.Second), MaxAgeSeconds: int64(st.WarmMaxAge() / time.Second),
		CheckSeconds: int64(st.WarmCheck() / time.Second), Filling: st.WarmFilling(s.o.Now()), Labs: []store.WarmLab{}}
	labs, err := s.o.Store.WarmPool(ctx, st.ID)
	if err != nil {
		return v, err
	}
	for _, w := range labs {
		switch w.State {
		case store.WarmReady:
			v.Ready++
		case store.WarmMaking:
			v.Making++
		}
		w.Nodes = nil
		v.Labs = append(v.Labs, *w)
	}
	return v, nil
}

// sittingRequest is the body of a create or an edit; on an edit, fields
// left out keep their value. Times are RFC 3339.
type sittingRequest struct {
	ID               *string `json:"id"`
	ExamID           *string `json:"exam_id"`
	Title            *string `json:"title"`
	Opens            *string `json:"opens"`
	Closes           *string `json:"closes"`
	Capacity         *int    `json:"capacity"`
	OpenRegistration *bool   `json:"open_registration"`
	// Warm is the warm pool's size; WarmLead, WarmMaxAge and WarmCheck
	// are Go durations ("30m", "4h"), "0" or "" for the defaults.
	Warm       *int    `json:"warm"`
	WarmLead   *string `json:"warm_lead"`
	WarmMaxAge *string `json:"warm_max_age"`
	WarmCheck  *string `json:"warm_check"`
}

// parseSeconds reads a duration field ("30m", "4h"; "" or "0": the
// default) in whole seconds.
func parseSeconds(field, v string) (int64, error) {
	v = strings.TrimSpace(v)
	if v == "" || v == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fail(fiber.StatusBadRequest, field+": "+quote(v)+" is not a duration like 30m or 4h")
	}
	return int64(d / time.Second), nil
}

func parseTime(field, v string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(v))
	if err != nil {
		return time.Time{}, fail(fiber.StatusBadRequest, field+": "+quote(v)+" is not a time like 2026-03-01T09:00:00Z (RFC 3339)")
	}
	return t.UTC(), nil
}

// apply sets the editable fields the request names and reports what
// changed, before and after, for the audit trail.
func (r *sittingRequest) apply(st *sitting.Sitting) (map[string]any, error) {
	changed := map[string]any{}
	set := func(field string, before, after any) {
		if before != after {
			changed[field] = []any{before, after}
		}
	}
	if r.Title != nil {
		t := strings.TrimSpace(*r.Title)
		if strings.ContainsFunc(t, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fail(fiber.StatusBadRequest, "title: contains control characters")
		}
		set("title", st.Title, t)
		st.Title = t
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *time.Time
	}{{"opens", r.Opens, &st.Opens}, {"closes", r.Closes, &st.Closes}} {
		if f.v == nil {
			continue
		}
		t, err := parseTime(f.name, *f.v)
		if err != nil {
			return nil, err
		}
		if !t.Equal(*f.dst) {
			changed[f.name] = []any{*f.dst, t}
		}
		*f.dst = t
	}
	if r.Capacity != nil {
		set("capacity", st.Capacity, *r.Capacity)
		st.Capacity = *r.Capacity
	}
	if r.OpenRegistration != nil {
		set("open_registration", st.OpenRegistration, *r.OpenRegistration)
		st.OpenRegistration = *r.OpenRegistration
	}
	if r.Warm != nil {
		set("warm", st.Warm, *r.Warm)
		st.Warm = *r.Warm
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *int64
	}{{"warm_lead", r.WarmLead, &st.WarmLeadSeconds}, {"warm_max_age", r.WarmMaxAge, &st.WarmMaxAgeSeconds},
		{"warm_check", r.WarmCheck, &st.WarmCheckSeconds}} {
		if f.v == nil {
			continue
		}
		secs, err := parseSeconds(f.name, *f.v)
		if err != nil {
			return nil, err
		}
		set(f.name, *f.dst, secs)
		*f.dst = secs
	}
	return changed, nil
}

func (s *Server) createSitting(c *fiber.Ctx) error {
	ctx := c.UserContext()
	var req sittingRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	st := &sitting.Sitting{ExamID: s.o.Exam.ID}
	if req.ID != nil {
		st.ID = strings.TrimSpace(*req.ID)
	}
	if req.ExamID != nil {
		if _, ok := s.o.Exams(*req.ExamID); !ok {
			return fail(fiber.StatusBadRequest, "exam_id: "+quote(*req.ExamID)+" is not a loaded exam; this deployment holds "+quote(s.o.Exam.ID))
		}
		st.ExamID = *req.ExamID
	}
	if req.Opens == nil || req.Closes == nil {
		return fail(fiber.StatusBadRequest, "opens and closes are required (RFC 3339 times)")
	}
	if _, err := req.apply(st); err != nil {
		return err
	}
	if err := st.Validate(); err != nil {
		return err
	}
	if !st.Closes.After(s.o.Now()) {
		return fail(fiber.StatusBadRequest, "closes: "+st.Closes.Format(time.RFC3339)+" has passed; a new sitting's window must end in the future")
	}
	if err := s.o.Store.CreateSitting(ctx, st); err != nil {
		return err
	}
	if err := s.auditSitting(ctx, st.ID, "sitting-create", map[string]any{
		"exam_id": st.ExamID, "title": st.Title, "opens": st.Opens, "closes": st.Closes,
		"capacity": st.Capacity, "open_registration": st.OpenRegistration, "warm": st.Warm,
	}); err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(fiber.Map{"sitting": s.viewSitting(st, nil, nil)})
}

// editSitting changes what the request names. The id and exam stay: the
// codes handed out and the sessions begun are bound to them.
func (s *Server) editSitting(c *fiber.Ctx) error {
	ctx := c.UserContext()
	var req sittingRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	switch {
	case req.ID != nil:
		return fail(fiber.StatusBadRequest, "id: a sitting's id cannot change")
	case req.ExamID != nil:
		return fail(fiber.StatusBadRequest, "exam_id: a sitting's exam cannot change; create a new sitting")
	case req == sittingRequest{}:
		return fail(fiber.StatusBadRequest, "nothing to change: send title, opens, closes, capacity, open_registration, warm, warm_lead, warm_max_age or warm_check")
	}
	var changed map[string]any
	st, err := s.o.Store.UpdateSitting(ctx, c.Params("id"), func(st *sitting.Sitting) error {
		var err error
		changed, err = req.apply(st)
		return err
	})
	if err != nil {
		return err
	}
	if len(changed) > 0 {
		if err := s.auditSitting(ctx, st.ID, "sitting-edit", changed); err != nil {
			return err
		}
	}
	roster, err := s.o.Store.Roster(ctx, st.ID)
	if err != nil {
		return err
	}
	statuses, err := s.sessionStatuses(ctx, roster)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"sitting": s.viewSitting(st, roster, statuses), "changed": changed})
}

func (s *Server) deleteSitting(c *fiber.Ctx) error {
	ctx := c.UserContext()
	id := c.Params("id")
	roster, err := s.o.Store.Roster(ctx, id)
	if err != nil {
		return err
	}
	err = s.o.Store.DeleteSitting(ctx, id, store.AuditEntry{Actor: "admin", Action: "sitting-delete", Detail: map[string]any{"roster": len(roster)}})
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"deleted": id, "roster": len(roster)})
}

func (s *Server) auditSitting(ctx context.Context, id, action string, detail map[string]any) error {
	return s.o.Store.AuditSitting(ctx, id, store.AuditEntry{Actor: "admin", Action: action, Detail: detail})
}

// importRoster reads a CSV roster from the body (email,name and optionally
// external_id). With ?preview=1 it answers the rows and every row's
// problem and writes nothing. Otherwise a file with any bad row is refused
// whole (422, with every row's problem), and a good one is added in one
// step; the codes are not shown here but by an export.
func (s *Server) importRoster(c *fiber.Ctx) error {
	ctx := c.UserContext()
	preview, err := flagQuery(c, "preview")
	if err != nil {
		return err
	}
	if mt, _, _ := mime.ParseMediaType(c.Get(fiber.HeaderContentType)); strings.HasPrefix(mt, "multipart/") || mt == fiber.MIMEApplicationForm {
		return fail(fiber.StatusUnsupportedMediaType, "send the CSV file itself as the request body (Content-Type: text/csv), not a form")
	}
	st, err := s.o.Store.GetSitting(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	taken, err := s.o.Store.RosterEmails(ctx, st.ID)
	if err != nil {
		return err
	}
	roster, err := sitting.ParseRoster(c.Body(), taken)
	if err != nil {
		return err
	}
	if preview {
		return c.JSON(fiber.Map{"preview": true, "rows": roster.Rows, "errors": roster.Errors,
			"count": len(roster.Rows), "error_count": len(roster.Errors), "roster": len(taken)})
	}
	if n := len(roster.Errors); n > 0 {
		msg := fmt.Sprintf("%d rows have problems; nothing was imported", n)
		if n == 1 {
			msg = "1 row has a problem; nothing was imported"
		}
		return c.Status(fiber.StatusUnprocessableEntity).JSON(fiber.Map{"error": msg, "errors": roster.Errors, "count": len(roster.Rows), "error_count": n})
	}
	if len(roster.Rows) == 0 {
		return fail(fiber.StatusBadRequest, "the file has no candidates: after the header line email,name come one line per candidate")
	}
	issued, err := s.o.Store.AddEntries(ctx, st.ID, roster.Rows, false)
	if err != nil {
		return err
	}
	if err := s.auditSitting(ctx, st.ID, "roster-import", map[string]any{"count": len(issued), "bytes": len(c.Body())}); err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(fiber.Map{"imported": len(issued), "roster": len(taken) + len(issued)})
}

// flagQuery reads a yes/no query parameter strictly: a misspelt value must
// not turn a preview into an import, and ?preview alone means yes.
func flagQuery(c *fiber.Ctx, name string) (bool, error) {
	if !c.Context().QueryArgs().Has(name) {
		return false, nil
	}
	switch strings.ToLower(c.Query(name)) {
	case "", "1", "true", "yes":
		return true, nil
	case "0", "false", "no":
		return false, nil
	}
	return false, fail(fiber.StatusBadRequest, name+" must be 1 or 0")
}

// exportRoster gives every entry a new code and answers the roster as CSV
// with the codes and invitation links: the one moment they exist in clear.
// Every code issued before stops working; candidates already signed in
// keep their sessions.
func (s *Server) exportRoster(c *fiber.Ctx) error {
	ctx := c.UserContext()
	st, err := s.o.Store.GetSitting(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	issued, err := s.o.Store.ReissueAll(ctx, st.ID)
	if err != nil {
		return err
	}
	if err := s.auditSitting(ctx, st.ID, "roster-export", map[string]any{"count": len(issued)}); err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString("\ufeff") // spreadsheets read the file as UTF-8 with it
	w := csv.NewWriter(&buf)
	w.Write([]string{"email", "name", "external_id", "code", "link"})
	for _, ic := range issued {
		e := ic.Entry
		w.Write([]string{cell(e.Email), cell(e.Name), cell(e.ExternalID), ic.Code, s.joinLink(c, ic.Code)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return fmt.Errorf("write roster export: %w", err)
	}
	c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
	c.Set(fiber.HeaderContentDisposition, mime.FormatMediaType("attachment", map[string]string{"filename": st.ID + "-codes.csv"}))
	return c.Send(buf.Bytes())
}

// cell keeps a value a spreadsheet would run as a formula (a name chosen
// at open registration, say) as text.
func cell(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}

// joinLink is the invitation link for a code. The code rides in the
// fragment, which browsers never send to a server or write to its logs.
func (s *Server) joinLink(c *fiber.Ctx, code string) string {
	base := s.o.PublicURL
	if base == "" {
		base = c.BaseURL()
	}
	return strings.TrimRight(base, "/") + "/join#code=" + code
}

var entryIDPattern = regexp.MustCompile(`^[a-z0-9]{1,40}$`)

// rosterEntry reads the entry the route names.
func (s *Server) rosterEntry(c *fiber.Ctx) (*sitting.Entry, error) {
	id := c.Params("entry")
	if !entryIDPattern.MatchString(id) {
		return nil, fail(fiber.StatusBadRequest, "bad roster entry id "+quote(id))
	}
	if _, err := s.o.Store.GetSitting(c.UserContext(), c.Params("id")); err != nil {
		return nil, err
	}
	return s.o.Store.Entry(c.UserContext(), c.Params("id"), id)
}

// reissueCode gives one entry a new code, shown this once; the old code
// stops working at once.
func (s *Server) reissueCode(c *fiber.Ctx) error {
	ctx := c.UserContext()
	e, err := s.rosterEntry(c)
	if err != nil {
		return err
	}
	ic, err := s.o.Store.ReissueCode(ctx, c.Params("id"), e.ID)
	if err != nil {
		return err
	}
	if err := s.auditSitting(ctx, c.Params("id"), "code-reissue", map[string]any{"entry": e.ID, "email": e.Email}); err != nil {
		return err
	}
	statuses, err := s.sessionStatuses(ctx, []sitting.Entry{ic.Entry})
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"entry": viewEntry(&ic.Entry, statuses), "code": ic.Code, "link": s.joinLink(c, ic.Code)})
}

// resetEntry frees an entry whose session has ended for a new one: the
// candidate's next sign-in starts afresh. The ended session keeps its
// record.
func (s *Server) resetEntry(c *fiber.Ctx) error {
	ctx := c.UserContext()
	e, err := s.rosterEntry(c)
	if err != nil {
		return err
	}
	if e.SessionID == "" {
		return fail(fiber.StatusConflict, e.Email+" has no session to reset")
	}
	after, err := s.o.Store.ResetEntry(ctx, c.Params("id"), e.ID)
	if err != nil {
		return s.liveRefusal(ctx, e, err)
	}
	if err := s.auditSitting(ctx, c.Params("id"), "entry-reset", map[string]any{"entry": e.ID, "email": e.Email, "session": e.SessionID}); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"entry": viewEntry(after, nil), "previous_session": e.SessionID})
}

// removeEntry takes an entry off the roster; its code stops working. The
// entry's session, if it had one, keeps its record.
func (s *Server) removeEntry(c *fiber.Ctx) error {
	ctx := c.UserContext()
	e, err := s.rosterEntry(c)
	if err != nil {
		return err
	}
	if err := s.o.Store.RemoveEntry(ctx, c.Params("id"), e.ID); err != nil {
		return s.liveRefusal(ctx, e, err)
	}
	detail := map[string]any{"entry": e.ID, "email": e.Email}
	if e.SessionID != "" {
		detail["session"] = e.SessionID
	}
	if err := s.auditSitting(ctx, c.Params("id"), "entry-remove", detail); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"removed": e.ID, "email": e.Email})
}

// liveRefusal names the session that stands in the way of a reset or a
// removal.
func (s *Server) liveRefusal(ctx context.Context, e *sitting.Entry, err error) error {
	if !errors.Is(err, store.ErrLiveSession) {
		return err
	}
	statuses, serr := s.o.Store.SessionStatuses(ctx, []string{e.SessionID})
	if serr != nil || statuses[e.SessionID] == "" {
		return err
	}
	return fmt.Errorf("session %s of %s is %s: %w", e.SessionID, e.Email, statuses[e.SessionID], err)
}
