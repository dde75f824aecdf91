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
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
)

// Summary is the listing view of a session, kept in one Redis hash so that
// a filtered, sorted page over every session is one round trip.
type Summary struct {
	ID        string        `json:"id"`
	Email     string        `json:"email"`
	ExamID    string        `json:"exam_id"`
	Status    session.State `json:"status"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
	Deadline  time.Time     `json:"deadline,omitzero"`
	// LabState is lost or unknown while a ready session's lab is unusable
	// and its clock paused; empty otherwise.
	LabState lab.State `json:"lab_state,omitempty"`
	// Score and MaxScore are the latest grading's with the manual marks;
	// Score is nil until the session is graded or marked.
	Score    *int `json:"score,omitempty"`
	MaxScore int  `json:"max_score,omitempty"`
	// LabID is the session's lab when it is not its own id (a claimed
	// warm lab): the reaper looks it up here.
	LabID string `json:"lab_id,omitempty"`
}

func summaryOf(s *session.Session) Summary {
	return Summary{ID: s.ID, Email: s.Email, ExamID: s.ExamID, Status: s.Status, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, Deadline: s.Deadline,
		LabState: s.Trouble.State, LabID: s.LabID}
}

// index brings every Redis key derived from sess up to date in one
// transaction.
func (s *Store) index(ctx context.Context, sess *session.Session) error {
	sum, err := json.Marshal(summaryOf(sess))
	if err != nil {
		return fmt.Errorf("encode summary: %w", err)
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.key("idx", "summary"), sess.ID, sum)
		p.ZAdd(ctx, s.key("idx", "created"), redis.Z{Score: float64(sess.CreatedAt.UnixMilli()), Member: sess.ID})
		// Tokens outlive the exam so a candidate can still see that their
		// work was received; every write path refuses a closed session.
		for _, h := range sess.TokenHashes {
			p.Set(ctx, s.key("token", h), sess.ID, 0)
		}
		// Deadlines of sessions a candidate is still working in, for the
		// expiry sweep; a paused clock has none until its lab is back.
		if sess.Status.Open() && !sess.Deadline.IsZero() && !sess.Paused() {
			p.ZAdd(ctx, s.key("idx", "deadline"), redis.Z{Score: float64(sess.Deadline.UnixMilli()), Member: sess.ID})
		} else {
			p.ZRem(ctx, s.key("idx", "deadline"), sess.ID)
		}
		s.bumpIndex(ctx, p, sess.ID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("index session %s: %w", sess.ID, err)
	}
	return nil
}

// ListQuery selects a page of sessions.
type ListQuery struct {
	// Status keeps only sessions in one of these states; empty keeps all.
	Status []session.State
	// Search matches a substring of the email or a prefix of the id.
	Search string
	// MinScore and MaxScore keep only scored sessions within the range.
	MinScore, MaxScore *int
	// Passed keeps only scored sessions that reached (true) or missed
	// (false) their pass mark, which PassMark gives by exam id.
	Passed   *bool
	PassMark func(examID string) int
	// Sort is created (default), updated, email, status, deadline or
	// score (unscored sessions sort lowest).
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
var SortKeys = []string{"created", "updated", "email", "status", "deadline", "score"}

// List answers a filtered, searched, sorted page of sessions. It works on
// this process's copy of the summaries (see summaryCache), brought up to
// date with what changed since the last call, so a page over 10,000
// sessions costs a filter and a sort in memory, not a decode of them all.
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
	case "score":
		less = func(a, b *Summary) bool { return scoreKey(a) < scoreKey(b) }
	default:
		return ListResult{}, fmt.Errorf("sort %q: %w", q.Sort, ErrBadQuery)
	}
	want := map[session.State]bool{}
	for _, st := range q.Status {
		if !st.Valid() {
			return ListResult{}, fmt.Errorf("status %q: %w", st, ErrBadQuery)
		}
		want[st] = true
	}
	search := strings.ToLower(strings.TrimSpace(q.Search))
	if q.Passed != nil && q.PassMark == nil {
		return ListResult{}, fmt.Errorf("a pass filter without pass marks: %w", ErrBadQuery)
	}
	scores, err := s.scores(ctx)
	if err != nil {
		return ListResult{}, err
	}

	var rows []Summary
	err = s.summaries(ctx, func(all map[string]*Summary) {
		rows = make([]Summary, 0, len(all))
		for _, sum := range all {
			if len(want) > 0 && !want[sum.Status] {
				continue
			}
			if search != "" && !strings.Contains(sum.Email, search) && !strings.HasPrefix(sum.ID, search) {
				continue
			}
			row := *sum
			if sc, ok := scores[row.ID]; ok {
				row.Score, row.MaxScore = &sc.Score, sc.Max
			}
			if !q.keepsScore(&row) {
				continue
			}
			rows = append(rows, row)
		}
	})
	if err != nil {
		return ListResult{}, err
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

// keepsScore applies the score filters to a row.
func (q *ListQuery) keepsScore(row *Summary) bool {
	if q.MinScore == nil && q.MaxScore == nil && q.Passed == nil {
		return true
	}
	if row.Score == nil {
		return false
	}
	sc := *row.Score
	if (q.MinScore != nil && sc < *q.MinScore) || (q.MaxScore != nil && sc > *q.MaxScore) {
		return false
	}
	if q.Passed != nil && (sc >= q.PassMark(row.ExamID)) != *q.Passed {
		return false
	}
	return true
}

func scoreKey(s *Summary) int {
	if s.Score == nil {
		return -1
	}
	return *s.Score
}

// CountByStatus counts every indexed session by state (the metrics'
// sessions-by-state gauge). States with no session are present with 0.
func (s *Store) CountByStatus(ctx context.Context) (map[session.State]int, error) {
	out := make(map[session.State]int, len(session.States))
	for _, st := range session.States {
		out[st] = 0
	}
	err := s.summaries(ctx, func(all map[string]*Summary) {
		for _, sum := range all {
			out[sum.Status]++
		}
	})
	return out, err
}

// EndedBefore lists ended sessions (completed, expired, failed) last
// updated before cutoff, oldest first: what a retention policy removes.
func (s *Store) EndedBefore(ctx context.Context, cutoff time.Time) ([]Summary, error) {
	var out []Summary
	err := s.summaries(ctx, func(all map[string]*Summary) {
		for _, sum := range all {
			if sum.Status.Terminal() && sum.UpdatedAt.Before(cutoff) {
				out = append(out, *sum)
			}
		}
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].UpdatedAt.Equal(out[j].UpdatedAt) {
			return out[i].UpdatedAt.Before(out[j].UpdatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// summaryCache is one process's decoded copy of the summary hash. Every
// index write bumps a version counter and records the session id under
// that version (idx:changed), in the same transaction as the write, so a
// cache at version v refreshes by reading only the ids changed after v. An
// epoch key, set once per Redis dataset, tells a cache that Redis was
// emptied and rebuilt under it, which forces a full reload.
type summaryCache struct {
	mu    sync.Mutex
	epoch string
	ver   int64
	rows  map[string]*Summary
}

// bumpScript runs inside the index transaction: KEYS version, changed,
// epoch; ARGV session id, a fresh epoch in case none exists yet.
const bumpScript = `redis.call("setnx", KEYS[3], ARGV[2])
local v = redis.call("incr", KEYS[1])
redis.call("zadd", KEYS[2], v, ARGV[1])
return v`

func (s *Store) bumpIndex(ctx context.Context, p redis.Pipeliner, id string) {
	epoch, _ := auth.NewToken()
	p.Eval(ctx, bumpScript, []string{s.key("idx", "version"), s.key("idx", "changed"), s.key("idx", "epoch")}, id, epoch[:16])
}

// summaries brings the cache up to date and calls fn with it under the
// cache's lock; fn must not keep the map or its pointers.
func (s *Store) summaries(ctx context.Context, fn func(map[string]*Summary)) error {
	c := &s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.refresh(ctx, c); err != nil {
		return fmt.Errorf("list sessions: %w", err)
	}
	fn(c.rows)
	return nil
}

func (s *Store) refresh(ctx context.Context, c *summaryCache) error {
	verKey, epochKey := s.key("idx", "version"), s.key("idx", "epoch")
	if c.rows != nil {
		var epoch, ver *redis.StringCmd
		var changed *redis.ZSliceCmd
		_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			epoch = p.Get(ctx, epochKey)
			ver = p.Get(ctx, verKey)
			changed = p.ZRangeByScoreWithScores(ctx, s.key("idx", "changed"), &redis.ZRangeBy{Min: fmt.Sprintf("(%d", c.ver), Max: "+inf"})
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		v, _ := ver.Int64()
		if epoch.Val() == c.epoch && v >= c.ver {
			return s.applyChanges(ctx, c, changed.Val(), v)
		}
	}
	return s.reload(ctx, c)
}

// applyChanges re-reads the summaries of the sessions changed since the
// cache's version; an id whose summary is gone was deleted.
func (s *Store) applyChanges(ctx context.Context, c *summaryCache, changed []redis.Z, ver int64) error {
	if len(changed) == 0 {
		c.ver = ver
		return nil
	}
	ids := make([]string, len(changed))
	for i, z := range changed {
		ids[i], _ = z.Member.(string)
	}
	vals, err := s.rdb.HMGet(ctx, s.key("idx", "summary"), ids...).Result()
	if err != nil {
		return err
	}
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			delete(c.rows, ids[i])
			continue
		}
		var sum Summary
		if json.Unmarshal([]byte(str), &sum) != nil {
			delete(c.rows, ids[i])
			continue
		}
		c.rows[sum.ID] = &sum
	}
	// The summaries read may be newer than ver; reading them again next
	// time is harmless, missing one is not, so the cache keeps ver.
	c.ver = ver
	return nil
}

// reload reads every summary: on first use, or after Redis was rebuilt.
func (s *Store) reload(ctx context.Context, c *summaryCache) error {
	var epoch, ver *redis.StringCmd
	var all *redis.MapStringStringCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		epoch = p.Get(ctx, s.key("idx", "epoch"))
		ver = p.Get(ctx, s.key("idx", "version"))
		all = p.HGetAll(ctx, s.key("idx", "summary"))
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	rows := make(map[string]*Summary, len(all.Val()))
	for id, v := range all.Val() {
		var sum Summary
		if json.Unmarshal([]byte(v), &sum) == nil {
			rows[id] = &sum
		}
	}
	v, _ := ver.Int64()
	c.rows, c.ver, c.epoch = rows, v, epoch.Val()
	return nil
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
		if !e.IsDir() || !lab.ValidSessionID(e.Name()) {
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
		if err := s.reindexAnswers(ctx, sess.ID); err != nil {
			return n, err
		}
		if err := s.indexScoreLocked(ctx, sess.ID); err != nil {
			return n, err
		}
		n++
	}
	if _, err := s.rebuildSittings(ctx); err != nil {
		return n, err
	}
	// The queue and the slots come from the records too. Admissions the
	// repair finds unrecorded are rolled forward by the admission sweep.
	if _, err := s.RepairQueue(ctx); err != nil {
		return n, err
	}
	return n, nil
}

// Delete removes a session's record and its index entries: the retention
// policy's last step. The caller has made sure no lab remains.
func (s *Store) Delete(ctx context.Context, sess *session.Session) error {
	dir, err := s.SessionDir(sess.ID)
	if err != nil {
		return err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, s.key("idx", "summary"), sess.ID)
		p.ZRem(ctx, s.key("idx", "created"), sess.ID)
		p.ZRem(ctx, s.key("idx", "deadline"), sess.ID)
		p.Del(ctx, s.key("answers", sess.ID))
		p.HDel(ctx, s.key("idx", "score"), sess.ID)
		p.Del(ctx, s.key("checks", sess.ID))
		p.HDel(ctx, s.key("evidence"), sess.ID)
		p.Del(ctx, s.key("progress", sess.ID))
		for _, h := range sess.TokenHashes {
			p.Del(ctx, s.key("token", h))
		}
		s.bumpIndex(ctx, p, sess.ID)
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
