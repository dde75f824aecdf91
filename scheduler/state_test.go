package scheduler

import "testing"

func TestStateMachineMovesForwardOnly(t *testing.T) {
	tests := []struct {
		from, to State
		ok       bool
	}{
		{StateCreated, StateProvisioning, true},
		{StateProvisioning, StateReady, true},
		{StateReady, StateSubmitted, true},
		{StateSubmitted, StateArchiving, true},
		{StateArchiving, StateCompleted, true},
		{StateArchiving, StateExpired, true},
		{StateReady, StateReady, true}, // retried handlers converge
		{StateCreated, StateSubmitted, true},
		{StateProvisioning, StateFailed, true},
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
			got, err := tc.from.Move(tc.to)
			if tc.ok && (err != nil || got != tc.to) {
				t.Fatalf("Move = %s, %v; want %s", got, err, tc.to)
			}
			if !tc.ok && err == nil {
				t.Fatalf("Move from %s to %s allowed", tc.from, tc.to)
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
	if !StateReady.Open() || StateSubmitted.Open() {
		t.Error("ready must be open, submitted must not")
	}
	if !StateArchiving.HasLab() || StateCompleted.HasLab() {
		t.Error("archiving has a lab, completed does not")
	}
}

func TestTaskIDsAndOptions(t *testing.T) {
	p, err := NewProvisionTask("abcdefgh1234")
	if err != nil {
		t.Fatal(err)
	}
	if p.Type() != TypeProvision {
		t.Errorf("type = %s", p.Type())
	}
	a, _ := NewSnapshotTask("abcdefgh1234", "n1")
	b, _ := NewSnapshotTask("abcdefgh1234", "n2")
	if TaskID(TypeSnapshot, "abcdefgh1234", "n1") == TaskID(TypeSnapshot, "abcdefgh1234", "n2") {
		t.Error("two admin snapshots share a task id")
	}
	if string(a.Payload()) == string(b.Payload()) {
		t.Error("snapshot payloads do not carry their nonce")
	}
	if got := TaskID(TypeArchive, "s1"); got != "session:archive:s1" {
		t.Errorf("archive id = %q", got)
	}
}
