package api_test

import (
	"crypto/ed25519"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// sealTimeout bounds the wait between a session's completion and its seal.
const sealTimeout = 30 * time.Second

// A session run to the end on the in-memory runtime is sealed when it
// completes; the panel's API shows its state, the key it is checked with
// is there for admins only, and a mark keeps the seal whole.
func TestEvidenceOfACompletedSession(t *testing.T) {
	st := memStack(t, nil)
	cand := st.Client()
	id := cand.Login(t, "ada@example.com")
	cand.StartLab(t, id)
	if code, err := cand.Do("PUT", "/api/session/"+id+"/answers/t2-notes", map[string]any{"value": "checked the routes"}, nil); err != nil || code != 200 {
		t.Fatalf("save answer: %d %v", code, err)
	}
	if code, err := cand.Do("POST", "/api/session/"+id+"/submit", nil, nil); err != nil || code >= 300 {
		t.Fatalf("submit: %d %v", code, err)
	}
	cand.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
	admin := st.Admin()

	// The key: admins only, as JSON and as the PEM file verify reads.
	for _, who := range []struct {
		name string
		c    *testlab.Client
		want int
	}{{"no credentials", st.Client(), 401}, {"candidate", cand, 403}, {"admin", admin, 200}} {
		if code, _ := who.c.Do("GET", "/api/admin/signing-key", nil, nil); code != who.want {
			t.Fatalf("signing key as %s: %d, want %d", who.name, code, who.want)
		}
	}
	var keyInfo struct {
		Algorithm   string `json:"algorithm"`
		Fingerprint string `json:"fingerprint"`
		PublicKey   string `json:"public_key"`
	}
	if code, err := admin.Do("GET", "/api/admin/signing-key", nil, &keyInfo); code != 200 || err != nil {
		t.Fatalf("signing key: %d %v", code, err)
	}
	pub, err := evidence.ParsePublicKey([]byte(keyInfo.PublicKey))
	if err != nil || keyInfo.Algorithm != "ed25519" || keyInfo.Fingerprint != evidence.Fingerprint(pub) {
		t.Fatalf("signing key answer %+v: %v", keyInfo, err)
	}
	req, _ := http.NewRequest("GET", st.URL+"/api/admin/signing-key?format=pem", nil)
	req.Header.Set("Authorization", "Bearer "+st.AdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pemBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if p2, err := evidence.ParsePublicKey(pemBody); err != nil || !p2.Equal(pub) {
		t.Fatalf("PEM signing key %q: %v", pemBody, err)
	}
	if code, _ := admin.Do("GET", "/api/admin/signing-key?format=der", nil, nil); code != 400 {
		t.Fatalf("unknown key format: %d, want 400", code)
	}

	dir := filepath.Join(st.Config.StateDir, "sessions", id)
	verify := func(what string) *evidence.Report {
		t.Helper()
		r, err := evidence.Verify(dir, pub)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// The seal follows the move to completed, in the same cleanup task.
	deadline := time.Now().Add(sealTimeout)
	for ok, _ := evidence.IsSealed(dir); !ok; ok, _ = evidence.IsSealed(dir) {
		if time.Now().After(deadline) {
			t.Fatalf("session not sealed %s after it completed", sealTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := verify("completed"); !r.OK() {
		t.Fatalf("the completed session does not verify: %v", r.Problems)
	}
	listed := func() store.EvidenceStatus {
		var res struct {
			Sessions []struct {
				ID       string               `json:"id"`
				Evidence store.EvidenceStatus `json:"evidence"`
			} `json:"sessions"`
		}
		if code, err := admin.Do("GET", "/api/admin/sessions", nil, &res); code != 200 || err != nil {
			t.Fatalf("list: %d %v", code, err)
		}
		for _, s := range res.Sessions {
			if s.ID == id {
				return s.Evidence
			}
		}
		t.Fatalf("session %s not listed", id)
		return store.EvidenceStatus{}
	}
	details := func() store.EvidenceStatus {
		var d struct {
			Evidence store.EvidenceStatus `json:"evidence"`
		}
		if code, err := admin.Do("GET", "/api/admin/session/"+id+"/details", nil, &d); code != 200 || err != nil {
			t.Fatalf("details: %d %v", code, err)
		}
		return d.Evidence
	}
	if ev := listed(); ev.State != store.EvidenceVerified || ev.Key != keyInfo.Fingerprint || ev.SealedAt.IsZero() {
		t.Fatalf("listed evidence %+v", ev)
	}

	// The candidate can no longer add to the record.
	if code, _ := cand.Do("POST", "/api/session/"+id+"/terminal/tokyo/history", map[string]any{"commands": []string{"rm -rf /"}}, nil); code != 409 {
		t.Fatalf("history posted after the end: %d, want 409", code)
	}

	// An admin's mark is written into the sealed folder: the seal follows.
	if code, err := admin.Do("PUT", "/api/admin/session/"+id+"/marks/t2-notes", map[string]any{"points": 0, "note": "fine"}, nil); code != 200 || err != nil {
		t.Fatalf("mark: %d %v", code, err)
	}
	if r := verify("marked"); !r.OK() {
		t.Fatalf("after a mark: %v", r.Problems)
	}
	if ev := details(); ev.State != store.EvidenceVerified {
		t.Fatalf("details after a mark: %+v", ev)
	}

	// Changed behind the platform's back: the page's verification names it.
	answer := filepath.Join(dir, store.AnswersDir, "t2-notes.json")
	b, err := os.ReadFile(answer)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	os.WriteFile(answer, b, 0o640)
	if ev := listed(); ev.State != store.EvidenceUnchecked {
		t.Fatalf("listing after a same-size change: %+v, want unchecked until hashed", ev)
	}
	var ev store.EvidenceStatus
	if code, err := admin.Do("POST", "/api/admin/session/"+id+"/verify", nil, &ev); code != 200 || err != nil {
		t.Fatalf("verify: %d %v", code, err)
	}
	if ev.State != store.EvidenceFailed || len(ev.Problems) != 1 || !strings.HasPrefix(ev.Problems[0], "changed answers/t2-notes.json") {
		t.Fatalf("verify after tampering: %+v", ev)
	}
	if ev := listed(); ev.State != store.EvidenceFailed {
		t.Fatalf("listing after the failed verification: %+v", ev)
	}
	if code, _ := cand.Do("POST", "/api/admin/session/"+id+"/verify", nil, nil); code != 403 {
		t.Fatalf("verify as the candidate: %d, want 403", code)
	}
	if code, _ := admin.Do("POST", "/api/admin/session/abcdefghijkl/verify", nil, nil); code != 404 {
		t.Fatalf("verify of no session: %d, want 404", code)
	}
	// The key the deployment signs with is the one in the state directory.
	key, err := evidence.LoadKey(filepath.Join(st.Config.StateDir, evidence.KeyFile))
	if err != nil || !key.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatalf("state dir key: %v", err)
	}
}
