// Package ratelimit keeps request budgets in Redis, so that every API
// process charges the same counters, and finds the client address they
// are keyed by behind trusted proxies.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors of the limiter.
var (
	// ErrLimited is what a refusal wraps (see Limited).
	ErrLimited = errors.New("too many attempts")
	// ErrUnknownBucket names a bucket the limiter was not given.
	ErrUnknownBucket = errors.New("unknown rate limit bucket")
)

// Limited is the error for a refused request: which budget ran out and
// how long until it has room again.
type Limited struct {
	Key        Key
	RetryAfter time.Duration
}

func (e *Limited) Error() string {
	return fmt.Sprintf("too many attempts: try again in %s", RetrySeconds(e.RetryAfter))
}

// Is makes errors.Is(err, ErrLimited) true for every refusal.
func (e *Limited) Is(target error) bool { return target == ErrLimited }

// RetrySeconds rounds a wait up to whole seconds, at least one: the
// resolution of an HTTP Retry-After header.
func RetrySeconds(d time.Duration) time.Duration {
	s := time.Duration(math.Ceil(d.Seconds())) * time.Second
	if s < time.Second {
		s = time.Second
	}
	return s
}

// Key is one bucket's counter for one subject (an address, an account).
type Key struct {
	Bucket string
	ID     string
}

// Result is the outcome of one call.
type Result struct {
	// Allowed is false when a key was out of budget.
	Allowed bool
	// Remaining is how many more events the tightest of the keys admits.
	Remaining int
	// RetryAfter, when refused, is how long until every refusing key has
	// room for one more event.
	RetryAfter time.Duration
	// Refused is the first key that was out of budget.
	Refused Key
}

// Err is nil when allowed and a *Limited otherwise.
func (r Result) Err() error {
	if r.Allowed {
		return nil
	}
	return &Limited{Key: r.Refused, RetryAfter: r.RetryAfter}
}

// Options configure a Limiter.
type Options struct {
	// Redis keeps the counters; required. Every process that shares the
	// budgets must use the same server (or cluster) and Prefix.
	Redis redis.Scripter
	// Prefix starts every key the limiter writes; "" is none. Keys are
	// {Prefix}ratelimit:{bucket}:{id}.
	Prefix string
	// Buckets are the budgets by name; calls name one of them.
	Buckets map[string]Budget
}

// Limiter charges events against named budgets kept in Redis. Each call
// is one round trip: one script that reads and updates every key it
// names atomically, with Redis's clock, so that API processes on hosts
// whose clocks differ still agree.
//
// The counters are GCRA (the generic cell rate algorithm): one value per
// key, the time at which its budget will be whole again. An event costs
// Window/Limit of it, and is refused when that would put the time more
// than Window ahead of now. Memory is one small string per active key,
// expiring when the budget is whole again, however many events it saw.
type Limiter struct {
	rdb     redis.Scripter
	prefix  string
	buckets map[string]Budget
}

// New checks the budgets and returns a Limiter.
func New(o Options) (*Limiter, error) {
	if o.Redis == nil {
		return nil, errors.New("new rate limiter: redis is required")
	}
	buckets := make(map[string]Budget, len(o.Buckets))
	for name, b := range o.Buckets {
		if !b.valid() {
			return nil, fmt.Errorf("new rate limiter: bucket %q: %w: %s", name, ErrBadBudget, b)
		}
		buckets[name] = b
	}
	return &Limiter{rdb: o.Redis, prefix: o.Prefix + "ratelimit:", buckets: buckets}, nil
}

// Allow charges one event to key's bucket if it has room.
func (l *Limiter) Allow(ctx context.Context, bucket, id string) (Result, error) {
	return l.Take(ctx, []Key{{bucket, id}}, nil)
}

// Check reports whether key's bucket has room for one more event, and
// charges nothing: a failure budget is checked before an attempt and
// charged (Charge) only when the attempt fails.
func (l *Limiter) Check(ctx context.Context, bucket, id string) (Result, error) {
	return l.Take(ctx, nil, []Key{{bucket, id}})
}

// Take charges one event to every charge key if every charge and check
// key has room for one; otherwise it charges nothing and reports the
// refusal. A refused attempt thus costs no budget, and one that is let in
// is charged to all its keys at once. The keys must be distinct.
func (l *Limiter) Take(ctx context.Context, charge, check []Key) (Result, error) {
	return l.run(ctx, modeAll, charge, check)
}

// Charge charges one event to each key that has room, independently; a
// key already out of budget stays as it is. It is how failures are
// counted once an attempt has been let in and turned out wrong.
func (l *Limiter) Charge(ctx context.Context, keys ...Key) (Result, error) {
	return l.run(ctx, modeEach, keys, nil)
}

const (
	modeAll  = "all"
	modeEach = "each"
)

func (l *Limiter) run(ctx context.Context, mode string, charge, check []Key) (Result, error) {
	n := len(charge) + len(check)
	if n == 0 {
		return Result{Allowed: true, Remaining: math.MaxInt}, nil
	}
	all := make([]Key, 0, n)
	all = append(append(all, charge...), check...)
	keys := make([]string, n)
	args := make([]any, 1, 1+3*n)
	args[0] = mode
	for i, k := range all {
		b, ok := l.buckets[k.Bucket]
		if !ok {
			return Result{}, fmt.Errorf("rate limit %q: %w", k.Bucket, ErrUnknownBucket)
		}
		keys[i] = l.prefix + k.Bucket + ":" + k.ID
		interval := b.Window.Microseconds() / int64(b.Limit)
		cost := 0
		if i < len(charge) {
			cost = 1
		}
		args = append(args, interval, interval*int64(b.Limit), cost)
	}
	v, err := gcra.Run(ctx, l.rdb, keys, args...).Int64Slice()
	if err != nil {
		return Result{}, fmt.Errorf("rate limit %s: %w", all[0].Bucket, err)
	}
	if len(v) != 3 {
		return Result{}, fmt.Errorf("rate limit %s: script answered %v", all[0].Bucket, v)
	}
	r := Result{Allowed: v[0] == 0, Remaining: int(v[2])}
	if !r.Allowed {
		r.Refused = all[v[0]-1]
		r.RetryAfter = time.Duration(v[1]) * time.Microsecond
	}
	return r, nil
}

// gcra evaluates every key against its budget at Redis's time and writes
// the new times atomically. Times are microseconds.
//
//	KEYS[i]          one counter: the time its budget is whole again
//	ARGV[1]          "all": charge only if no key is refused; "each": charge each key with room
//	ARGV[3i-1..3i+1] the key's interval (window/limit), window, and cost (1, or 0 to only check for room)
//
// It answers {index of the first refused key or 0, µs until every refused
// key has room, events the tightest key still admits}.
var gcra = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local refused, retry, remaining = 0, 0, -1
local writes = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3*i-1])
  local window = tonumber(ARGV[3*i])
  local cost = tonumber(ARGV[3*i+1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local after = tat + interval
  local wait = after - window - now
  if wait > 0 then
    if refused == 0 then refused = i end
    if wait > retry then retry = wait end
    remaining = 0
  else
    local used = tat
    if cost > 0 then
      used = after
      writes[#writes + 1] = {KEYS[i], after}
    end
    local left = math.floor((now + window - used) / interval)
    if remaining < 0 or left < remaining then remaining = left end
  end
end
if mode == 'each' or refused == 0 then
  for _, w in ipairs(writes) do
    redis.call('SET', w[1], string.format('%.0f', w[2]), 'PX', math.floor((w[2] - now) / 1000) + 1)
  end
end
if remaining < 0 then remaining = 0 end
return {refused, retry, remaining}
`)
