package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/auth"
)

// ErrBusy is returned by TryLock when another process holds the lock.
var ErrBusy = errors.New("another operation on the session is running")

// TryLock takes a named lock on a session for a long operation (writing a
// snapshot), without waiting: a held lock is ErrBusy, so a queued task
// fails and is retried later rather than blocking a worker. ttl bounds how
// long a crashed holder keeps it; unlock releases only this holder's lock.
func (s *Store) TryLock(ctx context.Context, name, id string, ttl time.Duration) (unlock func(), err error) {
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
	return func() {
		s.rdb.Eval(context.WithoutCancel(ctx), `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`, []string{key}, tok)
	}, nil
}
