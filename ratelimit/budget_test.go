package ratelimit

import (
	"errors"
	"testing"
	"time"
)

func TestParseBudget(t *testing.T) {
	tests := []struct {
		in   string
		want Budget
		str  string
	}{
		{"600/1m", Budget{600, time.Minute}, "600/1m"},
		{"30/10m", Budget{30, 10 * time.Minute}, "30/10m"},
		{" 5 / 90s ", Budget{5, 90 * time.Second}, "5/1m30s"},
		{"10/m", Budget{10, time.Minute}, "10/1m"},
		{"1000/h", Budget{1000, time.Hour}, "1000/1h"},
		{"3/250ms", Budget{3, 250 * time.Millisecond}, "3/250ms"},
		{"2/1h30m", Budget{2, 90 * time.Minute}, "2/1h30m"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseBudget(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || got.String() != tc.str {
				t.Errorf("ParseBudget(%q) = %v (%q), want %v (%q)", tc.in, got, got.String(), tc.want, tc.str)
			}
			if again, err := ParseBudget(got.String()); err != nil || again != got {
				t.Errorf("String does not parse back: %q: %v %v", got.String(), again, err)
			}
		})
	}
}

func TestParseBudgetRefuses(t *testing.T) {
	for _, in := range []string{"", "600", "/1m", "0/1m", "-1/1m", "1.5/1m", "ten/1m", "10/", "10/0s", "10/-1m", "10/soon", "10/1m/2"} {
		t.Run(in, func(t *testing.T) {
			if b, err := ParseBudget(in); !errors.Is(err, ErrBadBudget) {
				t.Errorf("ParseBudget(%q) = %v, %v; want ErrBadBudget", in, b, err)
			}
		})
	}
}
