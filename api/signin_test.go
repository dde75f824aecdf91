package api_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

type loginAnswer struct {
	SessionID string `json:"session_id"`
	Token     string `json:"token"`
	Code      string `json:"code"`
	Error     string `json:"error"`
}

func login(t *testing.T, c *testlab.Client, body map[string]string) (int, loginAnswer) {
	t.Helper()
	var out loginAnswer
	code, err := c.Do("POST", "/api/login", body, &out)
	if err != nil {
		t.Fatal(err)
	}
	return code, out
}

// TestSignInWithCodes walks the front door of a sitting with a roster and
// no open registration: codes admit their candidate, and only inside the
// window; nothing else admits anyone, and no refusal tells whether an
// email is on the roster.
func TestSignInWithCodes(t *testing.T) {
	st := memStack(t, func(c *config.Config) { c.Practice = false })
	ctx := context.Background()
	now := time.Now().UTC()
	mk := func(id string, opens, closes time.Time) []store.IssuedCode {
		t.Helper()
		if err := st.Store.CreateSitting(ctx, &sitting.Sitting{ID: id, ExamID: st.Exam.ID, Opens: opens, Closes: closes}); err != nil {
			t.Fatal(err)
		}
		issued, err := st.Store.AddEntries(ctx, id, []sitting.Row{
			{Line: 2, Email: "ada@example.com", Name: "Ada"},
			{Line: 3, Email: "bob@example.com", Name: "Bob"},
		}, false)
		if err != nil {
			t.Fatal(err)
		}
		return issued
	}
	open := mk("now", now.Add(-time.Hour), now.Add(time.Hour))
	early := mk("later", now.Add(time.Hour), now.Add(2*time.Hour))
	late := mk("earlier", now.Add(-2*time.Hour), now.Add(-time.Hour))

	c := st.Client()
	code, ada := login(t, c, map[string]string{"code": open[0].Code})
	if code != 200 || ada.SessionID == "" || ada.Code != "" {
		t.Fatalf("code sign-in: %d %+v", code, ada)
	}
	if s, err := st.Store.Get(ctx, ada.SessionID); err != nil || s.Email != "ada@example.com" {
		t.Fatalf("signed in as %v, %v", s, err)
	}
	// The same code from a second browser, typed loosely, finds the same
	// session; the relay's one-window rule takes it from there.
	loose := strings.ToLower(strings.ReplaceAll(open[0].Code, "-", " "))
	if code, again := login(t, st.Client(), map[string]string{"code": loose}); code != 200 || again.SessionID != ada.SessionID {
		t.Fatalf("second sign-in: %d %+v, want session %s", code, again, ada.SessionID)
	}

	refusals := []struct {
		name string
		body map[string]string
		want int
		says string
	}{
		{"email on the roster", map[string]string{"email": "ada@example.com"}, 401, "access code"},
		{"email not on the roster", map[string]string{"email": "zed@example.com"}, 401, "access code"},
		{"email naming a sitting", map[string]string{"email": "ada@example.com", "sitting": "now"}, 401, "access code"},
		{"nothing", map[string]string{}, 400, "access code"},
		{"code too short", map[string]string{"code": "7KQ2-M9XD-4HTV"}, 400, "16 letters"},
		{"code outside the alphabet", map[string]string{"code": "7KQ2-M9XD-4HTV-P0R!"}, 400, "16 letters"},
		{"unknown code", map[string]string{"code": "7KQ2-M9XD-4HTV-P0RC"}, 401, "not valid"},
		{"before the window", map[string]string{"code": early[0].Code}, 403, "not opened"},
		{"after the window", map[string]string{"code": late[0].Code}, 403, "closed"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			code, out := login(t, st.Client(), tc.body)
			if code != tc.want || !strings.Contains(out.Error, tc.says) || out.Token != "" {
				t.Fatalf("%d %+v; want %d saying %q", code, out, tc.want, tc.says)
			}
		})
	}
	// Whether an email is on a roster does not show in the answer.
	_, on := login(t, st.Client(), map[string]string{"email": "ada@example.com"})
	_, off := login(t, st.Client(), map[string]string{"email": "zed@example.com"})
	if on.Error != off.Error {
		t.Fatalf("refusals differ: %q vs %q", on.Error, off.Error)
	}

	// A reissued code replaces the old one at once.
	re, err := st.Store.ReissueCode(ctx, "now", open[1].Entry.ID)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := login(t, st.Client(), map[string]string{"code": open[1].Code}); code != 401 {
		t.Fatalf("old code after reissue: %d", code)
	}
	if code, _ := login(t, st.Client(), map[string]string{"code": re.Code}); code != 200 {
		t.Fatalf("new code: %d", code)
	}

	// A deleted sitting's codes admit no one; a session whose sitting
	// closed cannot start a lab.
	if _, err := st.Store.UpdateSitting(ctx, "now", func(x *sitting.Sitting) error {
		x.Opens, x.Closes = now.Add(-2*time.Hour), now.Add(-time.Minute)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var out struct{ Error string }
	if code, err := c.Do("POST", "/api/session/"+ada.SessionID+"/start", nil, &out); err != nil || code != 403 || !strings.Contains(out.Error, "closed") {
		t.Fatalf("start after the window: %d %v %q", code, err, out.Error)
	}
}

// TestOpenRegistration: where a sitting allows it, an email alone signs a
// new candidate in and issues them a code; the email alone never signs
// them in again, the code does.
func TestOpenRegistration(t *testing.T) {
	st := memStack(t, nil) // the practice sitting is on
	code, first := login(t, st.Client(), map[string]string{"email": "Newcomer@Example.com", "name": "New Comer"})
	if code != 200 || first.SessionID == "" {
		t.Fatalf("open registration: %d %+v", code, first)
	}
	if _, err := sitting.NormalizeCode(first.Code); err != nil {
		t.Fatalf("issued code %q: %v", first.Code, err)
	}
	if code, again := login(t, st.Client(), map[string]string{"email": "newcomer@example.com"}); code != 401 || again.Token != "" {
		t.Fatalf("email-only sign-in of a registered email: %d %+v", code, again)
	}
	code, back := login(t, st.Client(), map[string]string{"code": first.Code})
	if code != 200 || back.SessionID != first.SessionID || back.Code != "" {
		t.Fatalf("code sign-in: %d %+v", code, back)
	}
	e, err := st.Store.EntryByEmail(context.Background(), "practice", "newcomer@example.com")
	if err != nil || !e.SelfRegistered || e.Name != "New Comer" || e.SessionID != first.SessionID {
		t.Fatalf("roster entry = %+v, %v", e, err)
	}

	// The sign-in page learns where an email may be used.
	var opts struct {
		Open []struct{ ID string } `json:"open_registration"`
	}
	if code, err := st.Client().Do("GET", "/api/signin", nil, &opts); err != nil || code != 200 || len(opts.Open) != 1 || opts.Open[0].ID != "practice" {
		t.Fatalf("signin options: %d %v %+v", code, err, opts)
	}
	// Turned off, the practice sitting admits emails no more.
	if _, err := st.Store.UpdateSitting(context.Background(), "practice", func(x *sitting.Sitting) error {
		x.OpenRegistration = false
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if code, out := login(t, st.Client(), map[string]string{"email": "late@example.com"}); code != 401 {
		t.Fatalf("open registration off: %d %+v", code, out)
	}
	// An invitation link opens the exam page.
	resp, err := http.Get(st.URL + "/join")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), `id="login-code"`) {
		t.Fatalf("/join: %d", resp.StatusCode)
	}
}
