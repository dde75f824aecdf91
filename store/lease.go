package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/auth"
)

// Work leases: a worker running an operation on a session (a provision)
// says so in Redis for a few seconds at a time and renews it while it
// works. A lease that runs out means its worker is gone — killed, or cut
// off from Redis — and a sweep can start the operation afresh at once,
// without waiting for the queue to give the dead worker's task up (asynq
// does so only after its own, much longer, lease and a recoverer pass).
//
// Per operation there is one sorted set of the sessions with a lease,
// scored by when it runs out, and one hash of who holds each. Expiry is
// read from the Redis server's clock, so workers whose clocks disagree
// still agree on which leases ran out.
//
// A lease is not a lock: taking one replaces whatever lease the session
// had for the operation, because the one taking it is the run the
// session's record names now. The run it replaced learns so when it next
// renews, and stops. Only a run of an earlier round than the holder's is
// refused (ErrLaterRound): it read the record before a restart moved the
// session on, and must not stop the run that carries it now.

// takeLeaseScript: KEYS zset, owners; ARGV id, owner, ttl ms, round.
// Returns 0, taking nothing, when the lease is a later round's.
var takeLeaseScript = redis.NewScript(`
local cur = redis.call("HGET", KEYS[2], ARGV[1])
if cur then
  local r = tonumber(string.match(cur, "|(%d+)$"))
  if r and r > tonumber(ARGV[4]) then return 0 end
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("HSET", KEYS[2], ARGV[1], ARGV[2])
redis.call("ZADD", KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1`)

// renewLeaseScript: as take, only while the owner is still ARGV[2].
var renewLeaseScript = redis.NewScript(`
if redis.call("HGET", KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZADD", KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1`)

// releaseLeaseScript: KEYS zset, owners; ARGV id, owner.
var releaseLeaseScript = redis.NewScript(`
if redis.call("HGET", KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call("HDEL", KEYS[2], ARGV[1])
redis.call("ZREM", KEYS[1], ARGV[1])
return 1`)

