package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
)

// Results files: the newest grading is results.json; every earlier one
// keeps its place in the order as results.N.json, N counting up from 1
// (results.1.json is the first grading), so a regrade never loses one.
const (
	ResultsFile = "results.json"
	MarksDir    = "marks"
)

// ErrInvalid is input that is well-formed but not acceptable (points out
// of range); the message says why.
var ErrInvalid = errors.New("invalid")

// MaxMarkNote bounds a manual mark's note.
const MaxMarkNote = 4 << 10

var resultsPattern = regexp.MustCompile(`^results\.([1-9][0-9]{0,8})\.json$`)

// SaveResults stores res as the session's newest results: results.json,
// written atomically after the previous results.json moved to the next
// free results.N.json. A crash in between leaves the previous results in
// the history and no results.json, which LatestResults reads past.
func (s *Store) SaveResults(ctx context.Context, id string, res *grading.Results) error {
	return s.sealedWrite(ctx, id, "results", func() error { return s.saveResults(ctx, id, res) })
}

func (s *Store) saveResults(ctx context.Context, id string, res *grading.Results) error {
	p, err := s.Path(id, ResultsFile)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results of %s: %w", id, err)
	}
	unlock, err := s.lock(ctx, "results", id)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(p); err == nil {
		n, err := s.lastResultsNumber(id)
		if err != nil {
			return err
		}
		prev, err := s.Path(id, "results."+strconv.Itoa(n+1)+".json")
		if err != nil {
			return err
		}
		if err := os.Rename(p, prev); err != nil {
			return fmt.Errorf("keep previous results of %s: %w", id, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("results of %s: %w", id, err)
	}
	if err := WriteFileAtomic(p, b); err != nil {
		return err
	}
	return s.indexScoreLocked(ctx, id)
}

// lastResultsNumber is the highest N of the session's results.N.json, 0
// when there is none.
func (s *Store) lastResultsNumber(id string) (int, error) {
	nums, err := s.resultsNumbers(id)
	if err != nil || len(nums) == 0 {
		return 0, err
	}
	return nums[len(nums)-1], nil
}

// resultsNumbers lists the N of every results.N.json, in order.
func (s *Store) resultsNumbers(id string) ([]int, error) {
	dir, err := s.SessionDir(id)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list results of %s: %w", id, err)
	}
	var nums []int
	for _, e := range entries {
		if m := resultsPattern.FindStringSubmatch(e.Name()); m != nil {
			n, _ := strconv.Atoi(m[1])
			nums = append(nums, n)
		}
	}
	sort.Ints(nums)
	return nums, nil
}

// LatestResults reads the session's newest results; ErrNotFound when it
// was never graded.
func (s *Store) LatestResults(ctx context.Context, id string) (*grading.Results, error) {
	p, err := s.Path(id, ResultsFile)
	if err != nil {
		return nil, err
	}
	res, err := readRecord[grading.Results](p, "results of", id, ErrNotFound)
	if !errors.Is(err, ErrNotFound) {
		return res, err
	}
	// A crash between keeping the previous results and writing the new
	// ones: the newest kept is the latest there is.
	n, nerr := s.lastResultsNumber(id)
	if nerr != nil || n == 0 {
		return nil, err
	}
	return s.readNumbered(id, n)
}

func (s *Store) readNumbered(id string, n int) (*grading.Results, error) {
	p, err := s.Path(id, "results."+strconv.Itoa(n)+".json")
	if err != nil {
		return nil, err
	}
	return readRecord[grading.Results](p, "results of", id, ErrNotFound)
}

