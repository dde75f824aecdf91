package platform

import (
	"context"
	"errors"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
)

// PracticeSitting is the sitting EXAMLAB_PRACTICE keeps open.
const PracticeSitting = "practice"

// practiceWindow is how far ahead the practice sitting stays open; each
// start of the platform moves its end out again.
const practiceWindow = 30 * 24 * time.Hour

// ensurePractice keeps the practice sitting of ex open now, with open
// registration on, creating it on first run: what makes `make run` end
// with an exam anyone can try at once.
func ensurePractice(ctx context.Context, st *store.Store, ex *exam.Exam, now time.Time) (*sitting.Sitting, error) {
	now = now.UTC().Truncate(time.Second)
	cur, err := st.GetSitting(ctx, PracticeSitting)
	if errors.Is(err, store.ErrNoSitting) {
		s := &sitting.Sitting{
			ID: PracticeSitting, ExamID: ex.ID, Title: "Practice: " + ex.Title,
			Opens: now.Add(-time.Minute), Closes: now.Add(practiceWindow), OpenRegistration: true,
		}
		return s, st.CreateSitting(ctx, s)
	}
	if err != nil {
		return nil, err
	}
	return st.UpdateSitting(ctx, cur.ID, func(s *sitting.Sitting) error {
		if s.Opens.After(now) {
			s.Opens = now.Add(-time.Minute)
		}
		s.Closes = now.Add(practiceWindow)
		s.ExamID = ex.ID
		s.OpenRegistration = true
		return nil
	})
}
