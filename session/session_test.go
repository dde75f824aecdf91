package session

import (
	"errors"
	"testing"
	"time"
)

var (
	t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	t1 = t0.Add(40 * time.Second)
	t2 = t0.Add(90 * time.Minute)
)

// in returns a session of a three-hour exam walked to state at t0.
func in(t *testing.T, state State) *Session {
	t.Helper()
	s := New("kim@example.com", "netops", "docker", 3*time.Hour, t0)
	s.ID = "abcdefgh1234"
	if err := s.WalkTo(state, t0); err != nil {
		t.Fatalf("walk to %s: %v", state, err)
	}
	if s.Status != state {
		t.Fatalf("walked to %s, is %s", state, s.Status)
	}
	return s
}

// TestTransitions runs every transition from every state: each either
// makes its move (and sets what it owns) or refuses with ErrNotAllowed
// and leaves the record as it was.
func TestTransitions(t *testing.T) {
	type result struct {
		to    State
		moved bool
	}
	tests := []struct {
		name string
		do   func(s *Session) (bool, error)
		// want maps a starting state to the outcome; states not listed
		// must refuse.
		want  map[State]result
		check func(t *testing.T, before, after *Session)
	}{
		{
			name: "Start",
			do:   func(s *Session) (bool, error) { return true, s.Start(t1) },
			want: map[State]result{
				StateCreated:      {StateQueued, true},
				StateQueued:       {StateQueued, true},
				StateProvisioning: {StateProvisioning, true},
			},
			check: func(t *testing.T, before, after *Session) {
				if before.Status == StateCreated && !after.StartedAt.Equal(t1) {
					t.Errorf("StartedAt = %v, want %v", after.StartedAt, t1)
				}
				if before.Status != StateCreated && !after.StartedAt.Equal(before.StartedAt) {
					t.Errorf("a second start moved StartedAt (the place in line) to %v", after.StartedAt)
				}
				if !after.Deadline.IsZero() || !after.AdmittedAt.Equal(before.AdmittedAt) {
					t.Error("start set a deadline or an admission: the clock starts only when the lab is ready")
				}
			},
		},
		{
			name: "Admit",
			do:   func(s *Session) (bool, error) { return true, s.Admit(t1) },
			want: map[State]result{
				StateQueued:       {StateProvisioning, true},
				StateProvisioning: {StateProvisioning, true},
			},
			check: func(t *testing.T, before, after *Session) {
				if before.Status == StateQueued && !after.AdmittedAt.Equal(t1) {
					t.Errorf("AdmittedAt = %v, want %v", after.AdmittedAt, t1)
				}
				if before.Status == StateProvisioning && !after.AdmittedAt.Equal(before.AdmittedAt) {
					t.Errorf("a second admission moved AdmittedAt to %v", after.AdmittedAt)
				}
				if !after.Deadline.IsZero() {
					t.Error("admission set a deadline: the clock starts only when the lab is ready")
				}
			},
		},
		{
			name: "BeginProvision",
			do:   func(s *Session) (bool, error) { return true, s.BeginProvision() },
			want: map[State]result{
				StateProvisioning: {StateProvisioning, true},
			},
			check: func(t *testing.T, before, after *Session) {
				if after.Attempts != before.Attempts+1 || after.Error != "" {
					t.Errorf("attempts %d -> %d, error %q", before.Attempts, after.Attempts, after.Error)
				}
			},
		},
		{
			name: "MarkReady",
			do:   func(s *Session) (bool, error) { return true, s.MarkReady(t1) },
			want: map[State]result{
				StateProvisioning: {StateReady, true},
				StateReady:        {StateReady, true},
			},
			check: func(t *testing.T, before, after *Session) {
				if before.Status == StateReady {
					if !after.Deadline.Equal(before.Deadline) {
						t.Error("marking a ready session ready again moved its deadline")
					}
					return
				}
				if !after.ReadyAt.Equal(t1) || !after.Deadline.Equal(t1.Add(3*time.Hour)) {
					t.Errorf("ready %v deadline %v; want %v and three hours later", after.ReadyAt, after.Deadline, t1)
				}
			},
		},
		{
			name: "Submit",
			do:   func(s *Session) (bool, error) { return s.Submit(ByAdmin, t2) },
			want: map[State]result{
				StateCreated:      {StateSubmitted, true},
				StateQueued:       {StateSubmitted, true},
				StateProvisioning: {StateSubmitted, true},
				StateReady:        {StateSubmitted, true},
				StateSubmitted:    {StateSubmitted, false},
				StateArchiving:    {StateArchiving, false},
			},
			check: func(t *testing.T, before, after *Session) {
				if before.Status.Open() {
					if after.SubmitReason != ByAdmin || !after.SubmittedAt.Equal(t2) {
						t.Errorf("reason %q at %v", after.SubmitReason, after.SubmittedAt)
					}
				} else if after.SubmitReason != before.SubmitReason || !after.SubmittedAt.Equal(before.SubmittedAt) {
					t.Error("a second submit rewrote the first one's reason or time")
				}
			},
		},
		{
			name: "BeginArchive",
			do:   func(s *Session) (bool, error) { return true, s.BeginArchive() },
			want: map[State]result{
				StateSubmitted: {StateArchiving, true},
				StateArchiving: {StateArchiving, true},
			},
		},
		{
			name: "Complete",
			do:   func(s *Session) (bool, error) { return s.Complete(t2) },
			want: map[State]result{
				StateArchiving: {StateCompleted, true},
				StateCompleted: {StateCompleted, false},
				StateExpired:   {StateExpired, false},
				StateFailed:    {StateFailed, false},
			},
			check: func(t *testing.T, before, after *Session) {
				if before.Status == StateArchiving && !after.CompletedAt.Equal(t2) {
					t.Errorf("CompletedAt = %v", after.CompletedAt)
				}
			},
		},
		{
			name: "Fail",
			do:   func(s *Session) (bool, error) { return true, s.Fail("engine gone", t2) },
			want: map[State]result{
				StateCreated:      {StateFailed, true},
				StateQueued:       {StateFailed, true},
				StateProvisioning: {StateFailed, true},
				StateReady:        {StateFailed, true},
				StateSubmitted:    {StateFailed, true},
				StateArchiving:    {StateFailed, true},
				StateFailed:       {StateFailed, true},
			},
			check: func(t *testing.T, before, after *Session) {
				if after.Error != "engine gone" || after.CompletedAt.IsZero() {
					t.Errorf("error %q, completed %v", after.Error, after.CompletedAt)
				}
			},
		},
	}
	for _, tc := range tests {
		for _, from := range States {
			t.Run(tc.name+"/"+string(from), func(t *testing.T) {
				s := in(t, from)
				before := *s
				moved, err := tc.do(s)
				want, ok := tc.want[from]
				if !ok {
					if !errors.Is(err, ErrNotAllowed) {
						t.Fatalf("from %s: err = %v, want ErrNotAllowed", from, err)
					}
					if s.Status != before.Status || s.UpdatedAt != before.UpdatedAt || s.Deadline != before.Deadline {
						t.Fatalf("a refused %s changed the record: %+v", tc.name, s)
					}
					return
				}
				if err != nil {
					t.Fatalf("from %s: %v", from, err)
				}
				if s.Status != want.to || moved != want.moved {
					t.Fatalf("from %s: now %s moved=%v, want %s moved=%v", from, s.Status, moved, want.to, want.moved)
				}
				if tc.check != nil {
					tc.check(t, &before, s)
				}
			})
		}
	}
}

