package session

import (
	"errors"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
)

// TestLostLabPausesTheClock follows a ready session's lab through a host
// that stops reporting, is then lost, and a fresh lab: the deadline never
// passes while the clock is paused, the time left stands where it stopped,
// and the paused time is credited once, in whole seconds rounded up.
func TestLostLabPausesTheClock(t *testing.T) {
	s := in(t, StateReady) // ready at t0, three hours
	deadline := s.Deadline
	stop := t0.Add(2*time.Hour + 30*time.Minute)

	started, err := s.LabUnusable(lab.StateUnknown, "client c2 stopped reporting", stop)
	if err != nil || !started {
		t.Fatalf("LabUnusable(unknown) = %v, %v; want true, nil", started, err)
	}
	if !s.Paused() || s.Notice != NoticeLabUnavailable || s.CandidateError() != NoticeLabUnavailable {
		t.Fatalf("paused %v, notice %q; want paused with %q", s.Paused(), s.Notice, NoticeLabUnavailable)
	}
	// Long past the old deadline, the session is not due and has the
	// 30 minutes it had when the clock stopped.
	late := deadline.Add(4 * time.Hour)
	if s.PastDeadline(late) {
		t.Error("a paused session is past its deadline")
	}
	if got := s.Remaining(late); got != 30*time.Minute {
		t.Errorf("remaining while paused = %v, want 30m", got)
	}

	// The host is then declared lost: the state and reason change, the
	// clock stays stopped from the first sighting.
	started, err = s.LabUnusable(lab.StateLost, "client c2 is down", stop.Add(15*time.Minute))
	if err != nil || started {
		t.Fatalf("LabUnusable(lost) on a paused session = %v, %v; want false, nil", started, err)
	}
	if s.Trouble.State != lab.StateLost || s.Trouble.Reason != "client c2 is down" || !s.Trouble.Since.Equal(stop) {
		t.Fatalf("trouble = %+v; want lost since %v", s.Trouble, stop)
	}

	if err := s.BeginReprovision(stop.Add(16 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	if !s.Reprovisioning() {
		t.Fatal("not reprovisioning after BeginReprovision")
	}
	back := stop.Add(20*time.Minute + 1500*time.Millisecond)
	credit := s.LabBack(back)
	if credit != 20*time.Minute+2*time.Second {
		t.Errorf("credit = %v, want 20m2s (whole seconds, rounded up)", credit)
	}
	if want := deadline.Add(credit); !s.Deadline.Equal(want) {
		t.Errorf("deadline = %v, want %v", s.Deadline, want)
	}
	if s.Paused() || s.Reprovisioning() || s.Notice != "" || s.Error != "" || s.Trouble.CreditedSeconds != 1202 {
		t.Errorf("after LabBack: paused %v, reprovisioning %v, notice %q, error %q, trouble %+v",
			s.Paused(), s.Reprovisioning(), s.Notice, s.Error, s.Trouble)
	}
	if got := s.Remaining(back); got < 30*time.Minute || got >= 30*time.Minute+time.Second {
		t.Errorf("remaining once back = %v, want the 30m left when it stopped (and under a second more)", got)
	}
	// Once back, the clock runs and the deadline is enforced again.
	if !s.PastDeadline(s.Deadline) {
		t.Error("the moved deadline is not enforced")
	}
	if again := s.LabBack(back.Add(time.Hour)); again != 0 {
		t.Errorf("a second LabBack credited %v", again)
	}
}

func TestLostLabRefusals(t *testing.T) {
	for _, st := range []State{StateCreated, StateQueued, StateProvisioning, StateSubmitted, StateCompleted} {
		s := in(t, st)
		if _, err := s.LabUnusable(lab.StateLost, "gone", t1); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("LabUnusable in %s: err %v, want ErrNotAllowed", st, err)
		}
		if s.Paused() {
			t.Errorf("%s session paused", st)
		}
	}
	s := in(t, StateReady)
	if _, err := s.LabUnusable(lab.StateExited, "stopped", t1); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("LabUnusable(exited): err %v, want ErrNotAllowed", err)
	}
	if err := s.BeginReprovision(t1); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("BeginReprovision of a usable lab: err %v, want ErrNotAllowed", err)
	}
	if got := s.LabBack(t2); got != 0 || !s.Deadline.Equal(t0.Add(3*time.Hour)) {
		t.Errorf("LabBack of a running clock credited %v, deadline %v", got, s.Deadline)
	}
}

// A session submitted while paused has no clock left: closing its trouble
// credits nothing.
func TestSubmitReachableWhilePaused(t *testing.T) {
	s := in(t, StateReady)
	if _, err := s.LabUnusable(lab.StateLost, "client c2 is down", t1); err != nil {
		t.Fatal(err)
	}
	moved, err := s.SubmitReachable(t2)
	if err != nil || !moved {
		t.Fatalf("SubmitReachable = %v, %v", moved, err)
	}
	if s.Status != StateSubmitted || s.SubmitReason != ByAdmin || !s.Trouble.ArchiveReachable {
		t.Fatalf("status %s, reason %s, trouble %+v", s.Status, s.SubmitReason, s.Trouble)
	}
	deadline := s.Deadline
	if got := s.LabBack(t2); got != 0 || !s.Deadline.Equal(deadline) || s.Trouble.State != "" {
		t.Errorf("LabBack after submit: credit %v, deadline %v, trouble %+v", got, s.Deadline, s.Trouble)
	}
	if _, err := s.SubmitReachable(t2); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("SubmitReachable of a submitted session: err %v", err)
	}
}
