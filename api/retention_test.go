package api_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// TestRetentionDryRunListsOnlyOldEndedSessions: the admin's dry run names
// the ended sessions a policy of N days would delete, and deletes nothing.
func TestRetentionDryRunListsOnlyOldEndedSessions(t *testing.T) {
	st := memStack(t, nil)
	st.Client().Login(t, "recent@example.com") // open and new: never a victim
	// An exam from 40 days ago, restored from its files.
	old := session.Session{ID: "oldsession01", Short: "oldsessi", Email: "old@example.com", ExamID: "admin-test",
		Status: session.StateCompleted, CreatedAt: time.Now().Add(-41 * 24 * time.Hour), UpdatedAt: time.Now().Add(-40 * 24 * time.Hour), Version: 3}
	b, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(st.Config.StateDir, "sessions", old.ID)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "metadata.json"), b, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Store.Rebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	admin := st.Admin()
	for _, tc := range []struct {
		days int
		want []string
	}{{30, []string{old.ID}}, {60, nil}} {
		var out struct {
			DryRun   bool            `json:"dry_run"`
			Count    int             `json:"count"`
			Sessions []store.Summary `json:"sessions"`
		}
		code, err := admin.Do("GET", "/api/admin/retention?days="+map[int]string{30: "30", 60: "60"}[tc.days], nil, &out)
		must(t, code, err, 200, "retention dry run")
		if !out.DryRun || out.Count != len(tc.want) || len(out.Sessions) != len(tc.want) || (len(tc.want) == 1 && out.Sessions[0].ID != tc.want[0]) {
			t.Fatalf("%d days: %+v, want %v", tc.days, out, tc.want)
		}
	}
	if _, err := st.Store.Get(context.Background(), old.ID); err != nil {
		t.Fatalf("the dry run deleted the session: %v", err)
	}
}
