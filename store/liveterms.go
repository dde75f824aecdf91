package store

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Live terminals: every relay notes the shells it runs per session, so
// that a worker about to grade a submitted lab can ask every relay to end
// the session's terminals and wait until none is left — a candidate must
// not change the lab while its checks run.

// liveTermTTL bounds how long the note of a shell outlives a relay that
// crashed without removing it; a relay renews its notes while they live.
const liveTermTTL = 2 * time.Minute

// TerminalOpened notes that a relay runs the shell tag in a session.
func (s *Store) TerminalOpened(ctx context.Context, id, tag string) error {
	if _, err := s.SessionDir(id); err != nil {
		return err
	}
	key := s.key("terms", id)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, key, redis.Z{Score: float64(s.now().Add(liveTermTTL).UnixMilli()), Member: tag})
		p.Expire(ctx, key, liveTermTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("note terminal of %s: %w", id, err)
	}
	return nil
}

// TerminalClosed removes the note of a shell that ended.
func (s *Store) TerminalClosed(ctx context.Context, id, tag string) error {
	if _, err := s.SessionDir(id); err != nil {
		return err
	}
	if err := s.rdb.ZRem(ctx, s.key("terms", id), tag).Err(); err != nil {
		return fmt.Errorf("remove terminal of %s: %w", id, err)
	}
	return nil
}

// LiveTerminals counts the shells relays run in the session, leaving out
// notes a crashed relay stopped renewing.
func (s *Store) LiveTerminals(ctx context.Context, id string) (int, error) {
	if _, err := s.SessionDir(id); err != nil {
		return 0, err
	}
	n, err := s.rdb.ZCount(ctx, s.key("terms", id), fmt.Sprint(s.now().UnixMilli()), "+inf").Result()
	if err != nil {
		return 0, fmt.Errorf("count terminals of %s: %w", id, err)
	}
	return int(n), nil
}

// EndTerminals asks every relay to end the session's shells now, rather
// than when it next looks at the session.
func (s *Store) EndTerminals(ctx context.Context, id string) error {
	if _, err := s.SessionDir(id); err != nil {
		return err
	}
	if err := s.rdb.Publish(ctx, s.key("terms-end"), id).Err(); err != nil {
		return fmt.Errorf("end terminals of %s: %w", id, err)
	}
	return nil
}

// EndTerminalsRequests delivers the ids EndTerminals names until ctx
// ends; the channel closes then.
func (s *Store) EndTerminalsRequests(ctx context.Context) <-chan string {
	out := make(chan string, 16)
	sub := s.rdb.Subscribe(ctx, s.key("terms-end"))
	go func() {
		defer close(out)
		defer sub.Close()
		ch := sub.Channel()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				select {
				case out <- m.Payload:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// WaitTerminalsClosed asks the relays to end the session's shells and
// waits until none is noted, or for at most wait. It reports whether they
// all ended.
func (s *Store) WaitTerminalsClosed(ctx context.Context, id string, wait time.Duration) (bool, error) {
	if err := s.EndTerminals(ctx, id); err != nil {
		return false, err
	}
	deadline := time.Now().Add(wait)
	for {
		n, err := s.LiveTerminals(ctx, id)
		if err != nil {
			return false, err
		}
		if n == 0 {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
