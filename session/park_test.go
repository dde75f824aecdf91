package session

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPark(t *testing.T) {
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	s := New("c@example.com", "exam1", "nomad", time.Hour, now)
	if err := s.WalkTo(StateProvisioning, now); err != nil {
		t.Fatal(err)
	}
	started := s.StartedAt
	if err := s.BeginProvision(); err != nil {
		t.Fatal(err)
	}
	detail := "Get \"http://10.1.2.3:4646/v1/job/exam-x\": dial tcp: connection refused"
	if err := s.Park(ParkUnavailable, detail, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if s.Status != StateQueued || !s.Parked() || s.Parks != 1 || !s.StartedAt.Equal(started) || !s.Deadline.IsZero() {
		t.Fatalf("after park: %+v", s)
	}
	if got := s.CandidateError(); got != NoticeUnavailable || strings.Contains(got, "10.1.2.3") || !strings.Contains(got, "time has not started") {
		t.Fatalf("candidate reads %q", got)
	}
	if s.Error != detail || s.Parking.Detail != detail {
		t.Fatalf("staff read %q", s.Error)
	}
	if !s.ParkedFrom(StateProvisioning) || s.ParkedFrom(StateReady) {
		t.Fatal("ParkedFrom")
	}
	// Parking again converges; admission clears the park and provisions.
	if err := s.Park(ParkNoCapacity, "other", now); err != nil || s.Parks != 1 || s.Parking.Reason != ParkUnavailable {
		t.Fatalf("second park: %v, %+v", err, s.Parking)
	}
	if err := s.Admit(now); err != nil || s.Parking != nil || s.Status != StateProvisioning {
		t.Fatalf("admit after park: %v, %+v", err, s)
	}
	if err := s.MarkReady(now); err != nil {
		t.Fatal(err)
	}
	if err := s.Park(ParkNoCapacity, "x", now); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("park of a ready session: %v, want ErrNotAllowed", err)
	}
	if ParkNotice(ParkNoCapacity) != NoticeWaitingRoom || !strings.HasPrefix(NoticeWaitingRoom, "your lab is being prepared") {
		t.Fatal("no-capacity notice")
	}
}