// expiredLeasesScript: KEYS zset, owners; ARGV limit. Returns id, owner
// pairs of the leases run out by the server's clock. An entry whose owner
// is missing (a write cut short) is returned with an empty owner.
var expiredLeasesScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call("HGET", KEYS[2], id) or ""
end
return out`)

// claimLeaseScript: KEYS zset, owners; ARGV id, old owner, new owner, ttl
// ms. Takes over a lease only if it is still the one that ran out.
var claimLeaseScript = redis.NewScript(`
local score = redis.call("ZSCORE", KEYS[1], ARGV[1])
if not score then return 0 end
if (redis.call("HGET", KEYS[2], ARGV[1]) or "") ~= ARGV[2] then return 0 end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) > now then return 0 end
redis.call("HSET", KEYS[2], ARGV[1], ARGV[3])
redis.call("ZADD", KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
return 1`)

// Lease is one holder's claim that it is running Op on session ID, in
// the session's provision round Round (or whatever generation the
// operation counts).
type Lease struct {
	Op    string
	ID    string
	Round int
	TTL   time.Duration
	owner string
	st    *Store
}

// ExpiredLease is a lease whose holder stopped renewing it.
type ExpiredLease struct {
	Op    string
	ID    string
	Round int
	owner string
}

func (s *Store) leaseKeys(op string) []string {
	return []string{s.key("lease", op), s.key("lease", op, "owner")}
}

func newOwner(round int) string {
	tok, _ := auth.NewToken()
	return tok + "|" + strconv.Itoa(round)
}

func ownerRound(owner string) int {
	_, r, _ := strings.Cut(owner, "|")
	n, _ := strconv.Atoi(r)
	return n
}

// ErrLaterRound refuses a lease to a run of an earlier round than the
// lease's holder.
var ErrLaterRound = errors.New("a later round of the operation holds the lease")

// TakeLease says this process runs op on session id (in round) from now
// on, for ttl unless renewed. It replaces any lease the session had for
// op in the same or an earlier round; a later round's it leaves, and
// answers ErrLaterRound.
func (s *Store) TakeLease(ctx context.Context, op, id string, round int, ttl time.Duration) (*Lease, error) {
	if _, err := s.SessionDir(id); err != nil {
		return nil, err
	}
	l := &Lease{Op: op, ID: id, Round: round, TTL: ttl, owner: newOwner(round), st: s}
	n, err := takeLeaseScript.Run(ctx, s.rdb, s.leaseKeys(op), id, l.owner, ttl.Milliseconds(), round).Int()
	if err != nil {
		return nil, fmt.Errorf("take %s lease of %s: %w", op, id, err)
	}
	if n != 1 {
		return nil, fmt.Errorf("take %s lease of %s in round %d: %w", op, id, round, ErrLaterRound)
	}
	return l, nil
}

// Renew extends the lease by its TTL from now. held is false when another
// run took the session's lease over (or a sweep found it run out and
// claimed it): the holder should stop.
func (l *Lease) Renew(ctx context.Context) (held bool, err error) {
	n, err := renewLeaseScript.Run(ctx, l.st.rdb, l.st.leaseKeys(l.Op), l.ID, l.owner, l.TTL.Milliseconds()).Int()
	if err != nil {
		return true, fmt.Errorf("renew %s lease of %s: %w", l.Op, l.ID, err)
	}
	return n == 1, nil
}

// Release ends the lease: the operation's run ended, however it did. A
// lease taken over by another is left to its new holder.
func (l *Lease) Release(ctx context.Context) error {
	if err := releaseLeaseScript.Run(ctx, l.st.rdb, l.st.leaseKeys(l.Op), l.ID, l.owner).Err(); err != nil {
		return fmt.Errorf("release %s lease of %s: %w", l.Op, l.ID, err)
	}
	return nil
}

// ExpiredLeases lists up to limit leases of op that ran out: their
// holders are gone.
func (s *Store) ExpiredLeases(ctx context.Context, op string, limit int) ([]ExpiredLease, error) {
	vals, err := expiredLeasesScript.Run(ctx, s.rdb, s.leaseKeys(op), limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("list run-out %s leases: %w", op, err)
	}
	out := make([]ExpiredLease, 0, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		out = append(out, ExpiredLease{Op: op, ID: vals[i], Round: ownerRound(vals[i+1]), owner: vals[i+1]})
	}
	return out, nil
}

// ClaimLease takes over a run-out lease for ttl, so that of several
// sweeps one acts on it; ok is false when another claimed it first or its
// holder renewed it after all. The claimer releases the lease when done
// (the session's next run takes a lease of its own); should the claimer
// die, the claim runs out in turn and a later sweep acts.
func (s *Store) ClaimLease(ctx context.Context, e ExpiredLease, ttl time.Duration) (l *Lease, ok bool, err error) {
	l = &Lease{Op: e.Op, ID: e.ID, Round: e.Round, TTL: ttl, owner: newOwner(e.Round), st: s}
	n, err := claimLeaseScript.Run(ctx, s.rdb, s.leaseKeys(e.Op), e.ID, e.owner, l.owner, ttl.Milliseconds()).Int()
	if err != nil {
		return nil, false, fmt.Errorf("claim %s lease of %s: %w", e.Op, e.ID, err)
	}
	if n != 1 {
		return nil, false, nil
	}
	return l, true, nil
}

// HasLease reports whether session id holds a lease of op, run out or
// not.
func (s *Store) HasLease(ctx context.Context, op, id string) (bool, error) {
	err := s.rdb.ZScore(ctx, s.leaseKeys(op)[0], id).Err()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the %s lease of %s: %w", op, id, err)
	}
	return true, nil
}

// Leased lists the sessions that hold a lease of op, run out or not: a
// session whose operation ended cleanly holds none.
func (s *Store) Leased(ctx context.Context, op string) ([]string, error) {
	ids, err := s.rdb.ZRange(ctx, s.leaseKeys(op)[0], 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("list %s leases: %w", op, err)
	}
	return ids, nil
}