// TestHoldsSlot: a session holds a lab slot from its admission until its
// lab is removed; one submitted while it waited never held one.
func TestHoldsSlot(t *testing.T) {
	tests := []struct {
		name string
		s    func(t *testing.T) *Session
		want bool
	}{
		{"created", func(t *testing.T) *Session { return in(t, StateCreated) }, false},
		{"queued", func(t *testing.T) *Session { return in(t, StateQueued) }, false},
		{"admitted", func(t *testing.T) *Session { return in(t, StateProvisioning) }, true},
		{"ready", func(t *testing.T) *Session { return in(t, StateReady) }, true},
		{"archiving", func(t *testing.T) *Session { return in(t, StateArchiving) }, true},
		{"completed", func(t *testing.T) *Session { return in(t, StateCompleted) }, false},
		{"failed", func(t *testing.T) *Session { return in(t, StateFailed) }, false},
		{"submitted while queued", func(t *testing.T) *Session {
			s := in(t, StateQueued)
			if _, err := s.Submit(ByAdmin, t1); err != nil {
				t.Fatal(err)
			}
			return s
		}, false},
		{"started before the queue existed", func(t *testing.T) *Session {
			s := in(t, StateReady)
			s.AdmittedAt = time.Time{}
			return s
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.s(t).HoldsSlot(); got != tc.want {
				t.Fatalf("HoldsSlot() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDeadlineSubmitEndsExpired(t *testing.T) {
	s := in(t, StateReady)
	if _, err := s.Submit(ByDeadline, t2); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginArchive(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Complete(t2); err != nil || s.Status != StateExpired {
		t.Fatalf("complete after a deadline submit: %s, %v; want expired", s.Status, err)
	}
}

func TestProvisionFailed(t *testing.T) {
	tests := []struct {
		name  string
		from  State
		final bool
		want  State
	}{
		{"retry left", StateProvisioning, false, StateProvisioning},
		{"last attempt", StateProvisioning, true, StateFailed},
		{"submitted meanwhile", StateSubmitted, true, StateSubmitted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := in(t, tc.from)
			s.ProvisionFailed("image missing", tc.final, t2)
			if s.Status != tc.want || s.Error != "image missing" {
				t.Fatalf("now %s %q, want %s", s.Status, s.Error, tc.want)
			}
			if (tc.want == StateFailed) != !s.CompletedAt.IsZero() {
				t.Errorf("CompletedAt = %v", s.CompletedAt)
			}
		})
	}
}

func TestExtend(t *testing.T) {
	tests := []struct {
		name     string
		from     State
		by       time.Duration
		err      error
		duration int64
		deadline time.Time
	}{
		{"before the clock starts", StateCreated, 30 * time.Minute, nil, 3*3600 + 1800, time.Time{}},
		{"moves a running clock", StateReady, 30 * time.Minute, nil, 3*3600 + 1800, t0.Add(3*time.Hour + 30*time.Minute)},
		{"shortens", StateReady, -time.Hour, nil, 2 * 3600, t0.Add(2 * time.Hour)},
		{"never under a minute", StateReady, -3 * time.Hour, ErrTooShort, 3 * 3600, t0.Add(3 * time.Hour)},
		{"not after submit", StateSubmitted, time.Minute, ErrNotAllowed, 3 * 3600, t0.Add(3 * time.Hour)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := in(t, tc.from)
			err := s.Extend(tc.by)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if s.DurationSeconds != tc.duration || !s.Deadline.Equal(tc.deadline) {
				t.Fatalf("duration %d deadline %v; want %d %v", s.DurationSeconds, s.Deadline, tc.duration, tc.deadline)
			}
		})
	}
}

func TestPastDeadlineAndRemaining(t *testing.T) {
	s := in(t, StateReady) // deadline t0+3h
	tests := []struct {
		at        time.Time
		past      bool
		remaining time.Duration
	}{
		{t0, false, 3 * time.Hour},
		{t0.Add(3*time.Hour - time.Second), false, time.Second},
		{t0.Add(3 * time.Hour), true, 0},
		{t0.Add(4 * time.Hour), true, 0},
	}
	for _, tc := range tests {
		if got := s.PastDeadline(tc.at); got != tc.past {
			t.Errorf("PastDeadline(%v) = %v", tc.at, got)
		}
		if got := s.Remaining(tc.at); got != tc.remaining {
			t.Errorf("Remaining(%v) = %v, want %v", tc.at, got, tc.remaining)
		}
	}
	if c := in(t, StateCreated); c.PastDeadline(t2) || c.Remaining(t2) != 0 {
		t.Error("a session without a deadline is past it or has time left")
	}
}

func TestRefusalReadsPlainly(t *testing.T) {
	s := in(t, StateCompleted)
	_, err := s.Submit(ByCandidate, t2)
	if err == nil || err.Error() != "the session is completed; it cannot be submitted" {
		t.Fatalf("err = %v", err)
	}
}

// TestCandidateError: the candidate is told plain words for a failed
// attempt and a failed provision, the reason itself for a session failed
// on purpose, and plain words for a record from before notices.
func TestCandidateError(t *testing.T) {
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	raw := `dial tcp 10.0.0.9:2375: connect: connection refused`
	s := &Session{Status: StateProvisioning}
	s.ProvisionFailed(raw, false, now)
	if s.Error != raw || s.CandidateError() != NoticePreparing {
		t.Errorf("attempt failed: error %q, candidate reads %q", s.Error, s.CandidateError())
	}
	s.ProvisionFailed(raw, true, now)
	if s.Status != StateFailed || s.Error != raw || s.CandidateError() != NoticeNotPrepared {
		t.Errorf("last attempt failed: %s, error %q, candidate reads %q", s.Status, s.Error, s.CandidateError())
	}
	q := &Session{Status: StateQueued}
	if err := q.Fail("removed from the queue by the exam staff: wrong room", now); err != nil {
		t.Fatal(err)
	}
	if q.CandidateError() != "removed from the queue by the exam staff: wrong room" {
		t.Errorf("failed on purpose: candidate reads %q", q.CandidateError())
	}
	old := &Session{Status: StateFailed, Error: raw}
	if old.CandidateError() != NoticeNotPrepared {
		t.Errorf("an older record: candidate reads %q", old.CandidateError())
	}
	if (&Session{Status: StateReady}).CandidateError() != "" {
		t.Error("a session with no error tells the candidate of one")
	}
}
