package session

import "testing"

func TestStateMachineMovesForwardOnly(t *testing.T) {
	tests := []struct {
		from, to State
		ok       bool
	}{
		{StateCreated, StateQueued, true},
		{StateQueued, StateProvisioning, true},
		{StateCreated, StateProvisioning, true},
		{StateProvisioning, StateReady, true},
		{StateReady, StateSubmitted, true},
		{StateSubmitted, StateArchiving, true},
		{StateArchiving, StateCompleted, true},
		{StateArchiving, StateExpired, true},
		{StateReady, StateReady, true}, // retried handlers converge
		{StateCreated, StateSubmitted, true},
		{StateProvisioning, StateFailed, true},
		{StateQueued, StateSubmitted, true},
		{StateQueued, StateFailed, true},
		{StateProvisioning, StateQueued, false},
		{StateQueued, StateCreated, false},
		{StateReady, StateProvisioning, false},
		{StateSubmitted, StateReady, false},
		{StateCompleted, StateArchiving, false},
		{StateCompleted, StateFailed, false},
		{StateFailed, StateProvisioning, false},
		{StateExpired, StateCompleted, false},
		{State("bogus"), StateReady, false},
		{StateReady, State("bogus"), false},
	}
	for _, tc := range tests {
		t.Run(string(tc.from)+"->"+string(tc.to), func(t *testing.T) {
			if got := tc.from.CanMove(tc.to); got != tc.ok {
				t.Fatalf("CanMove(%s -> %s) = %v, want %v", tc.from, tc.to, got, tc.ok)
			}
		})
	}
}

func TestStatePredicates(t *testing.T) {
	for _, s := range States {
		if s.Open() && s.Terminal() {
			t.Errorf("%s is both open and terminal", s)
		}
	}
	if !StateReady.Open() || !StateQueued.Open() || StateSubmitted.Open() {
		t.Error("queued and ready must be open, submitted must not")
	}
	if StateQueued.HasLab() || StateQueued.LiveLab() || !StateQueued.Pending() || StateProvisioning.Pending() {
		t.Error("a queued session has no lab yet and is pending; a provisioning one is not")
	}
	if !StateArchiving.HasLab() || StateCompleted.HasLab() {
		t.Error("archiving has a lab, completed does not")
	}
	for _, s := range States {
		want := s == StateProvisioning || s == StateReady
		if s.LiveLab() != want {
			t.Errorf("%s.LiveLab() = %v, want %v", s, s.LiveLab(), want)
		}
	}
}
