// Package sitting is how candidates are let in: an exam is held in
// sittings (an exam, a window, a capacity and a roster), each roster entry
// carries a secret access code, and only a code — or, where a sitting
// explicitly allows it, an email alone — signs someone in. The rules live
// here; store persists sittings and rosters, api serves them.
package sitting

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Errors of the front door; api/ maps them to status codes.
var (
	// ErrInvalid: a sitting or roster row breaks a rule; the message
	// names the field.
	ErrInvalid = errors.New("invalid")
	// ErrNotOpen: the sitting's window has not opened yet.
	ErrNotOpen = errors.New("the sitting has not opened yet")
	// ErrClosed: the sitting's window has closed.
	ErrClosed = errors.New("the sitting is closed")
	// ErrBadCode: a code of the wrong shape (length or alphabet).
	ErrBadCode = errors.New("an access code is 16 letters and digits, like 7KQ2-M9XD-4HTV-P0RC")
	// ErrUnknownCode: a well-formed code that admits no one.
	ErrUnknownCode = errors.New("that access code is not valid")
)

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,39}$`)

// ValidID reports whether id can name a sitting: 2 to 40 of [a-z0-9-],
// not starting with a dash.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// Sitting is one holding of an exam: sittings/{id}/sitting.json.
type Sitting struct {
	ID     string `json:"id"`
	ExamID string `json:"exam_id"`
	Title  string `json:"title,omitempty"`
	// Opens and Closes bound when its candidates may sign in and start.
	Opens  time.Time `json:"opens"`
	Closes time.Time `json:"closes"`
	// Capacity is how many of its labs may run at once; 0 means no limit
	// of its own (the deployment's EXAMLAB_MAX_LABS still applies).
	Capacity int `json:"capacity"`
	// OpenRegistration lets anyone sign in with an email alone and be
	// added to the roster (demos, practice). Off unless set.
	OpenRegistration bool `json:"open_registration"`
	// Warm is how many labs of the exam are kept provisioned ahead of
	// the starts (the warm pool); 0: none, every start makes its lab.
	// Warm labs hold lab slots: at most Capacity when that is set, and
	// the pool fills only as far as the deployment's free labs allow.
	Warm int `json:"warm,omitempty"`
	// WarmLeadSeconds is how long before Opens the pool starts to fill;
	// 0 means DefaultWarmLead.
	WarmLeadSeconds int64 `json:"warm_lead_seconds,omitempty"`
	// WarmMaxAgeSeconds is how long a warm lab may wait unclaimed before
	// it is replaced by a fresh one; 0 means DefaultWarmMaxAge.
	WarmMaxAgeSeconds int64 `json:"warm_max_age_seconds,omitempty"`
	// WarmCheckSeconds is how often each ready warm lab's nodes are asked
	// whether they still run; 0 means DefaultWarmCheck.
	WarmCheckSeconds int64     `json:"warm_check_seconds,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
	Version          int64     `json:"version"`
}

// Limits on a sitting's fields.
const (
	MaxTitle    = 200
	MaxCapacity = 10000
	MaxWindow   = 366 * 24 * time.Hour
	// MaxWarm bounds a warm pool: labs made for no one yet.
	MaxWarm = 500
	// MaxWarmLead bounds how early a pool may fill; MinWarmMaxAge and
	// MaxWarmMaxAge how long its labs may wait.
	MaxWarmLead   = 7 * 24 * time.Hour
	MinWarmMaxAge = 5 * time.Minute
	MaxWarmMaxAge = 7 * 24 * time.Hour
	// MinWarmCheck is the refill's period: a shorter interval would
	// check no more often. MaxWarmCheck bounds how long a broken lab may
	// wait in the pool unnoticed.
	MinWarmCheck = 5 * time.Second
	MaxWarmCheck = 10 * time.Minute
)

// Warm pool defaults.
const (
	DefaultWarmLead   = 30 * time.Minute
	DefaultWarmMaxAge = 4 * time.Hour
	// DefaultWarmCheck: a lab that breaks while it waits is replaced
	// within about half a minute (this, plus the refill's 5 s period),
	// while a pool of a hundred labs costs the runtime five Status calls
	// a second, not twenty.
	DefaultWarmCheck = 20 * time.Second
)

// WarmLead is how long before the window the pool starts to fill.
func (s *Sitting) WarmLead() time.Duration {
	if s.WarmLeadSeconds <= 0 {
		return DefaultWarmLead
	}
	return time.Duration(s.WarmLeadSeconds) * time.Second
}

// WarmMaxAge is how long a warm lab may wait before it is replaced.
func (s *Sitting) WarmMaxAge() time.Duration {
	if s.WarmMaxAgeSeconds <= 0 {
		return DefaultWarmMaxAge
	}
	return time.Duration(s.WarmMaxAgeSeconds) * time.Second
}

// WarmCheck is how often a ready warm lab's health is checked.
func (s *Sitting) WarmCheck() time.Duration {
	if s.WarmCheckSeconds <= 0 {
		return DefaultWarmCheck
	}
	return time.Duration(s.WarmCheckSeconds) * time.Second
}

