package ratelimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/testlab/redistest"
)

// These tests run against a private redis-server (`make deps` installs
// it); see testlab/redistest.

const testTimeout = 10 * time.Second

func newLimiter(t *testing.T, rdb redis.Scripter, buckets map[string]Budget) *Limiter {
	t.Helper()
	l, err := New(Options{Redis: rdb, Prefix: "test:", Buckets: buckets})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestBudgetIsKept(t *testing.T) {
	ctx := testContext(t)
	l := newLimiter(t, redistest.Client(t), map[string]Budget{"b": {5, time.Minute}})
	for i := range 5 {
		r, err := l.Allow(ctx, "b", "k")
		if err != nil {
			t.Fatal(err)
		}
		if !r.Allowed || r.Remaining != 4-i {
			t.Fatalf("event %d: %+v, want allowed with %d remaining", i+1, r, 4-i)
		}
	}
	r, err := l.Allow(ctx, "b", "k")
	if err != nil {
		t.Fatal(err)
	}
	// 5 a minute refills one every 12s.
	if r.Allowed || r.Remaining != 0 || r.RetryAfter <= 11*time.Second || r.RetryAfter > 12*time.Second {
		t.Fatalf("sixth event: %+v, want refused for about 12s", r)
	}
	if r.Refused != (Key{"b", "k"}) {
		t.Errorf("refused key = %+v", r.Refused)
	}
	var lim *Limited
	if err := r.Err(); !errors.As(err, &lim) || !errors.Is(err, ErrLimited) || lim.RetryAfter != r.RetryAfter {
		t.Errorf("Err() = %v, want a *Limited that is ErrLimited", err)
	}
	if r, _ := l.Allow(ctx, "b", "other"); !r.Allowed || r.Remaining != 4 {
		t.Errorf("another key shares the budget: %+v", r)
	}
}

// TestWindowRefills waits out the retry-after the limiter gives, then a
// whole window.
func TestWindowRefills(t *testing.T) {
	ctx := testContext(t)
	l := newLimiter(t, redistest.Client(t), map[string]Budget{"b": {3, 600 * time.Millisecond}})
	take := func(want bool) Result {
		t.Helper()
		r, err := l.Allow(ctx, "b", "k")
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed != want {
			t.Fatalf("allowed = %v, want %v: %+v", r.Allowed, want, r)
		}
		return r
	}
	for range 3 {
		take(true)
	}
	r := take(false)
	if r.RetryAfter <= 0 || r.RetryAfter > 200*time.Millisecond {
		t.Fatalf("retry after %s, want at most one interval (200ms)", r.RetryAfter)
	}
	time.Sleep(r.RetryAfter / 2)
	take(false)
	time.Sleep(r.RetryAfter/2 + 5*time.Millisecond)
	take(true)
	take(false)

	time.Sleep(600 * time.Millisecond)
	for range 3 {
		take(true)
	}
	take(false)
}

func TestCheckChargesNothing(t *testing.T) {
	ctx := testContext(t)
	l := newLimiter(t, redistest.Client(t), map[string]Budget{"fail": {2, time.Minute}})
	for range 10 {
		if r, err := l.Check(ctx, "fail", "k"); err != nil || !r.Allowed || r.Remaining != 2 {
			t.Fatalf("check: %+v %v", r, err)
		}
	}
	l.Charge(ctx, Key{"fail", "k"})
	l.Charge(ctx, Key{"fail", "k"})
	if r, _ := l.Check(ctx, "fail", "k"); r.Allowed || r.RetryAfter <= 29*time.Second {
		t.Fatalf("check after the budget is spent: %+v, want refused for about 30s", r)
	}
}

// TestTakeIsAllOrNothing: a refused Take charges none of its keys.
func TestTakeIsAllOrNothing(t *testing.T) {
	ctx := testContext(t)
	l := newLimiter(t, redistest.Client(t), map[string]Budget{
		"attempt": {10, time.Minute}, "fail": {1, time.Minute},
	})
	a, f := Key{"attempt", "k"}, Key{"fail", "k"}
	if r, err := l.Take(ctx, []Key{a}, []Key{f}); err != nil || !r.Allowed || r.Remaining != 1 {
		t.Fatalf("first take: %+v %v, want allowed, tightest key (the failure budget) 1 left", r, err)
	}
	l.Charge(ctx, f)
	for range 5 {
		r, err := l.Take(ctx, []Key{a}, []Key{f})
		if err != nil || r.Allowed || r.Refused != f {
			t.Fatalf("take with the failure budget spent: %+v %v", r, err)
		}
	}
	if r, _ := l.Check(ctx, "attempt", "k"); r.Remaining != 9 {
		t.Errorf("refused takes were charged: %d attempts left, want 9", r.Remaining)
	}
}

// TestChargeEach charges every key with room and leaves a spent one.
func TestChargeEach(t *testing.T) {
	ctx := testContext(t)
	l := newLimiter(t, redistest.Client(t), map[string]Budget{"a": {1, time.Minute}, "b": {3, time.Minute}})
	ka, kb := Key{"a", "x"}, Key{"b", "x"}
	l.Charge(ctx, ka)
	before, _ := l.Check(ctx, "a", "x")
	r, err := l.Charge(ctx, ka, kb)
	if err != nil || r.Allowed || r.Refused != ka {
		t.Fatalf("charge: %+v %v, want a reported as refused", r, err)
	}
	after, _ := l.Check(ctx, "a", "x")
	if after.RetryAfter > before.RetryAfter {
		t.Errorf("a spent budget was charged further: retry %s -> %s", before.RetryAfter, after.RetryAfter)
	}
	if r, _ := l.Check(ctx, "b", "x"); r.Remaining != 2 {
		t.Errorf("b has %d left, want 2", r.Remaining)
	}
}

// TestConcurrentProcesses: many goroutines over several clients (as
// several API processes would be) never admit more than the budget.
func TestConcurrentProcesses(t *testing.T) {
	ctx := testContext(t)
	addr := redistest.Socket(t)
	const processes, goroutines, each, budget = 4, 25, 8, 50
	var allowed, refused atomic.Int64
	var wg sync.WaitGroup
	for range processes {
		rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: addr, PoolSize: goroutines})
		t.Cleanup(func() { rdb.Close() })
		l := newLimiter(t, rdb, map[string]Budget{"b": {budget, time.Minute}})
		for range goroutines {
			wg.Go(func() {
				for range each {
					r, err := l.Allow(ctx, "b", "shared")
					if err != nil {
						t.Error(err)
						return
					}
					if r.Allowed {
						allowed.Add(1)
					} else {
						refused.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	if allowed.Load() != budget || refused.Load() != processes*goroutines*each-budget {
		t.Fatalf("allowed %d, refused %d of %d; want exactly %d allowed", allowed.Load(), refused.Load(), processes*goroutines*each, budget)
	}
}

// TestKeysExpire: a key lives only until its budget is whole again.
func TestKeysExpire(t *testing.T) {
	ctx := testContext(t)
	rdb := redistest.Client(t)
	l := newLimiter(t, rdb, map[string]Budget{"b": {10, time.Minute}})
	for range 3 {
		l.Allow(ctx, "b", "k")
	}
	ttl, err := rdb.PTTL(ctx, "test:ratelimit:b:k").Result()
	if err != nil {
		t.Fatal(err)
	}
	// Three events of 6s each.
	if ttl <= 17*time.Second || ttl > 18*time.Second+time.Millisecond {
		t.Errorf("ttl = %s, want about 18s", ttl)
	}
	l.Check(ctx, "b", "never-charged")
	if n, _ := rdb.Exists(ctx, "test:ratelimit:b:never-charged").Result(); n != 0 {
		t.Error("a check wrote a key")
	}
}

func TestUnknownBucketAndBadBudget(t *testing.T) {
	ctx := testContext(t)
	rdb := redistest.Client(t)
	l := newLimiter(t, rdb, map[string]Budget{"b": {1, time.Minute}})
	if _, err := l.Allow(ctx, "nope", "k"); !errors.Is(err, ErrUnknownBucket) {
		t.Errorf("err = %v, want ErrUnknownBucket", err)
	}
	for _, b := range []Budget{{}, {0, time.Minute}, {1000, time.Microsecond}} {
		if _, err := New(Options{Redis: rdb, Buckets: map[string]Budget{"b": b}}); !errors.Is(err, ErrBadBudget) {
			t.Errorf("New with %+v: %v, want ErrBadBudget", b, err)
		}
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without redis succeeded")
	}
}

func TestRetrySeconds(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		0: time.Second, time.Millisecond: time.Second, time.Second: time.Second,
		1001 * time.Millisecond: 2 * time.Second, 90 * time.Second: 90 * time.Second,
	} {
		if got := RetrySeconds(in); got != want {
			t.Errorf("RetrySeconds(%s) = %s, want %s", in, got, want)
		}
	}
}
