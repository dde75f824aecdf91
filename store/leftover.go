package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/lab"
)

// Leftover is the record of a part of a session's lab that the runtime
// would not remove once the lab's nodes were gone (lab.Leftover): the
// session ended without it, and the reaper tries again until it is gone.
type Leftover struct {
	SessionID string `json:"session_id"`
	// Runtime is the runtime that holds it ("docker", "nomad"); only that
	// runtime's workers retry it.
	Runtime string `json:"runtime"`
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	ID      string `json:"id,omitempty"`
	// Subnet is the IPv4 subnet a network still holds: no new lab is
	// given it while the record stands.
	Subnet    string    `json:"subnet,omitempty"`
	FirstSeen time.Time `json:"first_seen"`
	LastTried time.Time `json:"last_tried"`
	// Attempts counts the removals refused, the first included.
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error"`
}

func (l Leftover) field() string {
	return l.Runtime + "/" + l.SessionID + "/" + l.Kind + "/" + l.Name
}

// leftoverTxRetries bounds the optimistic retries of one NoteLeftovers
// when other writers keep changing the records.
const leftoverTxRetries = 20

// NoteLeftovers records what a removal of the session's lab on runtime
// left behind: found is everything it left, so a record of that session
// and runtime not in found is gone and dropped, one in found counts one
// more attempt, and a new one starts at one. found empty clears the
// session's records. It returns how many records it added and dropped.
func (s *Store) NoteLeftovers(ctx context.Context, runtime, sessionID string, found []lab.Leftover) (added, dropped int, err error) {
	if !lab.ValidSessionID(sessionID) {
		return 0, 0, fmt.Errorf("note leftovers of %q: %w", sessionID, ErrBadID)
	}
	if strings.Contains(runtime, "/") {
		return 0, 0, fmt.Errorf("note leftovers of %s: runtime %q: %w", sessionID, runtime, ErrBadID)
	}
	key := s.key("leftovers")
	now := s.now().UTC()
	prefix := runtime + "/" + sessionID + "/"
	for try := 0; try < leftoverTxRetries; try++ {
		added, dropped = 0, 0
		err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
			all, err := tx.HGetAll(ctx, key).Result()
			if err != nil {
				return err
			}
			old := map[string]Leftover{}
			for f, v := range all {
				if !strings.HasPrefix(f, prefix) {
					continue
				}
				var l Leftover
				if json.Unmarshal([]byte(v), &l) == nil {
					old[f] = l
				} else {
					old[f] = Leftover{} // unreadable: replaced or dropped below
				}
			}
			set := map[string]any{}
			for _, f := range found {
				l := Leftover{SessionID: sessionID, Runtime: runtime, Kind: f.Kind, Name: f.Name}
				prev, ok := old[l.field()]
				delete(old, l.field())
				if ok && prev.Attempts > 0 {
					l.FirstSeen, l.Attempts = prev.FirstSeen, prev.Attempts
				} else {
					l.FirstSeen = now
					added++
				}
				l.ID, l.Subnet, l.LastError, l.LastTried = f.ID, f.Subnet, f.Err, now
				l.Attempts++
				b, err := json.Marshal(l)
				if err != nil {
					return fmt.Errorf("encode leftover: %w", err)
				}
				set[l.field()] = string(b)
			}
			var del []string
			for f := range old {
				del = append(del, f)
			}
			dropped = len(del)
			if len(set) == 0 && len(del) == 0 {
				return nil
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				if len(set) > 0 {
					p.HSet(ctx, key, set)
				}
				if len(del) > 0 {
					p.HDel(ctx, key, del...)
				}
				return nil
			})
			return err
		}, key)
		if !errors.Is(err, redis.TxFailedErr) {
			break
		}
	}
	if err != nil {
		return 0, 0, fmt.Errorf("note leftovers of %s: %w", sessionID, err)
	}
	return added, dropped, nil
}

// Leftovers lists every leftover on record, oldest first.
func (s *Store) Leftovers(ctx context.Context) ([]Leftover, error) {
	all, err := s.rdb.HGetAll(ctx, s.key("leftovers")).Result()
	if err != nil {
		return nil, fmt.Errorf("list leftovers: %w", err)
	}
	out := make([]Leftover, 0, len(all))
	for f, v := range all {
		var l Leftover
		if err := json.Unmarshal([]byte(v), &l); err != nil {
			s.log.Warn("unreadable leftover record", "field", f, "err", err)
			continue
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].FirstSeen.Equal(out[j].FirstSeen) {
			return out[i].FirstSeen.Before(out[j].FirstSeen)
		}
		return out[i].field() < out[j].field()
	})
	return out, nil
}

// SessionLeftovers lists the leftovers of one session's lab, oldest first.
func (s *Store) SessionLeftovers(ctx context.Context, id string) ([]Leftover, error) {
	if !lab.ValidSessionID(id) {
		return nil, fmt.Errorf("leftovers of %q: %w", id, ErrBadID)
	}
	all, err := s.Leftovers(ctx)
	if err != nil {
		return nil, err
	}
	out := []Leftover{}
	for _, l := range all {
		if l.SessionID == id {
			out = append(out, l)
		}
	}
	return out, nil
}

// HeldSubnets lists the subnets leftover networks hold: the engine may
// still hold one even when its network looks gone, so none is handed to a
// new lab while its record stands.
func (s *Store) HeldSubnets(ctx context.Context) ([]string, error) {
	all, err := s.Leftovers(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range all {
		if l.Subnet != "" {
			out = append(out, l.Subnet)
		}
	}
	return out, nil
}