// ResultsHistory returns every grading of the session, oldest first, the
// newest (results.json) last. A session never graded has none.
func (s *Store) ResultsHistory(ctx context.Context, id string) ([]*grading.Results, error) {
	nums, err := s.resultsNumbers(id)
	if err != nil {
		return nil, err
	}
	out := []*grading.Results{}
	for _, n := range nums {
		r, err := s.readNumbered(id, n)
		if errors.Is(err, ErrNotFound) {
			continue // moved on by a concurrent save
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	p, err := s.Path(id, ResultsFile)
	if err != nil {
		return nil, err
	}
	r, err := readRecord[grading.Results](p, "results of", id, ErrNotFound)
	switch {
	case err == nil:
		out = append(out, r)
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}
	return out, nil
}

// Mark is an examiner's points for a task a person marks (a text answer):
// marks/{task}.json.
type Mark struct {
	Task   string    `json:"task"`
	Points int       `json:"points"`
	Note   string    `json:"note,omitempty"`
	By     string    `json:"by"`
	At     time.Time `json:"at"`
}

// SetMark records m as the session's mark for m.Task, which is worth at
// most maxPoints, and audit-logs it. The caller checks that the task is
// one a person marks.
func (s *Store) SetMark(ctx context.Context, id string, m Mark, maxPoints int) (Mark, error) {
	if !exam.ValidTaskID(m.Task) {
		return Mark{}, fmt.Errorf("task %q: %w", m.Task, ErrBadID)
	}
	if m.Points < 0 || m.Points > maxPoints {
		return Mark{}, fmt.Errorf("points must be between 0 and the task's %d, got %d: %w", maxPoints, m.Points, ErrInvalid)
	}
	if len(m.Note) > MaxMarkNote {
		return Mark{}, fmt.Errorf("note of %d bytes (limit %d): %w", len(m.Note), MaxMarkNote, ErrTooLarge)
	}
	if strings.TrimSpace(m.By) == "" {
		return Mark{}, fmt.Errorf("a mark needs its examiner: %w", ErrInvalid)
	}
	p, err := s.Path(id, MarksDir, m.Task+".json")
	if err != nil {
		return Mark{}, err
	}
	if _, err := s.Get(ctx, id); err != nil {
		return Mark{}, err
	}
	var out Mark
	err = s.sealedWrite(ctx, id, "mark", func() (err error) {
		out, err = s.setMark(ctx, id, p, m)
		return err
	})
	return out, err
}

// setMark writes a checked mark and its audit entry; the caller holds the
// evidence lock.
func (s *Store) setMark(ctx context.Context, id, p string, m Mark) (Mark, error) {
	m.At = s.now().UTC()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Mark{}, fmt.Errorf("encode mark: %w", err)
	}
	unlock, err := s.lock(ctx, "results", id)
	if err != nil {
		return Mark{}, err
	}
	defer unlock()
	prev, _ := readRecord[Mark](p, "mark of", id, ErrNotFound)
	if err := WriteFileAtomic(p, b); err != nil {
		return Mark{}, err
	}
	detail := map[string]any{"task": m.Task, "points": m.Points, "note": m.Note}
	if prev != nil {
		detail["previous_points"] = prev.Points
	}
	ap, err := s.Path(id, auditFile)
	if err != nil {
		return Mark{}, err
	}
	if err := s.appendAudit(ctx, id, ap, AuditEntry{At: m.At, Actor: m.By, Action: "mark", Detail: detail}); err != nil {
		return Mark{}, err
	}
	return m, s.indexScoreLocked(ctx, id)
}

// Marks returns the session's manual marks by task id.
func (s *Store) Marks(ctx context.Context, id string) (map[string]Mark, error) {
	dir, err := s.Path(id, MarksDir)
	if err != nil {
		return nil, err
	}
	out := map[string]Mark{}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list marks of %s: %w", id, err)
	}
	for _, e := range entries {
		task, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || !exam.ValidTaskID(task) {
			continue
		}
		m, err := readRecord[Mark](filepath.Join(dir, e.Name()), "mark of", id, ErrNotFound)
		if err != nil {
			continue
		}
		out[task] = *m
	}
	return out, nil
}

// Scorecard is a session's score as an exam team reads it: the latest
// grading's checks and choice answers, plus the manual marks.
type Scorecard struct {
	Score    int `json:"score"`
	MaxScore int `json:"max_score"`
	// Tasks are the points of each task by id; a manual task not marked
	// yet is absent.
	Tasks    map[string]int `json:"tasks"`
	GradedAt time.Time      `json:"graded_at,omitzero"`
}

