package scheduler

import (
	"testing"
	"time"
)

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

func TestRetryDelayBacksOffWithJitter(t *testing.T) {
	tests := []struct {
		n    int
		base time.Duration
	}{
		{0, 2 * time.Second},
		{1, 4 * time.Second},
		{3, 16 * time.Second},
		{6, 2 * time.Minute},
		{20, 2 * time.Minute},
	}
	for _, tc := range tests {
		lo, hi := tc.base*8/10, tc.base*12/10
		seen := map[time.Duration]bool{}
		for range 200 {
			d := RetryDelay(tc.n, nil, nil)
			if d < lo || d >= hi {
				t.Fatalf("RetryDelay(%d) = %v, want within [%v, %v)", tc.n, d, lo, hi)
			}
			seen[d] = true
		}
		if len(seen) < 50 {
			t.Errorf("RetryDelay(%d) gave %d distinct delays in 200 calls: no jitter", tc.n, len(seen))
		}
	}
}
