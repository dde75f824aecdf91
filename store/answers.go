package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/examlab/examlab/exam"
)

// Answer is one task's saved answer: answers/{taskId}.json.
type Answer struct {
	TaskID   string          `json:"task_id"`
	Value    json.RawMessage `json:"value"`
	SavedAt  time.Time       `json:"saved_at"`
	Revision int             `json:"revision"`
	// ReceivedAt is when the save reached the store, before it waited
	// for the session: saves are ordered by it (see SaveAnswer).
	// Answers saved before it was kept have none.
	ReceivedAt time.Time `json:"received_at,omitzero"`
}

// SaveAnswer stores value as the session's answer to taskID. It returns
// only once the answer is on disk, so an acknowledged answer survives a
// restart of any part. The caller checks taskID belongs to the exam.
//
// The last save to arrive wins, not the last to get the session's lock:
// a save can wait for the lock after its client gave up (a slow writer,
// or one killed holding the lock, which stands until its lease runs
// out), and meanwhile a newer save of the same task may have been made
// and acknowledged. Such a late save writes nothing and returns the
// newer answer.
func (s *Store) SaveAnswer(ctx context.Context, id, taskID string, value json.RawMessage) (Answer, error) {
	received := s.now().UTC()
	if !exam.ValidTaskID(taskID) {
		return Answer{}, fmt.Errorf("task %q: %w", taskID, ErrBadID)
	}
	if len(value) > s.maxAns {
		return Answer{}, fmt.Errorf("answer of %d bytes (limit %d): %w", len(value), s.maxAns, ErrTooLarge)
	}
	if !json.Valid(value) {
		return Answer{}, fmt.Errorf("answer is not JSON: %w", ErrBadID)
	}
	p, err := s.Path(id, AnswersDir, taskID+".json")
	if err != nil {
		return Answer{}, err
	}
	unlock, err := s.lock(ctx, "session", id)
	if err != nil {
		return Answer{}, err
	}
	defer unlock()
	sess, err := s.Get(ctx, id)
	if err != nil {
		return Answer{}, err
	}
	if !sess.Status.Open() {
		return Answer{}, fmt.Errorf("save answer in %s session: %w", sess.Status, ErrClosed)
	}
	a := Answer{TaskID: taskID, SavedAt: s.now().UTC(), Revision: 1, ReceivedAt: received}
	var compact bytes.Buffer
	if err := json.Compact(&compact, value); err != nil {
		return Answer{}, fmt.Errorf("answer is not JSON: %w", ErrBadID)
	}
	a.Value = compact.Bytes()
	if prev, err := readAnswer(p); err == nil {
		if prev.ReceivedAt.After(received) {
			return prev, nil
		}
		a.Revision = prev.Revision + 1
	}
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return Answer{}, fmt.Errorf("encode answer: %w", err)
	}
	if err := WriteFileAtomic(p, b); err != nil {
		return Answer{}, err
	}
	if err := s.rdb.HSet(ctx, s.key("answers", id), taskID, a.SavedAt.Format(time.RFC3339Nano)).Err(); err != nil {
		return Answer{}, fmt.Errorf("index answer: %w", err)
	}
	return a, nil
}

func readAnswer(p string) (Answer, error) {
	var a Answer
	b, err := os.ReadFile(p)
	if err != nil {
		return a, err
	}
	return a, json.Unmarshal(b, &a)
}

// Answers returns the session's saved answers, by task id.
func (s *Store) Answers(ctx context.Context, id string) ([]Answer, error) {
	dir, err := s.Path(id, AnswersDir)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return []Answer{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list answers: %w", err)
	}
	out := []Answer{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		a, err := readAnswer(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read answer %s: %w", name, err)
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TaskID < out[j].TaskID })
	return out, nil
}

func (s *Store) reindexAnswers(ctx context.Context, id string) error {
	as, err := s.Answers(ctx, id)
	if err != nil {
		return err
	}
	for _, a := range as {
		if err := s.rdb.HSet(ctx, s.key("answers", id), a.TaskID, a.SavedAt.Format(time.RFC3339Nano)).Err(); err != nil {
			return fmt.Errorf("index answer: %w", err)
		}
	}
	return nil
}
