// Package session owns a candidate's exam session: the record kept as
// metadata.json and the forward-only state machine it moves through. The
// transition methods below are the only code that writes a session's
// status and its timestamps; store persists records, api and workers ask
// for transitions and get an error when one is not allowed.
//
// A session's life, top to bottom:
//
//	created       the candidate signed in; nothing runs yet
//	queued        Start: the candidate pressed start; the session waits,
//	              first come first served, for a lab slot of its sitting
//	              (and of the deployment)
//	provisioning  Admit: the session got a slot; a worker brings the lab
//	              up (BeginProvision per attempt, ProvisionFailed on an
//	              attempt that did not make it; Park back to queued when
//	              the runtime has no room or cannot be reached;
//	              RestartProvision when the worker running it is gone)
//	ready         MarkReady: every node runs; the clock starts now, so
//	              a slow start costs the candidate nothing
//	submitted     Submit: by the candidate, an admin, or the deadline
//	archiving     BeginArchive: a worker captures the lab (MarkArchived
//	              once the snapshot is whole; RestartArchive or
//	              RestartCleanup when the worker running either is gone)
//	completed     Complete: the lab is archived and removed
//	expired       Complete, when the deadline forced the submit
//	failed        ProvisionFailed on the last attempt, or Fail
//
// Completed, expired and failed are terminal. Every transition into the
// state a session is already in succeeds without change, so a retried
// handler converges instead of failing.
package session

import (
	"errors"
	"time"

	"github.com/examlab/examlab/lab"
)

// Errors transitions return; api/ maps them to status codes.
var (
	// ErrNotAllowed: the session's state does not allow the transition.
	ErrNotAllowed = errors.New("not allowed in the session's state")
	// ErrTooShort: an extension would leave the exam under a minute.
	ErrTooShort = errors.New("the exam would be left with less than a minute in total")
)

// Submit reasons.
const (
	ByCandidate = "candidate"
	ByAdmin     = "admin"
	ByDeadline  = "deadline"
)

