package labtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
)

// Named bounds of the gate's contract: blockedFor is how long a call must
// stay blocked to count as waiting, gateDone how long a call whose wait
// has ended may take to return.
const (
	blockedFor = 300 * time.Millisecond
	gateDone   = 5 * time.Second
	gateLapse  = time.Second
)

// ExecGateSuite runs the lab.ExecGate contract against the gates newGate
// returns; each gate's unsettled notes must lapse after lapse (a second,
// passed by the suite).
func ExecGateSuite(t *testing.T, newGate func(t *testing.T, lapse time.Duration) lab.ExecGate) {
	const labA, labB = "gatelab0000a", "gatelab0000b"
	ctx := context.Background()

	t.Run("freeze waits for a start", func(t *testing.T) {
		g := newGate(t, gateLapse*60)
		end := begin(t, g, labA)
		froze := freezeAsync(g, labA)
		blocked(t, froze, "freeze while an exec starts")
		end(true)
		returned(t, froze, "freeze once the start is over").thaw()
	})
	t.Run("exec waits while frozen", func(t *testing.T) {
		g := newGate(t, gateLapse*60)
		thaw := freeze(t, g, labA)
		began := make(chan error, 1)
		go func() {
			end, err := g.BeginExec(ctx, labA)
			if err == nil {
				end(true)
			}
			began <- err
		}()
		blocked(t, began, "exec start into a frozen lab")
		thaw()
		if err := returned(t, began, "exec start once thawed"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("exec gives up with its context", func(t *testing.T) {
		g := newGate(t, gateLapse*60)
		thaw := freeze(t, g, labA)
		defer thaw()
		cctx, cancel := context.WithTimeout(ctx, blockedFor)
		defer cancel()
		if _, err := g.BeginExec(cctx, labA); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("exec start into a frozen lab past its deadline: %v", err)
		}
	})
	t.Run("a failed freeze leaves the lab open", func(t *testing.T) {
		g := newGate(t, gateLapse*60)
		end := begin(t, g, labA)
		defer end(true)
		freezeTimesOut(t, g, labA, "freeze while an exec starts")
		begin(t, g, labA)(true)
	})
	t.Run("an unsettled start holds the freeze until it lapses", func(t *testing.T) {
		g := newGate(t, gateLapse)
		begin(t, g, labA)(false)
		start := time.Now()
		thaw := freeze(t, g, labA)
		defer thaw()
		if waited := time.Since(start); waited < gateLapse/2 {
			t.Fatalf("freeze went ahead after %s with a start of unknown outcome noted %s before; it lapses after %s", waited, waited, gateLapse)
		}
	})
	t.Run("a late end leaves a later start noted", func(t *testing.T) {
		g := newGate(t, gateLapse)
		late := begin(t, g, labA)
		time.Sleep(gateLapse + gateLapse/4)
		freeze(t, g, labA)() // the first start's note has lapsed
		end := begin(t, g, labA)
		defer end(true)
		late(true)
		freezeTimesOut(t, g, labA, "freeze after a lapsed start's late end, while another starts")
	})
	t.Run("labs are apart", func(t *testing.T) {
		g := newGate(t, gateLapse*60)
		end := begin(t, g, labA)
		defer end(true)
		freeze(t, g, labB)()
		thaw := freeze(t, g, labB)
		defer thaw()
		begin(t, g, labA)(true)
	})
	t.Run("one freeze at a time", func(t *testing.T) {
		g := newGate(t, gateLapse*60)
		thaw := freeze(t, g, labA)
		second := freezeAsync(g, labA)
		blocked(t, second, "second freeze of a frozen lab")
		thaw()
		thaw2 := returned(t, second, "second freeze once the first thawed").thaw
		// A thaw or an end called twice changes nothing.
		thaw()
		blocked(t, beginAsync(g, labA), "exec start while the second freeze holds")
		thaw2()
		end := begin(t, g, labA)
		end(true)
		end(true)
		freeze(t, g, labA)()
	})
}

func begin(t *testing.T, g lab.ExecGate, id string) func(bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), gateDone)
	defer cancel()
	end, err := g.BeginExec(ctx, id)
	if err != nil {
		t.Fatalf("begin exec in %s: %v", id, err)
	}
	return end
}

// freezeTimesOut fails the test unless a freeze of id given blockedFor
// ends with its deadline.
func freezeTimesOut(t *testing.T, g lab.ExecGate, id, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), blockedFor)
	defer cancel()
	if _, err := g.Freeze(ctx, id); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s past its deadline: %v", what, err)
	}
}

func freeze(t *testing.T, g lab.ExecGate, id string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), gateDone)
	defer cancel()
	thaw, err := g.Freeze(ctx, id)
	if err != nil {
		t.Fatalf("freeze %s: %v", id, err)
	}
	return thaw
}

type frozenResult struct {
	thaw func()
	err  error
}

func freezeAsync(g lab.ExecGate, id string) chan frozenResult {
	ch := make(chan frozenResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		thaw, err := g.Freeze(ctx, id)
		ch <- frozenResult{thaw, err}
	}()
	return ch
}

func beginAsync(g lab.ExecGate, id string) chan error {
	ch := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*blockedFor)
		defer cancel()
		end, err := g.BeginExec(ctx, id)
		if err == nil {
			end(true)
		}
		ch <- err
	}()
	return ch
}

// blocked fails the test when ch delivers within blockedFor.
func blocked[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s did not wait: %+v", what, v)
	case <-time.After(blockedFor):
	}
}

// returned waits up to gateDone for ch; for a freeze, it fails on its
// error and gives its thaw.
func returned[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		if fr, ok := any(v).(frozenResult); ok && fr.err != nil {
			t.Fatalf("%s: %v", what, fr.err)
		}
		return v
	case <-time.After(gateDone):
		t.Fatalf("%s has not returned in %s", what, gateDone)
	}
	var zero T
	return zero
}
