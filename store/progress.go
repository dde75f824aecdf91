package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/lab"
)

// Node progress: while a worker changes a lab (a provision, a fresh lab
// for a lost one, a node reset, a review lab coming up) it reads the
// runtime's node states every second or so and leaves them here, one
// small key per lab, so that every API process can show them node by
// node without asking the runtime itself. The record's Nodes are written
// once the change is over and are what counts after it: the worker clears
// the key then. The key's TTL forgets the progress of a worker that died
// halfway.

// ProgressTTL is how long node progress outlives its last write.
const ProgressTTL = 20 * time.Second

// Progress is a lab's node states as a worker last read them.
type Progress struct {
	Nodes []lab.NodeStatus `json:"nodes"`
	At    time.Time        `json:"at"`
}

func (s *Store) progressKey(id string) (string, error) {
	if !lab.ValidSessionID(id) {
		return "", fmt.Errorf("lab %q: %w", id, ErrBadID)
	}
	return s.key("progress", id), nil
}

// PutProgress records the node states of the lab id (a session's or a
// review lab's) for ProgressTTL.
func (s *Store) PutProgress(ctx context.Context, id string, nodes []lab.NodeStatus) error {
	key, err := s.progressKey(id)
	if err != nil {
		return err
	}
	b, err := json.Marshal(Progress{Nodes: nodes, At: s.now().UTC()})
	if err != nil {
		return fmt.Errorf("encode progress of %s: %w", id, err)
	}
	if err := s.rdb.Set(ctx, key, b, ProgressTTL).Err(); err != nil {
		return fmt.Errorf("record progress of %s: %w", id, err)
	}
	return nil
}

// ReadProgress returns the lab's node progress, or nil when no worker is
// changing the lab.
func (s *Store) ReadProgress(ctx context.Context, id string) (*Progress, error) {
	key, err := s.progressKey(id)
	if err != nil {
		return nil, err
	}
	b, err := s.rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read progress of %s: %w", id, err)
	}
	var p Progress
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode progress of %s: %w", id, err)
	}
	return &p, nil
}

// ClearProgress forgets the lab's node progress: the record holds its
// nodes now.
func (s *Store) ClearProgress(ctx context.Context, id string) error {
	key, err := s.progressKey(id)
	if err != nil {
		return err
	}
	if err := s.rdb.Del(ctx, key).Err(); err != nil {
		return fmt.Errorf("clear progress of %s: %w", id, err)
	}
	return nil
}
