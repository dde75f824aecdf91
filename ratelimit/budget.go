package ratelimit

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrBadBudget is returned for a budget that is not "limit/window".
var ErrBadBudget = errors.New("not a budget")

// Budget is how many events one key may have per window: Limit at once,
// then refilled evenly, one every Window/Limit. "600/1m" admits 600 in a
// burst and then one every 100ms; a key left alone for a whole window has
// its whole budget again.
type Budget struct {
	Limit  int
	Window time.Duration
}

// ParseBudget reads "limit/window", e.g. "600/1m" or "30/10m". The window
// is a Go duration; a bare unit ("600/m") means one of it.
func ParseBudget(s string) (Budget, error) {
	n, w, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Budget{}, fmt.Errorf("%w: %q (want limit/window, e.g. 600/1m)", ErrBadBudget, s)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || limit < 1 {
		return Budget{}, fmt.Errorf("%w: %q: limit must be a whole number of at least 1", ErrBadBudget, s)
	}
	w = strings.TrimSpace(w)
	if w != "" && (w[0] < '0' || w[0] > '9') {
		w = "1" + w
	}
	window, err := time.ParseDuration(w)
	if err != nil || window <= 0 {
		return Budget{}, fmt.Errorf("%w: %q: window must be a positive duration such as 1m", ErrBadBudget, s)
	}
	return Budget{Limit: limit, Window: window}, nil
}

// String is the form ParseBudget reads.
func (b Budget) String() string {
	return strconv.Itoa(b.Limit) + "/" + shortDuration(b.Window)
}

// valid reports whether the budget can be kept: the limiter counts in
// microseconds, so every event must take at least one.
func (b Budget) valid() bool {
	return b.Limit >= 1 && b.Window >= time.Duration(b.Limit)*time.Microsecond
}

// shortDuration drops the zero parts time.Duration.String keeps: 10m, not 10m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
