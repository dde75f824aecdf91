package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/scheduler"
)

// Summary is the listing view of a session, kept in one Redis hash so that
// a filtered, sorted page over every session is one round trip.
type Summary struct {
	ID        string          `json:"id"`
	Email     string          `json:"email"`
	ExamID    string          `json:"exam_id"`
	Status    scheduler.State `json:"status"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
	Deadline  time.Time       `json:"deadline,omitzero"`
}

func summaryOf(s *Session) Summary {
	return Summary{ID: s.ID, Email: s.Email, ExamID: s.ExamID, Status: s.Status, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, Deadline: s.Deadline}
}

// index brings every Redis key derived from sess up to date in one
// transaction.
func (s *Store) index(ctx context.Context, sess *Session) error {
	sum, err := json.Marshal(summaryOf(sess))
	if err != nil {
		return fmt.Errorf("encode summary: %w", err)
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.key("idx", "summary"), sess.ID, sum)
		p.ZAdd(ctx, s.key("idx", "created"), redis.Z{Score: float64(sess.CreatedAt.UnixMilli()), Member: sess.ID})
		for _, h := range sess.TokenHashes {
			if sess.Status.Terminal() {
				p.Del(ctx, s.key("token", h))
			} else {
				p.Set(ctx, s.key("token", h), sess.ID, 0)
			}
		}
		// Deadlines of sessions a candidate is still working in, for the
		// expiry sweep.
		if sess.Status.Open() && !sess.Deadline.IsZero() {
			p.ZAdd(ctx, s.key("idx", "deadline"), redis.Z{Score: float64(sess.Deadline.UnixMilli()), Member: sess.ID})
		} else {
			p.ZRem(ctx, s.key("idx", "deadline"), sess.ID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("index session %s: %w", sess.ID, err)
	}
	if !sess.Status.Open() {
		// A closed session no longer answers to its email's login.
		s.rdb.Eval(ctx, `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`,
			[]string{s.key("email", sess.Email)}, sess.ID)
	}
	return nil
}

// ListQuery selects a page of sessions.
type ListQuery struct {
	// Status keeps only sessions in one of these states; empty keeps all.
	Status []scheduler.State
	// Search matches a substring of the email or a prefix of the id.
	Search string
	// Sort is created (default), updated, email, status or deadline.
	Sort   string
	Desc   bool
	Offset int
	Limit  int // default 50, at most 500
}

// ListResult is one page and the number of sessions that matched.
type ListResult struct {
	Total    int       `json:"total"`
	Offset   int       `json:"offset"`
	Limit    int       `json:"limit"`
	Sessions []Summary `json:"sessions"`
}

// ErrBadQuery is returned for an unknown sort key or status.
var ErrBadQuery = errors.New("bad list query")

// SortKeys are the accepted ListQuery.Sort values.
var SortKeys = []string{"created", "updated", "email", "status", "deadline"}

// List answers a filtered, searched, sorted page of sessions.
func (s *Store) List(ctx context.Context, q ListQuery) (ListResult, error) {
	if q.Limit <= 0 {
		q.Limit = 50
	}
	if q.Limit > 500 {
		q.Limit = 500
	}
	if q.Offset < 0 {
		q.Offset = 0
	}
	if q.Sort == "" {
		q.Sort = "created"
	}
	var less func(a, b *Summary) bool
	switch q.Sort {
	case "created":
		less = func(a, b *Summary) bool { return a.CreatedAt.Before(b.CreatedAt) }
	case "updated":
		less = func(a, b *Summary) bool { return a.UpdatedAt.Before(b.UpdatedAt) }
	case "email":
		less = func(a, b *Summary) bool { return a.Email < b.Email }
	case "status":
		less = func(a, b *Summary) bool { return a.Status < b.Status }
	case "deadline":
		less = func(a, b *Summary) bool { return a.Deadline.Before(b.Deadline) }
	default:
		return ListResult{}, fmt.Errorf("sort %q: %w", q.Sort, ErrBadQuery)
	}
	want := map[scheduler.State]bool{}
	for _, st := range q.Status {
		if !st.Valid() {
			return ListResult{}, fmt.Errorf("status %q: %w", st, ErrBadQuery)
		}
		want[st] = true
	}
	search := strings.ToLower(strings.TrimSpace(q.Search))

	raw, err := s.rdb.HGetAll(ctx, s.key("idx", "summary")).Result()
	if err != nil {
		return ListResult{}, fmt.Errorf("list sessions: %w", err)
	}
	rows := make([]Summary, 0, len(raw))
	for _, v := range raw {
		var sum Summary
		if err := json.Unmarshal([]byte(v), &sum); err != nil {
			continue
		}
		if len(want) > 0 && !want[sum.Status] {
			continue
		}
		if search != "" && !strings.Contains(sum.Email, search) && !strings.HasPrefix(sum.ID, search) {
			continue
		}
		rows = append(rows, sum)
	}
	sort.Slice(rows, func(i, j int) bool {
		a, b := &rows[i], &rows[j]
		if less(a, b) == less(b, a) { // equal keys: newest first, then id, for a stable order
			if !a.CreatedAt.Equal(b.CreatedAt) {
				return a.CreatedAt.After(b.CreatedAt) != q.Desc
			}
			return (a.ID < b.ID) != q.Desc
		}
		return less(a, b) != q.Desc
	})
	res := ListResult{Total: len(rows), Offset: q.Offset, Limit: q.Limit, Sessions: []Summary{}}
	if q.Offset < len(rows) {
		end := min(q.Offset+q.Limit, len(rows))
		res.Sessions = rows[q.Offset:end]
	}
	return res, nil
}

// DueDeadlines lists open sessions whose deadline is at or before now.
func (s *Store) DueDeadlines(ctx context.Context, now time.Time, limit int64) ([]string, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, s.key("idx", "deadline"), &redis.ZRangeBy{
		Min: "-inf", Max: fmt.Sprint(now.UnixMilli()), Count: limit,
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("list due deadlines: %w", err)
	}
	return ids, nil
}

// Known reports whether a record exists for the session id, in Redis or on
// disk. The reaper asks before removing a lab.
func (s *Store) Known(ctx context.Context, id string) (bool, error) {
	p, err := s.Path(id, metadataFile)
	if err != nil {
		return false, nil
	}
	if _, err := os.Stat(p); err == nil {
		return true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("stat session %s: %w", id, err)
	}
	return false, nil
}

// Rebuild re-creates the Redis index from the session files: after Redis
// lost its data, or to repair drift. It returns how many sessions it indexed.
func (s *Store) Rebuild(ctx context.Context) (int, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "sessions"))
	if err != nil {
		return 0, fmt.Errorf("rebuild index: %w", err)
	}
	n := 0
	for _, e := range entries {
		if !e.IsDir() || !jobspecs.ValidSessionID(e.Name()) {
			continue
		}
		sess, err := s.Get(ctx, e.Name())
		if err != nil {
			continue
		}
		if err := s.index(ctx, sess); err != nil {
			return n, err
		}
		if !sess.Status.Terminal() {
			s.rdb.SetNX(ctx, s.key("short", sess.Short), sess.ID, 0)
		}
		if sess.Status.Open() {
			s.rdb.SetNX(ctx, s.key("email", sess.Email), sess.ID, 0)
		}
		if err := s.reindexAnswers(ctx, sess.ID); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Delete removes a session's record and its index entries: the retention
// policy's last step. The caller has made sure no lab remains.
func (s *Store) Delete(ctx context.Context, sess *Session) error {
	dir, err := s.SessionDir(sess.ID)
	if err != nil {
		return err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, s.key("idx", "summary"), sess.ID)
		p.ZRem(ctx, s.key("idx", "created"), sess.ID)
		p.ZRem(ctx, s.key("idx", "deadline"), sess.ID)
		p.Del(ctx, s.key("answers", sess.ID))
		for _, h := range sess.TokenHashes {
			p.Del(ctx, s.key("token", h))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("unindex session %s: %w", sess.ID, err)
	}
	// Rename first so a half-deleted folder never looks like a session.
	trash := filepath.Join(s.dir, "sessions", ".deleted-"+sess.ID)
	if err := os.Rename(dir, trash); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete session %s: %w", sess.ID, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("delete session %s: %w", sess.ID, err)
	}
	return nil
}
