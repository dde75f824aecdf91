package session

import "time"

// Why an admitted session went back to the queue (Parking.Reason).
const (
	// ParkNoCapacity: the runtime answered, and has no room for the lab
	// now (lab.ErrNoCapacity).
	ParkNoCapacity = "no-capacity"
	// ParkUnavailable: the runtime could not be reached
	// (lab.ErrUnavailable).
	ParkUnavailable = "unavailable"
)

// What a candidate whose start is parked is told. Their clock has not
// started, as on every page before the lab is ready.
const (
	NoticeWaitingRoom  = "your lab is being prepared; it starts as soon as there is room for it, and your time has not started"
	NoticeUnavailable  = "the lab service is unavailable at the moment; your lab starts when it is back, and your time has not started"
	noticeParkedOthers = NoticePreparing
)

// Parking is why, and since when, an admitted session waits in the queue
// again: its provision found no room, or no runtime to ask.
type Parking struct {
	// Reason is ParkNoCapacity or ParkUnavailable.
	Reason string `json:"reason"`
	// Detail is the runtime's whole answer, for the exam staff.
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}

// ParkNotice is what the candidate is told while parked for reason.
func ParkNotice(reason string) string {
	switch reason {
	case ParkNoCapacity:
		return NoticeWaitingRoom
	case ParkUnavailable:
		return NoticeUnavailable
	}
	return noticeParkedOthers
}

// Park sends a session whose provision could not run back to the queue,
// at its old place (StartedAt), instead of failing it after retries: the
// lab could not be placed (ParkNoCapacity) or the runtime not reached
// (ParkUnavailable). Its slot is given back; a later admission (Admit)
// provisions it again. Only a provisioning session is parked; parking a
// session parked already changes nothing, so a retried handler converges.
// The clock has not started, so the wait costs the candidate nothing.
func (s *Session) Park(reason, detail string, now time.Time) error {
	if s.Status == StateQueued && s.Parking != nil {
		return nil
	}
	if s.Status != StateProvisioning {
		return s.refuse("parked")
	}
	s.Status = StateQueued
	s.Parks++
	s.Parking = &Parking{Reason: reason, Detail: detail, At: now.UTC()}
	s.Error, s.Notice = detail, ParkNotice(reason)
	return nil
}

// ParkedFrom reports whether the session moved from before to queued by
// Park: the one step back the lifecycle allows, since the lab was never
// there and the candidate's clock never started.
func (s *Session) ParkedFrom(before State) bool {
	return before == StateProvisioning && s.Parked()
}

// Parked reports whether the session waits in the queue after a parked
// provision.
func (s *Session) Parked() bool { return s.Status == StateQueued && s.Parking != nil }
