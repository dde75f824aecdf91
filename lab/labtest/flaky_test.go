package labtest

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
)

// TestFlakyPassesThrough: without failures a Flaky is the runtime it wraps.
func TestFlakyPassesThrough(t *testing.T) {
	m := NewMemory(MemoryOptions{NodeDelay: 10 * time.Millisecond})
	f := NewFlaky(m)
	Run(t, Harness{
		Runtime:   f,
		Inventory: func(t testing.TB, sessionID string) Inventory { return m.Inventory(sessionID) },
		Crash: func(t testing.TB, sessionID, node string) {
			if err := m.Crash(sessionID, node); err != nil {
				t.Fatal(err)
			}
		},
		Addresses:       true,
		CrashKeepsFiles: true,
	})
	if f.Calls("Provision") < 4 || f.Calls("Exec") == 0 || f.Calls("Ping") != 1 {
		t.Errorf("calls: provision %d exec %d ping %d", f.Calls("Provision"), f.Calls("Exec"), f.Calls("Ping"))
	}
}

func TestFlakyFailNext(t *testing.T) {
	m, spec := memoryLab(t)
	f := NewFlaky(m)
	ctx := context.Background()
	boom := errors.New("engine hiccup")
	f.FailNext("ExportFS", 1, boom)
	f.FailNext("ExportFS", 1, nil)

	want := []error{boom, ErrInjected, nil}
	for i, w := range want {
		err := f.ExportFS(ctx, spec.SessionID, "tokyo", io.Discard)
		if w == nil && err != nil || w != nil && !errors.Is(err, w) {
			t.Errorf("export #%d: err = %v, want %v", i+1, err, w)
		}
	}
	if n := f.Calls("ExportFS"); n != 3 {
		t.Errorf("ExportFS calls = %d, want 3", n)
	}
	if err := f.Logs(ctx, spec.SessionID, "tokyo", io.Discard); err != nil {
		t.Errorf("logs failed with only exports set to fail: %v", err)
	}
}

func TestFlakyFailWhen(t *testing.T) {
	m, spec := memoryLab(t)
	f := NewFlaky(m)
	ctx := context.Background()
	var seen []Call
	f.FailWhen(func(c Call) error {
		seen = append(seen, c)
		if c.Method == "ResetNode" && c.Node == "g1" {
			return ErrInjected
		}
		return nil
	})
	if err := f.ResetNode(ctx, spec, "g2"); err != nil {
		t.Errorf("reset g2: %v", err)
	}
	if err := f.ResetNode(ctx, spec, "g1"); !errors.Is(err, ErrInjected) {
		t.Errorf("reset g1: %v, want the injected failure", err)
	}
	want := []Call{{"ResetNode", spec.SessionID, "g2", 1}, {"ResetNode", spec.SessionID, "g1", 2}}
	if len(seen) != 2 || seen[0] != want[0] || seen[1] != want[1] {
		t.Errorf("rule saw %+v, want %+v", seen, want)
	}
	// A queued failure takes the call before the rule is asked.
	f.FailNext("Labs", 1, nil)
	if _, err := f.Labs(ctx); !errors.Is(err, ErrInjected) || len(seen) != 2 {
		t.Errorf("labs: %v; rule asked %d times", err, len(seen))
	}
	f.FailWhen(nil)
	if err := f.ResetNode(ctx, spec, "g1"); err != nil {
		t.Errorf("reset after the rule was removed: %v", err)
	}
}

func TestFlakyConcurrent(t *testing.T) {
	m, spec := memoryLab(t)
	f := NewFlaky(m)
	f.FailNext("Status", 50, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for range 100 {
		wg.Go(func() {
			if _, err := f.Status(context.Background(), spec); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if failed != 50 || f.Calls("Status") != 100 {
		t.Errorf("%d of %d calls failed, want 50 of 100", failed, f.Calls("Status"))
	}
}

func TestFlakyRejectsUnknownMethods(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("FailNext of a misspelt method did not panic")
		}
	}()
	NewFlaky(NewMemory(MemoryOptions{})).FailNext("Provison", 1, nil)
}