// WarmFilling reports whether the warm pool is to hold labs at now: from
// WarmLead before the window opens until it closes.
func (s *Sitting) WarmFilling(now time.Time) bool {
	return s.Warm > 0 && !now.Before(s.Opens.Add(-s.WarmLead())) && now.Before(s.Closes)
}

// Validate checks every field and names the first that is wrong.
func (s *Sitting) Validate() error {
	switch {
	case !ValidID(s.ID):
		return fmt.Errorf("%w: id %q: 2 to 40 lower-case letters, digits and dashes", ErrInvalid, s.ID)
	case s.ExamID == "":
		return fmt.Errorf("%w: exam_id is required", ErrInvalid)
	case len(s.Title) > MaxTitle:
		return fmt.Errorf("%w: title is longer than %d characters", ErrInvalid, MaxTitle)
	case s.Opens.IsZero() || s.Closes.IsZero():
		return fmt.Errorf("%w: opens and closes are required", ErrInvalid)
	case !s.Closes.After(s.Opens):
		return fmt.Errorf("%w: closes must be after opens", ErrInvalid)
	case s.Closes.Sub(s.Opens) > MaxWindow:
		return fmt.Errorf("%w: the window is longer than a year", ErrInvalid)
	case s.Capacity < 0 || s.Capacity > MaxCapacity:
		return fmt.Errorf("%w: capacity must be from 0 (no limit of its own) to %d", ErrInvalid, MaxCapacity)
	case s.Warm < 0 || s.Warm > MaxWarm:
		return fmt.Errorf("%w: warm must be from 0 (no warm pool) to %d", ErrInvalid, MaxWarm)
	case s.Capacity > 0 && s.Warm > s.Capacity:
		return fmt.Errorf("%w: warm (%d) must not be more than capacity (%d): warm labs hold the sitting's lab slots", ErrInvalid, s.Warm, s.Capacity)
	case s.WarmLeadSeconds < 0 || time.Duration(s.WarmLeadSeconds)*time.Second > MaxWarmLead:
		return fmt.Errorf("%w: warm_lead must be from 0 (the default, %s) to %s", ErrInvalid, DefaultWarmLead, MaxWarmLead)
	case s.WarmMaxAgeSeconds != 0 && (time.Duration(s.WarmMaxAgeSeconds)*time.Second < MinWarmMaxAge || time.Duration(s.WarmMaxAgeSeconds)*time.Second > MaxWarmMaxAge):
		return fmt.Errorf("%w: warm_max_age must be from %s to %s (or 0 for the default, %s)", ErrInvalid, MinWarmMaxAge, MaxWarmMaxAge, DefaultWarmMaxAge)
	case s.WarmCheckSeconds != 0 && (time.Duration(s.WarmCheckSeconds)*time.Second < MinWarmCheck || time.Duration(s.WarmCheckSeconds)*time.Second > MaxWarmCheck):
		return fmt.Errorf("%w: warm_check must be from %s to %s (or 0 for the default, %s)", ErrInvalid, MinWarmCheck, MaxWarmCheck, DefaultWarmCheck)
	}
	return nil
}

// Admits reports whether candidates may sign in and start at now: nil
// inside the window, ErrNotOpen before it, ErrClosed after.
func (s *Sitting) Admits(now time.Time) error {
	switch {
	case now.Before(s.Opens):
		return fmt.Errorf("%w: it opens at %s", ErrNotOpen, s.Opens.UTC().Format("2006-01-02 15:04 MST"))
	case !now.Before(s.Closes):
		return ErrClosed
	}
	return nil
}

// Entry is one candidate on a sitting's roster.
type Entry struct {
	// ID is stable for the entry's life; invitation links and admin
	// actions name it.
	ID         string `json:"id"`
	Email      string `json:"email"`
	Name       string `json:"name"`
	ExternalID string `json:"external_id,omitempty"`
	// CodeHash is the sha256 of the entry's current access code; the code
	// itself is shown once, when issued, and never stored.
	CodeHash     string    `json:"code_hash"`
	CodeIssuedAt time.Time `json:"code_issued_at"`
	// SessionID is the entry's one session, once it signed in. Only an
	// admin's reset clears it, so a candidate cannot take a second lab.
	SessionID string    `json:"session_id,omitempty"`
	AddedAt   time.Time `json:"added_at"`
	// Line is the entry's line in the file it was imported from; it keeps
	// a roster in the file's order.
	Line int `json:"line,omitempty"`
	// SelfRegistered marks entries added by open registration.
	SelfRegistered bool `json:"self_registered,omitempty"`
}

// NormalizeEmail lower-cases and trims an address and checks its shape.
func NormalizeEmail(email string) (string, error) {
	e := strings.ToLower(strings.TrimSpace(email))
	at := strings.LastIndexByte(e, '@')
	if len(e) > MaxEmail || at < 1 || at == len(e)-1 || strings.ContainsAny(e, " \t\r\n<>\"'\\/,;") || !strings.Contains(e[at:], ".") {
		return "", fmt.Errorf("%w: email %q is not a valid address", ErrInvalid, email)
	}
	return e, nil
}
