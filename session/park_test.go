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

// TestProvisionRounds: every park and every restart begins a provision
// round of its own, never one used before; only a provisioning session
// restarts.
func TestProvisionRounds(t *testing.T) {
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	s := New("c@example.com", "exam1", "docker", time.Hour, now)
	if err := s.RestartProvision(); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("restart of a created session: %v", err)
	}
	if err := s.WalkTo(StateProvisioning, now); err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{s.ProvisionRound(): true}
	step := func(name string, f func() error) {
		t.Helper()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if s.Status != StateProvisioning {
			return
		}
		if r := s.ProvisionRound(); seen[r] {
			t.Fatalf("%s: round %d again", name, r)
		}
		seen[s.ProvisionRound()] = true
	}
	step("restart", s.RestartProvision)
	step("park", func() error { return s.Park(ParkNoCapacity, "full", now) })
	step("admit", func() error { return s.Admit(now) })
	step("restart", s.RestartProvision)
	step("restart", s.RestartProvision)
	if s.Parks != 1 || s.Restarts != 3 || s.ProvisionRound() != 4 || len(seen) != 5 {
		t.Fatalf("parks=%d restarts=%d round=%d rounds seen %v", s.Parks, s.Restarts, s.ProvisionRound(), seen)
	}
	if err := s.MarkReady(now); err != nil {
		t.Fatal(err)
	}
	if err := s.RestartProvision(); !errors.Is(err, ErrNotAllowed) || s.Restarts != 3 {
		t.Fatalf("restart of a ready session: %v restarts=%d", err, s.Restarts)
	}
}
