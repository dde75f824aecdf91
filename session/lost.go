package session

import (
	"time"

	"github.com/examlab/examlab/lab"
)

// A ready session's lab can become unusable through no doing of the
// candidate: the host it runs on is lost (a Nomad client down, its
// allocation lost) or stops reporting (a client disconnected), or its
// containers vanish. While it is unusable the candidate's clock stands
// still; when the lab comes back, or an admin has a fresh one made, the
// time it stood still is added to the deadline. The record keeps what
// happened in Trouble; the transitions below are its only writers.

// NoticeLabUnavailable is what the candidate reads while their lab is
// unusable.
const NoticeLabUnavailable = "your lab is unavailable at the moment; your time is paused and the exam staff have been told"

// Trouble is what is wrong with a ready session's lab, while it is.
type Trouble struct {
	// State is lab.StateLost (gone with its host) or lab.StateUnknown
	// (its host stopped reporting); empty when the lab is usable.
	State lab.State `json:"state,omitempty"`
	// Reason is the runtime's account, in full, for the exam staff.
	Reason string `json:"reason,omitempty"`
	// Since is when the lab was first seen unusable: the clock stopped
	// then. Zero when it runs.
	Since time.Time `json:"since,omitzero"`
	// Reprovision is when an admin asked for a fresh lab; zero when none
	// is being made.
	Reprovision time.Time `json:"reprovision,omitzero"`
	// ArchiveReachable: an admin had the session submitted with only the
	// nodes that can still be reached archived.
	ArchiveReachable bool `json:"archive_reachable,omitempty"`
	// CreditedSeconds is all the time credited to the deadline for
	// unusable labs over the session's life.
	CreditedSeconds int64 `json:"credited_seconds,omitempty"`
}

// Paused reports whether the candidate's clock stands still: the session
// is ready and its lab unusable.
func (s *Session) Paused() bool {
	return s.Status == StateReady && !s.Trouble.Since.IsZero()
}

// LabUnusable records that the lab of a ready session is lost or its
// host stopped reporting (state lab.StateLost or lab.StateUnknown), with
// the runtime's reason, and stops the clock at now. It reports whether
// this call stopped it; for a session already paused only the state and
// reason are brought up to date (unknown becoming lost), the clock stays
// stopped from the first sighting.
func (s *Session) LabUnusable(state lab.State, reason string, now time.Time) (bool, error) {
	if state != lab.StateLost && state != lab.StateUnknown {
		return false, s.refuse("paused for a lab that is " + string(state))
	}
	if s.Status != StateReady {
		return false, s.refuse("paused")
	}
	s.Trouble.State, s.Trouble.Reason = state, reason
	s.Error, s.Notice = reason, NoticeLabUnavailable
	if !s.Trouble.Since.IsZero() {
		return false, nil
	}
	s.Trouble.Since = now.UTC()
	return true, nil
}

// LabBack records that the lab is usable again at now (it came back, or a
// fresh one is ready): the clock runs again and the time it stood still is
// added to the deadline, in whole seconds rounded up. It returns the credit; zero,
// with nothing changed, when the clock was not stopped. A session
// submitted meanwhile has no clock left to credit: its trouble is only
// closed.
func (s *Session) LabBack(now time.Time) time.Duration {
	if s.Trouble.Since.IsZero() {
		return 0
	}
	var credit time.Duration
	if s.Status == StateReady {
		// Rounded up: the candidate never loses a fraction of a second.
		credit = (max(0, now.Sub(s.Trouble.Since)) + time.Second - 1).Truncate(time.Second)
		s.Deadline = s.Deadline.Add(credit)
		s.Trouble.CreditedSeconds += int64(credit / time.Second)
	}
	s.Trouble.State, s.Trouble.Reason, s.Trouble.Since, s.Trouble.Reprovision = "", "", time.Time{}, time.Time{}
	if s.Notice == NoticeLabUnavailable {
		s.Error, s.Notice = "", ""
	}
	return credit
}

// BeginReprovision records an admin's request for a fresh lab in place of
// an unusable one. The clock stays stopped until the fresh lab is ready
// (LabBack). Asking again while one is being made changes nothing.
func (s *Session) BeginReprovision(now time.Time) error {
	if !s.Paused() {
		return s.refuse("given a fresh lab: its lab is not lost")
	}
	if s.Trouble.Reprovision.IsZero() {
		s.Trouble.Reprovision = now.UTC()
	}
	return nil
}

// Reprovisioning reports whether a fresh lab is being made for the
// session.
func (s *Session) Reprovisioning() bool {
	return s.Paused() && !s.Trouble.Reprovision.IsZero()
}

// SubmitReachable submits the session on an admin's word with only the
// nodes that can still be reached to be archived: for a lab that is
// partly or wholly lost. It reports whether this call made the move.
func (s *Session) SubmitReachable(now time.Time) (bool, error) {
	if !s.Status.Open() {
		return false, s.refuse("archived as far as it can be reached")
	}
	s.Trouble.ArchiveReachable = true
	return s.Submit(ByAdmin, now)
}
