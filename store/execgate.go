package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/lab"
)

// The exec gate (lab.ExecGate) across processes: a relay hanging up a
// terminal and a worker pausing the lab for its capture are apart, and
// only what they share, Redis, can keep an exec start out of a freeze.
// Per lab, exec-starts is a sorted set of the starts under way, each
// scored with when its note lapses, and the freeze in progress holds the
// record lock "frozen" of the lab (lockFor), renewed while it holds it.

// Named intervals of the gate.
const (
	// freezeHold bounds how long one capture keeps its lab marked
	// frozen, past an archive task's own timeout; a mark whose holder
	// died lapses within lockLease.
	freezeHold     = time.Hour
	gatePoll       = 50 * time.Millisecond // how often a waiter looks again
	gateCallBudget = 5 * time.Second       // one Redis call of a note's end
)

var _ lab.ExecGate = (*Store)(nil)

// beginExecScript notes a start unless the lab is frozen: one step, so a
// freeze that has set its mark sees every start noted before it. Notes
// lapse by Redis's clock, the one every process sees alike.
var beginExecScript = redis.NewScript(`
if redis.call("exists", KEYS[1]) == 1 then return 0 end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("zadd", KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call("pexpire", KEYS[2], ARGV[2])
return 1`)

// pendingStartsScript drops the lapsed notes and counts the others.
var pendingStartsScript = redis.NewScript(`
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("zremrangebyscore", KEYS[1], "-inf", now)
return redis.call("zcard", KEYS[1])`)

// gateErr is err, or the end of ctx when that is what cut a call short:
// a deadline met mid-call shows as an i/o timeout of the connection.
func gateErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// gateKeys are lab labID's keys: frozen is the one Freeze's lockFor
// takes, starts the notes of exec starts.
func (s *Store) gateKeys(labID string) (frozen, starts string, err error) {
	if !lab.ValidSessionID(labID) {
		return "", "", fmt.Errorf("exec gate: invalid lab id %q", labID)
	}
	return s.key("lock", "frozen", labID), s.key("exec-starts", labID), nil
}

// BeginExec implements lab.ExecGate.
func (s *Store) BeginExec(ctx context.Context, labID string) (func(bool), error) {
	frozen, starts, err := s.gateKeys(labID)
	if err != nil {
		return nil, err
	}
	member, _ := auth.NewToken()
	err = pollEvery(ctx, gatePoll, func() (bool, error) {
		ok, err := beginExecScript.Run(ctx, s.rdb, []string{frozen, starts}, member, s.execTTL.Milliseconds()).Int()
		return ok == 1, err
	})
	if err != nil {
		return nil, fmt.Errorf("exec in lab %s: waiting for its capture to end: %w", labID, gateErr(ctx, err))
	}
	var once sync.Once
	return func(settled bool) {
		if !settled {
			return // the note lapses at its score (Options.ExecStartTTL)
		}
		once.Do(func() {
			// The caller's context may be over (a start cut off, then
			// learnt to be over): the note goes all the same.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), gateCallBudget)
			defer cancel()
			if err := s.rdb.ZRem(ctx, starts, member).Err(); err != nil {
				s.log.Warn("end the note of an exec start; it lapses on its own", "lab", labID, "err", err)
			}
		})
	}, nil
}

// Freeze implements lab.ExecGate. A second freeze of a frozen lab waits
// for the first one's thaw.
func (s *Store) Freeze(ctx context.Context, labID string) (func(), error) {
	_, starts, err := s.gateKeys(labID)
	if err != nil {
		return nil, err
	}
	thaw, err := s.lockFor(ctx, "frozen", labID, freezeHold)
	if err != nil {
		return nil, fmt.Errorf("freeze lab %s: %w", labID, gateErr(ctx, err))
	}
	err = pollEvery(ctx, gatePoll, func() (bool, error) {
		n, err := pendingStartsScript.Run(ctx, s.rdb, []string{starts}).Int()
		return n == 0, err
	})
	if err != nil {
		thaw()
		return nil, fmt.Errorf("freeze lab %s: waiting for exec starts: %w", labID, gateErr(ctx, err))
	}
	return thaw, nil
}

// pollEvery calls done every interval until it reports true, fails, or
// ctx ends.
func pollEvery(ctx context.Context, every time.Duration, done func() (bool, error)) error {
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}