// Score adds the marks to res (which may be nil: never graded). A mark
// counts only for a task res says a person marks, or any task when there
// are no results; maxScore is the exam's.
func Score(res *grading.Results, marks map[string]Mark, maxScore int) Scorecard {
	sc := Scorecard{MaxScore: maxScore, Tasks: map[string]int{}}
	manual := map[string]bool{}
	if res != nil {
		sc.GradedAt = res.GradedAt
		for _, t := range res.Tasks {
			if t.Manual {
				manual[t.ID] = true
				continue
			}
			sc.Tasks[t.ID] = t.Points
			sc.Score += t.Points
		}
	}
	for task, m := range marks {
		if res != nil && !manual[task] {
			continue
		}
		sc.Tasks[task] = m.Points
		sc.Score += m.Points
	}
	return sc
}

// indexScoreLocked keeps the session's score in the index, for the
// listing's score column and filters. Writers hold the results lock; a
// rebuild reads what is on disk as it is.
func (s *Store) indexScoreLocked(ctx context.Context, id string) error {
	res, err := s.LatestResults(ctx, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	marks, err := s.Marks(ctx, id)
	if err != nil {
		return err
	}
	if res == nil && len(marks) == 0 {
		return nil
	}
	max := 0
	if res != nil {
		max = res.MaxScore
	}
	sc := Score(res, marks, max)
	b, err := json.Marshal(indexedScore{Score: sc.Score, Max: sc.MaxScore})
	if err != nil {
		return fmt.Errorf("encode score: %w", err)
	}
	if err := s.rdb.HSet(ctx, s.key("idx", "score"), id, b).Err(); err != nil {
		return fmt.Errorf("index score of %s: %w", id, err)
	}
	return nil
}

type indexedScore struct {
	Score int `json:"s"`
	Max   int `json:"m"`
}

// scores reads every indexed score.
func (s *Store) scores(ctx context.Context) (map[string]indexedScore, error) {
	all, err := s.rdb.HGetAll(ctx, s.key("idx", "score")).Result()
	if err != nil {
		return nil, fmt.Errorf("read scores: %w", err)
	}
	out := make(map[string]indexedScore, len(all))
	for id, v := range all {
		var sc indexedScore
		if json.Unmarshal([]byte(v), &sc) == nil {
			out[id] = sc
		}
	}
	return out, nil
}

// CandidateCheck counts one "check my work" run of task in the session
// when fewer than limit were used, atomically across processes. It
// returns how many runs remain after this one; ok is false (and remaining
// 0) when they were used up already.
func (s *Store) CandidateCheck(ctx context.Context, id, task string, limit int) (remaining int, ok bool, err error) {
	if _, err := s.SessionDir(id); err != nil {
		return 0, false, err
	}
	if !exam.ValidTaskID(task) {
		return 0, false, fmt.Errorf("task %q: %w", task, ErrBadID)
	}
	n, err := s.rdb.Eval(ctx, `local n = tonumber(redis.call("hget", KEYS[1], ARGV[1]) or "0")
if n >= tonumber(ARGV[2]) then return -1 end
return redis.call("hincrby", KEYS[1], ARGV[1], 1)`, []string{s.key("checks", id)}, task, limit).Int()
	if err != nil {
		return 0, false, fmt.Errorf("count checks of %s: %w", id, err)
	}
	if n < 0 {
		return 0, false, nil
	}
	return limit - n, true, nil
}

// CandidateChecksUsed returns how many "check my work" runs each task of
// the session has used.
func (s *Store) CandidateChecksUsed(ctx context.Context, id string) (map[string]int, error) {
	if _, err := s.SessionDir(id); err != nil {
		return nil, err
	}
	all, err := s.rdb.HGetAll(ctx, s.key("checks", id)).Result()
	if err != nil {
		return nil, fmt.Errorf("read check counts of %s: %w", id, err)
	}
	out := make(map[string]int, len(all))
	for task, v := range all {
		out[task], _ = strconv.Atoi(v)
	}
	return out, nil
}

// AnswerTexts gives each answer's value as text, for scoring: a JSON
// string is its content, anything else its JSON.
func AnswerTexts(answers []Answer) map[string]string {
	out := make(map[string]string, len(answers))
	for _, a := range answers {
		var v string
		if json.Unmarshal(a.Value, &v) == nil {
			out[a.TaskID] = v
		} else {
			out[a.TaskID] = string(a.Value)
		}
	}
	return out
}
