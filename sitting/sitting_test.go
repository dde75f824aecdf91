package sitting

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateWarm(t *testing.T) {
	opens := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	base := func() Sitting {
		return Sitting{ID: "s1", ExamID: "e", Opens: opens, Closes: opens.Add(3 * time.Hour), Capacity: 10}
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Sitting)
		field string // "" when valid
	}{
		{"no pool", func(s *Sitting) {}, ""},
		{"pool within capacity", func(s *Sitting) { s.Warm = 10 }, ""},
		{"pool without a capacity", func(s *Sitting) { s.Capacity, s.Warm = 0, 50 }, ""},
		{"pool larger than capacity", func(s *Sitting) { s.Warm = 11 }, "warm"},
		{"negative pool", func(s *Sitting) { s.Warm = -1 }, "warm"},
		{"pool over the limit", func(s *Sitting) { s.Capacity, s.Warm = 0, MaxWarm+1 }, "warm"},
		{"negative lead", func(s *Sitting) { s.WarmLeadSeconds = -1 }, "warm_lead"},
		{"max age too short", func(s *Sitting) { s.WarmMaxAgeSeconds = 60 }, "warm_max_age"},
		{"max age default", func(s *Sitting) { s.WarmMaxAgeSeconds = 0 }, ""},
		{"check too often", func(s *Sitting) { s.WarmCheckSeconds = 1 }, "warm_check"},
		{"check too rarely", func(s *Sitting) { s.WarmCheckSeconds = 3600 }, "warm_check"},
		{"check every 5s", func(s *Sitting) { s.WarmCheckSeconds = 5 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			tc.edit(&s)
			err := s.Validate()
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("valid sitting refused: %v", err)
			case tc.field != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field+" ")):
				t.Fatalf("error %v, want one naming %s", err, tc.field)
			}
		})
	}
}

func TestWarmFilling(t *testing.T) {
	opens := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	s := Sitting{Opens: opens, Closes: opens.Add(time.Hour), Warm: 2, WarmLeadSeconds: 600}
	for _, tc := range []struct {
		at   time.Time
		want bool
	}{
		{opens.Add(-11 * time.Minute), false},
		{opens.Add(-10 * time.Minute), true},
		{opens.Add(59 * time.Minute), true},
		{opens.Add(time.Hour), false},
	} {
		if got := s.WarmFilling(tc.at); got != tc.want {
			t.Errorf("filling at %s: %v, want %v", tc.at, got, tc.want)
		}
	}
	if s.WarmMaxAge() != DefaultWarmMaxAge {
		t.Errorf("default max age %s", s.WarmMaxAge())
	}
	if s.WarmCheck() != DefaultWarmCheck {
		t.Errorf("default check interval %s", s.WarmCheck())
	}
}
