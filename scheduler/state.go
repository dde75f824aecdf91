// Package scheduler is the session lifecycle: the forward-only state
// machine, the task contracts workers implement, and the enqueueing that
// moves a session from one state to the next.
//
// A session is born created. Start enqueues provision (provisioning); the
// provision handler brings the lab up (ready). Submit, or the deadline,
// moves it to submitted and enqueues archive (archiving); archive writes
// the snapshots and enqueues cleanup, which removes the lab and marks the
// session completed. A lab that cannot be brought up ends failed; a
// deadline reached before submit ends expired once archived.
package scheduler

import (
	"errors"
	"fmt"
)

// State is where a session is in its lifecycle.
type State string

// Session states.
const (
	StateCreated      State = "created"
	StateProvisioning State = "provisioning"
	StateReady        State = "ready"
	StateSubmitted    State = "submitted"
	StateArchiving    State = "archiving"
	StateCompleted    State = "completed"
	StateFailed       State = "failed"
	StateExpired      State = "expired"
)

// States lists every state in lifecycle order.
var States = []State{
	StateCreated, StateProvisioning, StateReady, StateSubmitted,
	StateArchiving, StateCompleted, StateFailed, StateExpired,
}

// ErrBackwards is returned for a transition the state machine forbids.
var ErrBackwards = errors.New("state transition not allowed")

// rank orders the states; a transition may only go up. Failed and expired
// are terminal like completed.
var rank = map[State]int{
	StateCreated:      0,
	StateProvisioning: 1,
	StateReady:        2,
	StateSubmitted:    3,
	StateArchiving:    4,
	StateCompleted:    5,
	StateExpired:      5,
	StateFailed:       5,
}

// Valid reports whether s is a known state.
func (s State) Valid() bool { _, ok := rank[s]; return ok }

// Terminal reports whether nothing more happens to a session in s.
func (s State) Terminal() bool { return rank[s] == 5 }

// Open reports whether the candidate can still work in the session: it has
// not been submitted, archived or ended.
func (s State) Open() bool { return rank[s] <= rank[StateReady] }

// HasLab reports whether a lab may exist for a session in s.
func (s State) HasLab() bool {
	return s == StateProvisioning || s == StateReady || s == StateSubmitted || s == StateArchiving
}

// CanMove reports whether a session may move from s to next. Staying in the
// same state is allowed so that retried handlers converge.
func (s State) CanMove(next State) bool {
	if !s.Valid() || !next.Valid() {
		return false
	}
	if s == next {
		return true
	}
	if s.Terminal() {
		return false
	}
	// Failure is reachable from any live state; everything else only forward.
	if next == StateFailed {
		return true
	}
	// Archiving after a missed deadline ends expired, not completed.
	return rank[next] > rank[s]
}

// Move returns next if the transition is allowed, or ErrBackwards.
func (s State) Move(next State) (State, error) {
	if !s.CanMove(next) {
		return s, fmt.Errorf("move session from %s to %s: %w", s, next, ErrBackwards)
	}
	return next, nil
}
