package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/auth"
)

// ErrBusy is returned by TryLock when another process holds the lock.
var ErrBusy = errors.New("another operation on the session is running")

// OpLock is a held TryLock.
type OpLock struct {
	st  *Store
	key string
	tok string
	ttl time.Duration
}

var unlockScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`)

var renewLockScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) end return 0`)

// TryLock takes a named lock on a session for a long operation (writing a
// snapshot), without waiting: a held lock is ErrBusy, so a queued task
// fails and is retried later rather than blocking a worker. ttl bounds how
// long a crashed holder keeps it; a holder that works longer renews it
// (Renew). Unlock releases only this holder's lock.
func (s *Store) TryLock(ctx context.Context, name, id string, ttl time.Duration) (*OpLock, error) {
	if _, err := s.SessionDir(id); err != nil {
		return nil, err
	}
	key := s.key("oplock", name, id)
	tok, _ := auth.NewToken()
	ok, err := s.rdb.SetNX(ctx, key, tok, ttl).Result()
	if err != nil {
		return nil, fmt.Errorf("lock %s of %s: %w", name, id, err)
	}
	if !ok {
		return nil, fmt.Errorf("lock %s of %s: %w", name, id, ErrBusy)
	}
	return &OpLock{st: s, key: key, tok: tok, ttl: ttl}, nil
}

// TryLockUnder is TryLock taken by the holder of lease l, for the
// operation l covers: should l run out (its holder gone), whoever claims
// it may free the lock at once (FreeLockOf) rather than wait out ttl.
func (s *Store) TryLockUnder(ctx context.Context, name string, l *Lease, ttl time.Duration) (*OpLock, error) {
	if _, err := s.SessionDir(l.ID); err != nil {
		return nil, err
	}
	key := s.key("oplock", name, l.ID)
	ok, err := s.rdb.SetNX(ctx, key, l.owner, ttl).Result()
	if err != nil {
		return nil, fmt.Errorf("lock %s of %s: %w", name, l.ID, err)
	}
	if !ok {
		return nil, fmt.Errorf("lock %s of %s: %w", name, l.ID, ErrBusy)
	}
	return &OpLock{st: s, key: key, tok: l.owner, ttl: ttl}, nil
}

// FreeLockOf frees the lock name of e's session if the holder of the
// run-out lease e took it (TryLockUnder): that holder is gone, as the
// lease's running out says, and a claimed lease is never renewed by it
// again. It reports whether there was such a lock. Call it only while
// holding the claim of e (ClaimLease), so that the holder cannot come
// back meanwhile.
func (s *Store) FreeLockOf(ctx context.Context, name string, e ExpiredLease) (bool, error) {
	if e.owner == "" {
		return false, nil
	}
	n, err := unlockScript.Run(ctx, s.rdb, []string{s.key("oplock", name, e.ID)}, e.owner).Int()
	if err != nil {
		return false, fmt.Errorf("free lock %s of %s: %w", name, e.ID, err)
	}
	return n == 1, nil
}

// Renew extends the lock by its ttl from now. held is false when the lock
// ran out and may be another's now.
func (l *OpLock) Renew(ctx context.Context) (held bool, err error) {
	n, err := renewLockScript.Run(ctx, l.st.rdb, []string{l.key}, l.tok, l.ttl.Milliseconds()).Int()
	if err != nil {
		return true, fmt.Errorf("renew lock %s: %w", l.key, err)
	}
	return n == 1, nil
}

// Unlock releases the lock if this holder still has it.
func (l *OpLock) Unlock(ctx context.Context) {
	unlockScript.Run(context.WithoutCancel(ctx), l.st.rdb, []string{l.key}, l.tok)
}