// Session is one candidate's exam session: metadata.json.
type Session struct {
	ID     string `json:"id"`
	Short  string `json:"short"`
	Email  string `json:"email"`
	Name   string `json:"name,omitempty"`
	ExamID string `json:"exam_id"`
	// SittingID and EntryID are the sitting and roster entry the
	// candidate signed in through.
	SittingID string    `json:"sitting_id,omitempty"`
	EntryID   string    `json:"entry_id,omitempty"`
	Runtime   string    `json:"runtime"`
	Status    State     `json:"status"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// StartedAt is when the candidate pressed start: their place in the
	// queue. The deadline does not count from it but from ReadyAt.
	StartedAt time.Time `json:"started_at,omitzero"`
	// AdmittedAt is when the session got its lab slot.
	AdmittedAt  time.Time `json:"admitted_at,omitzero"`
	ReadyAt     time.Time `json:"ready_at,omitzero"`
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	CompletedAt time.Time `json:"completed_at,omitzero"`
	// Deadline is ReadyAt + DurationSeconds (moved by extensions); zero
	// until the lab is ready.
	Deadline time.Time `json:"deadline,omitzero"`
	// DurationSeconds is the exam's time allowance, extendable by admins.
	DurationSeconds int64 `json:"duration_seconds"`
	// SubmitReason is ByCandidate, ByAdmin or ByDeadline.
	SubmitReason string           `json:"submit_reason,omitempty"`
	Nodes        []lab.NodeStatus `json:"nodes"`
	// Error is why the lab could not be made or the session failed, in
	// full, for the exam staff: a runtime's own words, addresses included.
	Error string `json:"error,omitempty"`
	// Notice is what the candidate is told of it, in plain words; see
	// CandidateError.
	Notice      string            `json:"notice,omitempty"`
	Attempts    int               `json:"provision_attempts,omitempty"`
	RuntimeInfo map[string]string `json:"runtime_info,omitempty"`
	// TokenHashes are sha256 of the candidate's bearer tokens; the tokens
	// themselves are never stored.
	TokenHashes []string `json:"token_hashes,omitempty"`
	// Trouble is what is wrong with a ready session's lab while its clock
	// is paused, and the time credited for it (see lost.go).
	Trouble Trouble `json:"lab_trouble,omitzero"`
	Version int64   `json:"version"`

	// Parking is set while an admitted session waits in the queue again
	// (see Park); Parks counts how often it was parked, and names each
	// new provision of it.
	Parking *Parking `json:"parking,omitempty"`
	Parks   int      `json:"parks,omitempty"`
	// Restarts counts the provisions started afresh because the worker
	// running one was gone (RestartProvision).
	Restarts int `json:"provision_restarts,omitempty"`
	// ArchiveRestarts and CleanupRestarts count the archives and cleanups
	// started afresh because the worker running one was gone
	// (RestartArchive, RestartCleanup); each names the operation's
	// current round, as Restarts does the provision's.
	ArchiveRestarts int `json:"archive_restarts,omitempty"`
	CleanupRestarts int `json:"cleanup_restarts,omitempty"`
	// ArchivedAt is when the archive's snapshot was whole on storage
	// (MarkArchived): from then on only the cleanup is left, and no
	// archive may capture the lab again while the cleanup takes it down.
	ArchivedAt time.Time `json:"archived_at,omitzero"`

	// LabID names the lab the session runs in when it is not the
	// session's own id: a lab claimed from its sitting's warm pool, made
	// before the candidate started and named after a warm lab id of its
	// own (containers exam-{LabID[:8]}-{node}). Empty: the lab is the
	// session's own (exam-{ID[:8]}-…). See Lab.
	LabID string `json:"lab_id,omitempty"`
}

// Lab is the id of the session's lab: every runtime call that acts on
// the session's containers names it, never the session's id.
func (s *Session) Lab() string {
	if s.LabID != "" {
		return s.LabID
	}
	return s.ID
}

// FromWarmPool reports whether the session's lab was claimed from a warm
// pool.
func (s *Session) FromWarmPool() bool { return s.LabID != "" && s.LabID != s.ID }

// New returns a created session for email in exam, with the exam's time
// allowance. The id is assigned by the store, which must keep its prefix
// unique.
func New(email, examID, runtime string, duration time.Duration, now time.Time) *Session {
	now = now.UTC()
	return &Session{
		Email:           email,
		ExamID:          examID,
		Runtime:         runtime,
		Status:          StateCreated,
		CreatedAt:       now,
		UpdatedAt:       now,
		DurationSeconds: int64(duration / time.Second),
		Version:         1,
	}
}

// TransitionError is a transition the session's state does not allow. Its
// text is plain enough to show a candidate; errors.Is matches it to
// ErrNotAllowed.
type TransitionError struct {
	ID     string
	From   State
	Action string // past participle: "started", "submitted"…
}

func (e *TransitionError) Error() string {
	return "the session is " + string(e.From) + "; it cannot be " + e.Action
}

// Unwrap makes errors.Is(err, ErrNotAllowed) hold.
func (e *TransitionError) Unwrap() error { return ErrNotAllowed }

func (s *Session) refuse(action string) error {
	return &TransitionError{ID: s.ID, From: s.Status, Action: action}
}

// move sets the status if the state machine allows it.
func (s *Session) move(action string, next State) error {
	if !s.Status.CanMove(next) {
		return s.refuse(action)
	}
	s.Status = next
	return nil
}

// Start records that the candidate pressed start: the session joins the
// queue for a lab slot, its place in line being StartedAt. Starting again
// while it waits, or while its lab comes up, changes nothing, so a
// duplicate start keeps its place.
func (s *Session) Start(now time.Time) error {
	switch s.Status {
	case StateCreated:
		s.StartedAt = now.UTC()
		s.Status = StateQueued
		return nil
	case StateQueued, StateProvisioning:
		return nil
	}
	return s.refuse("started")
}

// Admit records that the session got a lab slot: it leaves the queue and
// a worker brings its lab up. Admitting it again changes nothing.
func (s *Session) Admit(now time.Time) error {
	switch s.Status {
	case StateQueued:
		s.AdmittedAt = now.UTC()
		s.Status = StateProvisioning
		s.Parking = nil
		return nil
	case StateProvisioning:
		return nil
	}
	return s.refuse("admitted")
}

// HoldsSlot reports whether the session counts against its sitting's
// capacity and the deployment's lab limit: from its admission until its
// lab is removed (cleanup) or it ends. A session submitted while it
// waited in the queue never held one. (Attempts stands in for AdmittedAt
// on sessions started before there was a queue.)
func (s *Session) HoldsSlot() bool {
	return s.Status.HasLab() && (!s.AdmittedAt.IsZero() || s.Attempts > 0)
}

// BeginProvision records one provision attempt by a worker. Only an
// admitted session is provisioned: one still queued holds no slot.
func (s *Session) BeginProvision() error {
	if s.Status != StateProvisioning {
		return s.refuse("provisioned")
	}
	s.Attempts++
	s.Error, s.Notice = "", ""
	return nil
}

// ProvisionRound names the session's current provision: each park and
// each restart begins a new one, under a task of its own, and a provision
// of an earlier round finds nothing to do. Both counts only grow, so no
// two rounds share a number.
func (s *Session) ProvisionRound() int { return s.Parks + s.Restarts }

// RestartProvision records that the worker running the session's
// provision is gone: a new round begins at once (ProvisionRound), rather
// than when the queue gives the dead worker's task up. Only a
// provisioning session is restarted.
func (s *Session) RestartProvision() error {
	if s.Status != StateProvisioning {
		return s.refuse("provisioned again")
	}
	s.Restarts++
	return nil
}

// ProvisionFailed records why an attempt did not bring the lab up. On the
// final attempt a session still provisioning ends failed; one submitted
// meanwhile keeps its course.
func (s *Session) ProvisionFailed(reason string, final bool, now time.Time) {
	s.Error, s.Notice = reason, NoticePreparing
	if final && s.Status == StateProvisioning {
		s.Notice = NoticeNotPrepared
		s.Status = StateFailed
		s.CompletedAt = now.UTC()
	}
}

// MarkReady records that every node runs and starts the clock: the
// deadline is now + the time allowance. A session already ready is left
// as it is.
func (s *Session) MarkReady(now time.Time) error {
	if s.Status == StateReady {
		return nil
	}
	if s.Status != StateProvisioning {
		return s.refuse("marked ready")
	}
	now = now.UTC()
	s.Status = StateReady
	s.ReadyAt = now
	s.Deadline = now.Add(time.Duration(s.DurationSeconds) * time.Second)
	return nil
}

// Submit ends the candidate's work for reason (ByCandidate, ByAdmin,
// ByDeadline). It reports whether this call made the move: a session
// already submitted or being archived stays as it is and keeps its first
// reason, so concurrent submits agree on one.
func (s *Session) Submit(reason string, now time.Time) (bool, error) {
	switch {
	case s.Status.Open():
		s.Status = StateSubmitted
		s.SubmittedAt = now.UTC()
		s.SubmitReason = reason
		return true, nil
	case s.Status == StateSubmitted || s.Status == StateArchiving:
		return false, nil
	default:
		return false, s.refuse("submitted")
	}
}

// PastDeadline reports whether the session is open and its deadline has
// passed at now. A paused clock (lost.go) is never past its deadline: the
// deadline moves by the pause once the lab is back.
func (s *Session) PastDeadline(now time.Time) bool {
	return s.Status.Open() && !s.Paused() && !s.Deadline.IsZero() && !s.Deadline.After(now)
}

// BeginArchive records that a worker captures the submitted lab.
func (s *Session) BeginArchive() error {
	if s.Status != StateSubmitted && s.Status != StateArchiving {
		return s.refuse("archived")
	}
	return s.move("archived", StateArchiving)
}

// RestartArchive records that the worker running the session's archive
// is gone: the archive's next round begins at once (ArchiveRestarts).
// Only an archive not yet whole is restarted: once it is, the cleanup
// may be taking the lab down.
func (s *Session) RestartArchive() error {
	if (s.Status != StateSubmitted && s.Status != StateArchiving) || !s.ArchivedAt.IsZero() {
		return s.refuse("archived again")
	}
	s.ArchiveRestarts++
	return nil
}

// MarkArchived records that the archive's snapshot is whole on storage;
// the status stays archiving until the cleanup completes the session. A
// session marked before keeps its first time.
func (s *Session) MarkArchived(now time.Time) error {
	if s.Status != StateArchiving {
		return s.refuse("marked archived")
	}
	if s.ArchivedAt.IsZero() {
		s.ArchivedAt = now.UTC()
	}
	return nil
}

// RestartCleanup records that the worker removing the session's lab is
// gone: the cleanup's next round begins at once (CleanupRestarts). A
// session the cleanup ended already is restarted too, as the dead run
// may have stopped before it gave the lab's slot back.
func (s *Session) RestartCleanup() error {
	if s.Status != StateArchiving && !s.Status.Terminal() {
		return s.refuse("cleaned up again")
	}
	s.CleanupRestarts++
	return nil
}

// Complete ends an archived session: expired when the deadline forced
// its submit, completed otherwise. It reports whether this call ended it;
// an ended session is left as it is.
func (s *Session) Complete(now time.Time) (bool, error) {
	if s.Status.Terminal() {
		return false, nil
	}
	if s.Status != StateArchiving {
		return false, s.refuse("completed")
	}
	final := StateCompleted
	if s.SubmitReason == ByDeadline {
		final = StateExpired
	}
	s.Status = final
	s.CompletedAt = now.UTC()
	return true, nil
}

// Fail ends a live session that can no longer go on, with the reason,
// which the candidate reads too: it must be in plain words.
func (s *Session) Fail(reason string, now time.Time) error {
	if err := s.move("failed", StateFailed); err != nil {
		return err
	}
	s.Error, s.Notice = reason, reason
	if s.CompletedAt.IsZero() {
		s.CompletedAt = now.UTC()
	}
	return nil
}

// Extend gives the candidate more (or, with a negative by, less) time.
// The allowance never drops under a minute; a running clock moves with it.
func (s *Session) Extend(by time.Duration) error {
	if !s.Status.Open() {
		return s.refuse("extended")
	}
	secs := int64(by / time.Second)
	if s.DurationSeconds+secs < 60 {
		return ErrTooShort
	}
	s.DurationSeconds += secs
	if !s.Deadline.IsZero() {
		s.Deadline = s.Deadline.Add(by)
	}
	return nil
}

// Remaining is the time left at now, zero once the deadline has passed or
// when the clock has not started or no longer runs; while the clock is
// paused, the time that was left when it stopped.
func (s *Session) Remaining(now time.Time) time.Duration {
	if s.Deadline.IsZero() || !s.Status.Open() {
		return 0
	}
	if s.Paused() {
		now = s.Trouble.Since // the clock stands where it stopped
	}
	return max(0, s.Deadline.Sub(now))
}

// WalkTo moves the session forward to state to along the path a real
// session takes (start, admit, provision, ready, submit, archive, complete), one
// transition at a time, so every timestamp on the way is set as it would
// be. A submit on the way to expired is a deadline submit. It is for
// tests and tools that need a session in a given state; WalkTo to the
// state the session is in changes nothing.
func (s *Session) WalkTo(to State, now time.Time) error {
	if !to.Valid() || !s.Status.CanMove(to) {
		return s.refuse("moved to " + string(to))
	}
	if to == StateFailed {
		return s.Fail("failed on request", now)
	}
	reason := ByCandidate
	if to == StateExpired {
		reason = ByDeadline
	}
	for s.Status != to {
		var err error
		switch s.Status {
		case StateCreated:
			err = s.Start(now)
		case StateQueued:
			err = s.Admit(now)
		case StateProvisioning:
			if s.Attempts == 0 {
				err = s.BeginProvision()
				if err != nil {
					break
				}
			}
			err = s.MarkReady(now)
		case StateReady:
			_, err = s.Submit(reason, now)
		case StateSubmitted:
			err = s.BeginArchive()
		case StateArchiving:
			_, err = s.Complete(now)
		default:
			return s.refuse("moved to " + string(to))
		}
		if err != nil {
			return err
		}
		if s.Status.Terminal() && s.Status != to {
			return s.refuse("moved to " + string(to))
		}
	}
	return nil
}

// What a candidate is told when their lab is not there, in place of the
// runtime's own words.
const (
	NoticePreparing   = "your lab is being prepared; this is taking longer than usual, and your time has not started"
	NoticeNotPrepared = "your lab could not be prepared; please tell the exam staff"
)

// CandidateError is what the candidate is told of s.Error: the notice
// made for them, never the runtime's own words, which may name internal
// addresses. A record written before notices existed gets the plain
// words for its state.
func (s *Session) CandidateError() string {
	switch {
	case s.Notice != "":
		return s.Notice
	case s.Error == "":
		return ""
	case s.Status == StateFailed:
		return NoticeNotPrepared
	default:
		return NoticePreparing
	}
}
