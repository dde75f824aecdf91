package sitting

import (
	"errors"
	"regexp"
	"testing"
)

func TestNewCode(t *testing.T) {
	shape := regexp.MustCompile(`^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$`)
	seen := map[string]bool{}
	counts := map[rune]int{}
	for range 2000 {
		code, hash := NewCode()
		if !shape.MatchString(code) {
			t.Fatalf("code %q is not four groups of four Crockford characters", code)
		}
		n, err := NormalizeCode(code)
		if err != nil || HashCode(n) != hash {
			t.Fatalf("code %q does not hash to what NewCode stored", code)
		}
		if seen[code] {
			t.Fatalf("code %q issued twice", code)
		}
		seen[code] = true
		for _, r := range n {
			counts[r]++
		}
	}
	// 32000 symbols over 32: each about 1000; a biased or narrow generator
	// lands far outside.
	if len(counts) != 32 {
		t.Fatalf("only %d of 32 symbols used", len(counts))
	}
	for r, c := range counts {
		if c < 800 || c > 1200 {
			t.Errorf("symbol %c used %d times of 32000", r, c)
		}
	}
}

func TestNormalizeCode(t *testing.T) {
	tests := []struct {
		in, want string
		err      error
	}{
		{"7KQ2-M9XD-4HTV-P0RC", "7KQ2M9XD4HTVP0RC", nil},
		{"7kq2 m9xd 4htv p0rc", "7KQ2M9XD4HTVP0RC", nil},
		{"7KQ2M9XD4HTVPORC", "7KQ2M9XD4HTVP0RC", nil},    // O read as 0
		{"7KQ2-M9XD-4HTV-PlRC", "7KQ2M9XD4HTVP1RC", nil}, // l read as 1
		{"7KQ2-M9XD-4HTV-PIRC", "7KQ2M9XD4HTVP1RC", nil}, // I read as 1
		{"7KQ2-M9XD-4HTV-P0R", "", ErrBadCode},           // short
		{"7KQ2-M9XD-4HTV-P0RCX", "", ErrBadCode},         // long
		{"7KQ2-M9XD-4HTV-P0RU", "", ErrBadCode},          // U is not in the alphabet
		{"7KQ2-M9XD-4HTV-P0R!", "", ErrBadCode},
		{"7KQ2-M9XD-4HTV-P0RÇ", "", ErrBadCode},
		{"", "", ErrBadCode},
		{"ada@example.com", "", ErrBadCode},
	}
	for _, tc := range tests {
		got, err := NormalizeCode(tc.in)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("NormalizeCode(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
