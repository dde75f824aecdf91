package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/relay"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// seedLogin signs in through the seed's route and returns the whole answer.
type seedLogin struct {
	SessionID string          `json:"session_id"`
	Token     string          `json:"token"`
	Status    string          `json:"status"`
	Session   testlab.Session `json:"session"`
	Code      string          `json:"code"`
}

type apiError struct {
	Error string `json:"error"`
}

// TestSeedRoutes drives the seed's candidate routes end to end on one lab:
// sign in, start by email, save answers one and several at a time, type in
// a terminal named by its container, submit; and every refusal on the way.
// The client signs in with its cookie only, so the seed routes are shown to
// take the cookie; the second candidate uses a bearer token.
func TestSeedRoutes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	origin := "http://" + addr
	st := startStack(t, func(c *config.Config) { c.Listen = addr; c.PublicURL = origin })
	wsBase := "ws://" + addr

	const email = "Seed.Owner@Example.com"
	const ownEmail = "seed.owner@example.com"
	owner := st.Client() // cookie only
	var in seedLogin
	code, err := owner.Do("POST", "/api/candidate/login", map[string]string{"email": email}, &in)
	must(t, code, err, 200, "seed login")
	id := in.SessionID
	if id == "" || in.Token == "" || in.Status != "created" || in.Session.ID != id {
		t.Fatalf("seed login answered %+v", in)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), labDestroyTimeout)
		defer cancel()
		st.Runtime.Destroy(ctx, id)
	})
	var again seedLogin
	// Signing in again goes through the code the first sign-in issued.
	code, err = st.Client().Do("POST", "/api/login", map[string]string{"code": in.Code}, &again)
	must(t, code, err, 200, "login on the modern twin")
	if again.SessionID != id {
		t.Fatalf("the twin gave %s the session %s, the seed route %s", ownEmail, again.SessionID, id)
	}
	bob := st.Client()
	bobID := bob.Login(t, "bob@example.com") // bearer token
	anon := st.Client()
	admin := st.Admin()
	answersOf := func(t *testing.T) map[string]store.Answer {
		t.Helper()
		var out struct {
			Answers []store.Answer `json:"answers"`
		}
		code, err := owner.Do("GET", "/api/session/"+id+"/answers", nil, &out)
		must(t, code, err, 200, "list answers")
		m := map[string]store.Answer{}
		for _, a := range out.Answers {
			m[a.TaskID] = a
		}
		return m
	}

	t.Run("both login routes spend one budget", func(t *testing.T) {
		// Alternating routes, one email's sign-in budget is spent at its
		// limit; two budgets would still have half of theirs.
		limit := config.Default().Signin.PerAccount.Limit
		paths := []string{"/api/candidate/login", "/api/login"}
		logins, refusedAt := 0, 0
		for logins <= limit && refusedAt == 0 {
			code, err := st.Client().Do("POST", paths[logins%2], map[string]string{"email": "budget@example.com"}, nil)
			if err != nil && !strings.Contains(err.Error(), "decode") {
				t.Fatal(err)
			}
			if logins++; code == http.StatusTooManyRequests {
				refusedAt = logins
			}
		}
		loginLimit := limit
		if refusedAt != loginLimit+1 {
			t.Fatalf("login %d was refused, want login %d (0: none)", refusedAt, loginLimit+1)
		}
		for _, p := range paths {
			code, _ := st.Client().Do("POST", p, map[string]string{"email": "budget@example.com"}, nil)
			if code != http.StatusTooManyRequests {
				t.Errorf("POST %s after the budget is spent: %d, want 429", p, code)
			}
		}
	})

	t.Run("refusals before the lab starts", func(t *testing.T) {
		answer := map[string]any{"task_id": "t1-hostname", "value": "x"}
		cases := []struct {
			name   string
			client *testlab.Client
			path   string
			body   any
			want   int
		}{
			{"start by email alone", anon, "/api/candidate/" + ownEmail + "/start", nil, 401},
			{"answers without credentials", anon, "/api/candidate/answers", answer, 401},
			{"submit without credentials", anon, "/api/candidate/submit", nil, 401},
			{"start another candidate's session", bob, "/api/candidate/" + ownEmail + "/start", nil, 403},
			{"start an unknown candidate's session", bob, "/api/candidate/nobody@example.com/start", nil, 403},
			{"admin starts by email", admin, "/api/candidate/" + ownEmail + "/start", nil, 403},
			{"admin saves answers", admin, "/api/candidate/answers", answer, 403},
			{"admin submits", admin, "/api/candidate/submit", nil, 403},
			{"start with a malformed email", owner, "/api/candidate/not-an-email/start", nil, 400},
		}
		reasons := map[string]string{}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var out apiError
				code, err := tc.client.Do("POST", tc.path, tc.body, &out)
				if err != nil {
					t.Fatal(err)
				}
				if code != tc.want || out.Error == "" {
					t.Fatalf("%d %q, want %d with a reason", code, out.Error, tc.want)
				}
				reasons[tc.name] = out.Error
			})
		}
		if a, b := reasons["start another candidate's session"], reasons["start an unknown candidate's session"]; a != b {
			t.Errorf("refusals tell an existing candidate (%q) from an unknown one (%q)", a, b)
		}
		if s := owner.Status(t, id); s.Status != "created" {
			t.Fatalf("refused requests moved the session to %s", s.Status)
		}
		if as := answersOf(t); len(as) != 0 {
			t.Fatalf("refused requests saved answers: %+v", as)
		}
	})

	// Start by email, written as the candidate pleases.
	var started testlab.Session
	code, err = owner.Do("POST", "/api/candidate/SEED.Owner%40example.COM/start", nil, &started)
	must(t, code, err, 202, "start through the seed route")
	if started.ID != id || started.Status != "provisioning" {
		t.Fatalf("start answered %+v", started)
	}
	owner.WaitStatus(t, id, testlab.ProvisionTimeout, "ready")

	t.Run("answers one and several at a time", func(t *testing.T) {
		var one store.Answer
		code, err := owner.Do("POST", "/api/candidate/answers", map[string]any{"task_id": "t1-hostname", "value": "tokyo"}, &one)
		must(t, code, err, 200, "save one answer")
		if one.TaskID != "t1-hostname" || string(one.Value) != `"tokyo"` || one.Revision != 1 {
			t.Fatalf("saved %+v", one)
		}
		var many struct {
			Answers []store.Answer `json:"answers"`
		}
		code, err = owner.Do("POST", "/api/candidate/answers",
			map[string]any{"answers": map[string]any{"t1-hostname": "osaka", "t2-notes": map[string]string{"text": "done"}}}, &many)
		must(t, code, err, 200, "save a batch")
		if len(many.Answers) != 2 || many.Answers[0].TaskID != "t1-hostname" || many.Answers[0].Revision != 2 ||
			many.Answers[1].TaskID != "t2-notes" || string(many.Answers[1].Value) != `{"text":"done"}` {
			t.Fatalf("batch saved %+v", many.Answers)
		}
		as := answersOf(t)
		if string(as["t1-hostname"].Value) != `"osaka"` || string(as["t2-notes"].Value) != `{"text":"done"}` {
			t.Fatalf("stored answers %+v", as)
		}
	})

	t.Run("bad answers save nothing", func(t *testing.T) {
		before := answersOf(t)
		big := strings.Repeat("x", st.Config.MaxAnswerBytes)
		cases := []struct {
			name string
			body any
			want int
		}{
			{"batch with one unknown task", map[string]any{"answers": map[string]any{"t1-hostname": "changed", "t9-nope": "x"}}, 404},
			{"batch with one malformed task id", map[string]any{"answers": map[string]any{"t2-notes": "changed", "../metadata": "x"}}, 404},
			{"batch with one answer too large", map[string]any{"answers": map[string]any{"t1-hostname": "changed", "t2-notes": big}}, 413},
			{"one unknown task", map[string]any{"task_id": "t9-nope", "value": "x"}, 404},
			{"one answer too large", map[string]any{"task_id": "t1-hostname", "value": big}, 413},
			{"task without a value", map[string]any{"task_id": "t1-hostname"}, 400},
			{"value without a task", map[string]any{"value": "x"}, 400},
			{"both one and several", map[string]any{"task_id": "t1-hostname", "value": "x", "answers": map[string]any{"t2-notes": "y"}}, 400},
			{"empty batch", map[string]any{"answers": map[string]any{}}, 400},
			{"unknown field", `{"task":"t1-hostname","value":"x"}`, 400},
			{"not JSON", `task_id=t1-hostname`, 400},
			{"no body", nil, 400},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var out apiError
				code, err := owner.Do("POST", "/api/candidate/answers", tc.body, &out)
				if err != nil {
					t.Fatal(err)
				}
				if code != tc.want || out.Error == "" {
					t.Fatalf("%d %q, want %d with a reason", code, out.Error, tc.want)
				}
			})
		}
		after := answersOf(t)
		for task, a := range before {
			if b := after[task]; b.Revision != a.Revision || string(b.Value) != string(a.Value) {
				t.Errorf("refused requests changed %s: %+v → %+v", task, a, b)
			}
		}
		if len(after) != len(before) {
			t.Errorf("refused requests left answers %+v, before %+v", after, before)
		}
	})

	container := func(session, node string) string { return wsBase + "/api/terminal/" + lab.ContainerName(session, node) }
	t.Run("terminal by container name", func(t *testing.T) {
		runInTerminal(t, container(id, "tokyo"),
			http.Header{"Cookie": {auth.CandidateCookie + "=" + in.Token}, "Origin": {origin}},
			"echo seed-$(hostname)-$((6*7))", "seed-tokyo-42")
		runInTerminal(t, container(id, "osaka"), http.Header{"Authorization": {"Bearer " + in.Token}},
			"echo seed-$(hostname)-$((6*7))", "seed-osaka-42")
	})

	t.Run("terminal refusals", func(t *testing.T) {
		browser := http.Header{"Cookie": {auth.CandidateCookie + "=" + in.Token}, "Origin": {origin}}
		cases := []struct {
			name   string
			url    string
			header http.Header
			want   int
		}{
			{"no credentials", container(id, "tokyo"), http.Header{"Origin": {origin}}, relay.CloseAuth},
			{"another candidate's token", container(id, "tokyo"), http.Header{"Authorization": {"Bearer " + bob.Token}}, relay.CloseForbidden},
			{"another candidate's container", container(bobID, "tokyo"), browser, relay.CloseForbidden},
			{"a container of no session", container("zzzzzzzzzzzz", "tokyo"), browser, relay.CloseForbidden},
			{"not a container name", wsBase + "/api/terminal/tokyo", browser, relay.CloseForbidden},
			{"unknown node", container(id, "kyoto"), browser, relay.CloseNotFound},
			{"malformed node", container(id, "Tokyo"), browser, relay.CloseNotFound},
			{"foreign origin", container(id, "tokyo"), http.Header{"Cookie": browser["Cookie"], "Origin": {"http://evil.example"}}, relay.CloseForbidden},
			{"admin token", container(id, "tokyo"), http.Header{"Authorization": {"Bearer " + st.AdminToken}}, relay.CloseForbidden},
		}
		reasons := map[string]string{}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				code, reason := refusedTerminal(t, tc.url, tc.header)
				if code != tc.want || reason == "" {
					t.Fatalf("closed with %d %q, want %d with a reason", code, reason, tc.want)
				}
				reasons[tc.name] = reason
			})
		}
		if a, b := reasons["another candidate's container"], reasons["a container of no session"]; a != b {
			t.Errorf("refusals tell another lab's container (%q) from no container (%q)", a, b)
		}
		resp, err := http.Get("http://" + addr + "/api/terminal/" + lab.ContainerName(id, "tokyo"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired {
			t.Errorf("plain HTTP on the terminal route: %d, want 426", resp.StatusCode)
		}
	})

	var submitted testlab.Session
	code, err = owner.Do("POST", "/api/candidate/submit", nil, &submitted)
	must(t, code, err, 202, "submit through the seed route")
	if submitted.ID != id || submitted.Status != "submitted" {
		t.Fatalf("submit answered %+v", submitted)
	}
	owner.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")

	t.Run("a closed session takes no more", func(t *testing.T) {
		var out apiError
		code, err := owner.Do("POST", "/api/candidate/answers", map[string]any{"task_id": "t1-hostname", "value": "late"}, &out)
		if err != nil || code != http.StatusConflict || out.Error == "" {
			t.Errorf("answer after submit: %d %q %v, want 409 with a reason", code, out.Error, err)
		}
		code, err = owner.Do("POST", "/api/candidate/submit", nil, &out)
		if err != nil || code != http.StatusConflict {
			t.Errorf("second submit: %d %q %v, want 409", code, out.Error, err)
		}
		d := getDetails(t, admin, id)
		if n := auditCount(d, ownEmail, "submit"); n != 1 {
			t.Errorf("%d candidate submit audit entries, want 1: %+v", n, d.Audit)
		}
	})
}

// refusedTerminal opens a terminal WebSocket the relay is expected to
// refuse and returns the close code and reason. It fails the test if the
// terminal is attached or sends output first.
func refusedTerminal(t *testing.T, url string, header http.Header) (int, string) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: terminalTimeout}
	ws, _, err := d.Dial(url, header)
	if err != nil {
		t.Fatalf("open terminal %s: %v", url, err)
	}
	defer ws.Close()
	// Keys typed at once: without a credential they are the first frame,
	// which the relay refuses at once instead of waiting for an auth
	// message.
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("id\r")); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(terminalTimeout))
	for {
		typ, b, err := ws.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Text
		}
		if err != nil {
			t.Fatalf("terminal %s: %v before a close frame", url, err)
		}
		if typ == websocket.BinaryMessage {
			t.Fatalf("a refused terminal sent output %q", b)
		}
		var m map[string]any
		if json.Unmarshal(b, &m) == nil && m["type"] == "ready" {
			t.Fatalf("a refused terminal got attached: %s", b)
		}
	}
}
