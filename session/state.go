package session

// State is where a session is in its lifecycle.
type State string

// Session states.
const (
	StateCreated      State = "created"
	StateQueued       State = "queued"
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
	StateCreated, StateQueued, StateProvisioning, StateReady, StateSubmitted,
	StateArchiving, StateCompleted, StateFailed, StateExpired,
}

// rank orders the states; a transition may only go up. Failed and expired
// are terminal like completed.
var rank = map[State]int{
	StateCreated:      0,
	StateQueued:       1,
	StateProvisioning: 2,
	StateReady:        3,
	StateSubmitted:    4,
	StateArchiving:    5,
	StateCompleted:    6,
	StateExpired:      6,
	StateFailed:       6,
}

// Valid reports whether s is a known state.
func (s State) Valid() bool { _, ok := rank[s]; return ok }

// Terminal reports whether nothing more happens to a session in s.
func (s State) Terminal() bool { return rank[s] == rank[StateCompleted] }

// Open reports whether the candidate can still work in the session: it has
// not been submitted, archived or ended.
func (s State) Open() bool { return rank[s] <= rank[StateReady] }

// Pending reports whether the session has no lab yet but may get one:
// signed in, or waiting in the queue.
func (s State) Pending() bool { return s == StateCreated || s == StateQueued }

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

// LiveLab reports whether the candidate may use terminals in s: while the
// lab comes up (a terminal waits for its node) and while it is ready.
func (s State) LiveLab() bool { return s == StateProvisioning || s == StateReady }
