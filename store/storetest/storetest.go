// Package storetest signs candidates in for tests that need sessions in a
// store without the API in front: through a roster entry of a sitting, the
// way every session is made.
package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
)

// Sitting is the id of the sitting SignIn puts candidates on.
const Sitting = "test-sitting"

// SignIn puts email on the test sitting's roster (once) and signs them in
// to examID, returning their one session and a fresh token.
func SignIn(t testing.TB, st *store.Store, email, examID string, duration time.Duration, runtime string) (*session.Session, string) {
	t.Helper()
	OpenSitting(t, st, Sitting, examID, 0)
	return SignInTo(t, st, Sitting, email, examID, duration, runtime)
}

// OpenSitting creates a sitting of examID open for the next day, with
// capacity labs at once (0: no limit of its own), unless it exists.
func OpenSitting(t testing.TB, st *store.Store, id, examID string, capacity int) {
	t.Helper()
	now := time.Now().UTC()
	err := st.CreateSitting(context.Background(), &sitting.Sitting{ID: id, ExamID: examID, Capacity: capacity,
		Opens: now.Add(-time.Hour), Closes: now.Add(24 * time.Hour)})
	if err != nil && !errors.Is(err, store.ErrExists) {
		t.Fatalf("create sitting %s: %v", id, err)
	}
}

// SignInTo puts email on an open sitting's roster (once) and signs them
// in, returning their one session and a fresh token.
func SignInTo(t testing.TB, st *store.Store, sittingID, email, examID string, duration time.Duration, runtime string) (*session.Session, string) {
	t.Helper()
	ctx := context.Background()
	email, err := store.NormalizeEmail(email)
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.EntryByEmail(ctx, sittingID, email)
	if errors.Is(err, store.ErrNoEntry) {
		issued, aerr := st.AddEntries(ctx, sittingID, []sitting.Row{{Line: 2, Email: email, Name: email}}, false)
		if aerr != nil {
			t.Fatalf("add %s to the roster: %v", email, aerr)
		}
		e, err = &issued[0].Entry, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	sess, token, err := st.SignIn(ctx, store.SignIn{SittingID: sittingID, EntryID: e.ID, ExamID: examID, Duration: duration, Runtime: runtime})
	if err != nil {
		t.Fatalf("sign in %s: %v", email, err)
	}
	return sess, token
}
