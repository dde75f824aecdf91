package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/ratelimit"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/testlab"
)

// These tests run API processes alone (no worker, relay or labs) against
// a private redis-server: `make deps` installs it. Every request comes
// from 127.0.0.1; other client addresses arrive as forwarding headers
// through a trusted proxy.

// apiOnly starts one API process on the given redis and state directory.
func apiOnly(t *testing.T, redisAddr, stateDir string, edit func(*config.Config)) *testlab.Stack {
	t.Helper()
	return testlab.Start(t, testlab.Options{Redis: redisAddr, StateDir: stateDir, Roles: &platform.Roles{API: true}, Config: edit})
}

// answer is what a sign-in got back.
type answer struct {
	status     int
	retryAfter string
	err        string
}

// post sends one JSON body with extra headers.
func post(t *testing.T, url string, body any, header map[string]string) answer {
	t.Helper()
	raw, _ := json.Marshal(body)
	req, err := http.NewRequest("POST", url, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: requestTimeout}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Error string `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	return answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), err: out.Error}
}

func emailLogin(t *testing.T, st *testlab.Stack, email string, header map[string]string) answer {
	t.Helper()
	return post(t, st.URL+"/api/login", map[string]string{"email": email}, header)
}

// rosterCode puts one candidate on a sitting's roster and returns their
// access code: the account a code sign-in is counted under.
func rosterCode(t *testing.T, st *testlab.Stack) string {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	if err := st.Store.CreateSitting(ctx, &sitting.Sitting{ID: "limits", ExamID: st.Exam.ID, Opens: now.Add(-time.Hour), Closes: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	issued, err := st.Store.AddEntries(ctx, "limits", []sitting.Row{{Line: 2, Email: "ada@example.com", Name: "Ada"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	return issued[0].Code
}

func adminLogin(t *testing.T, st *testlab.Stack, token string, header map[string]string) answer {
	t.Helper()
	return post(t, st.URL+"/api/admin/login", map[string]string{"token": token}, header)
}

// wantRefused checks a 429 that says, in whole seconds, when to retry.
func wantRefused(t *testing.T, a answer, maxRetry time.Duration) {
	t.Helper()
	if a.status != http.StatusTooManyRequests {
		t.Fatalf("got %d %q, want 429", a.status, a.err)
	}
	secs, err := strconv.Atoi(a.retryAfter)
	if err != nil || secs < 1 || time.Duration(secs)*time.Second > maxRetry {
		t.Errorf("Retry-After %q, want 1..%d seconds", a.retryAfter, int(maxRetry.Seconds()))
	}
	if a.err == "" {
		t.Error("a 429 without a message")
	}
}

// TestSigninLimitsAcrossProcesses: two API processes on one Redis hold
// one budget between them, per account and per address.
func TestSigninLimitsAcrossProcesses(t *testing.T) {
	tests := []struct {
		name   string
		budget func(*config.Config)
		body   func(code string, i int) map[string]string
		limit  int
		retry  time.Duration
	}{
		{"per account", func(c *config.Config) { c.Signin.PerAccount = ratelimit.Budget{Limit: 6, Window: time.Minute} },
			func(code string, _ int) map[string]string { return map[string]string{"code": code} }, 6, 10 * time.Second},
		{"per address", func(c *config.Config) { c.Signin.PerAddress = ratelimit.Budget{Limit: 8, Window: time.Minute} },
			func(_ string, i int) map[string]string {
				return map[string]string{"email": fmt.Sprintf("c%d@example.com", i)}
			}, 8, 8 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rdb, state := testlab.Redis(t), t.TempDir()
			apis := []*testlab.Stack{apiOnly(t, rdb, state, tc.budget), apiOnly(t, rdb, state, tc.budget)}
			code := rosterCode(t, apis[0])
			for i := range tc.limit {
				if a := post(t, apis[i%2].URL+"/api/login", tc.body(code, i), nil); a.status != http.StatusOK {
					t.Fatalf("sign-in %d on API %d: %d %q", i+1, i%2, a.status, a.err)
				}
			}
			for i, st := range apis {
				a := post(t, st.URL+"/api/login", tc.body(code, tc.limit+i), nil)
				wantRefused(t, a, tc.retry)
			}
		})
	}
}

// TestHallSignsInFromOneAddress: 500 candidates behind one address sign
// in within a minute on the default budgets, while wrong admin tokens
// from an address are refused with 429 once its failure budget is spent
// — the right token too, so that the refusal gives nothing away.
func TestHallSignsInFromOneAddress(t *testing.T) {
	const hall, failures = 500, 20
	st := apiOnly(t, testlab.Redis(t), t.TempDir(), func(c *config.Config) {
		c.TrustedProxies = []string{"127.0.0.1"}
		c.Signin.FailuresPerAddress = ratelimit.Budget{Limit: failures, Window: 10 * time.Minute}
		c.Signin.FailuresPerAccount = ratelimit.Budget{Limit: 1000, Window: 10 * time.Minute}
	})
	if d := config.Default().Signin.PerAddress; d.Limit < hall || d.Window > time.Minute {
		t.Fatalf("the default per-address budget %s does not admit a hall of %d a minute", d, hall)
	}
	fromHall := map[string]string{"X-Forwarded-For": "203.0.113.9"}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	refused := 0
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < hall; i += 8 {
				if a := emailLogin(t, st, fmt.Sprintf("candidate-%03d@example.com", i), fromHall); a.status != http.StatusOK {
					mu.Lock()
					refused++
					mu.Unlock()
					t.Errorf("candidate %d: %d %q", i, a.status, a.err)
				}
			}
		})
	}
	wg.Wait()
	if took := time.Since(start); took > time.Minute {
		t.Fatalf("500 sign-ins took %s, over the minute the test is about", took)
	}
	if refused > 0 {
		t.Fatalf("%d of the hall refused", refused)
	}
	t.Logf("%d sign-ins from one address in %s", hall, time.Since(start).Round(time.Millisecond))

	guesser := map[string]string{"X-Forwarded-For": "198.51.100.66"}
	for i := range failures {
		if a := adminLogin(t, st, fmt.Sprintf("wrong-token-%04d-xxxxxxxx", i), guesser); a.status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d %q, want 401", i+1, a.status, a.err)
		}
	}
	// 20 per 10 minutes: one more every 30s.
	wantRefused(t, adminLogin(t, st, "wrong-token-again-xxxxxxxx", guesser), 30*time.Second)
	wantRefused(t, adminLogin(t, st, st.AdminToken, guesser), 30*time.Second)
	wantRefused(t, emailLogin(t, st, "late@example.com", guesser), 30*time.Second)
	if a := adminLogin(t, st, st.AdminToken, fromHall); a.status != http.StatusOK {
		t.Errorf("the admin from another address: %d %q", a.status, a.err)
	}
}

// TestClientAddressBehindProxy: a forwarding header decides the client
// address only when the peer is a trusted proxy, and only the configured
// header; the limits count that address.
func TestClientAddressBehindProxy(t *testing.T) {
	const perAddress = 3
	tests := []struct {
		name    string
		trusted []string
		header  string
		// first admits perAddress sign-ins and is then refused; then
		// second is sent, and is either counted apart or as first.
		first, second map[string]string
		apart         bool
	}{
		{"X-Forwarded-For from a trusted peer", []string{"127.0.0.1"}, "",
			map[string]string{"X-Forwarded-For": "198.51.100.7"}, map[string]string{"X-Forwarded-For": "198.51.100.8"}, true},
		{"spoofed entry left of the client", []string{"127.0.0.0/8"}, "",
			map[string]string{"X-Forwarded-For": "198.51.100.7"}, map[string]string{"X-Forwarded-For": "203.0.113.50, 198.51.100.7"}, false},
		{"rightmost untrusted entry is the client", []string{"127.0.0.0/8"}, "",
			map[string]string{"X-Forwarded-For": "198.51.100.7"}, map[string]string{"X-Forwarded-For": "198.51.100.7, 198.51.100.9"}, true},
		{"Forwarded from a trusted peer", []string{"127.0.0.1"}, "Forwarded",
			map[string]string{"Forwarded": "for=198.51.100.7;proto=https"}, map[string]string{"Forwarded": `for="[2001:db8::7]:4711"`}, true},
		{"untrusted peer", nil, "",
			map[string]string{"X-Forwarded-For": "198.51.100.7"}, map[string]string{"X-Forwarded-For": "198.51.100.8"}, false},
		{"peer outside the trusted list", []string{"10.0.0.0/8"}, "",
			map[string]string{"X-Forwarded-For": "198.51.100.7"}, map[string]string{"X-Forwarded-For": "198.51.100.8"}, false},
		{"header other than the configured one", []string{"127.0.0.1"}, "Forwarded",
			map[string]string{"X-Forwarded-For": "198.51.100.7"}, map[string]string{"X-Forwarded-For": "198.51.100.8"}, false},
		{"obfuscated client counts as the proxy", []string{"127.0.0.1"}, "Forwarded",
			map[string]string{"Forwarded": "for=_hidden"}, map[string]string{"Forwarded": "for=unknown"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := apiOnly(t, testlab.Redis(t), t.TempDir(), func(c *config.Config) {
				c.TrustedProxies = tc.trusted
				if tc.header != "" {
					c.ProxyHeader = tc.header
				}
				c.Signin.PerAddress = ratelimit.Budget{Limit: perAddress, Window: time.Minute}
			})
			n := 0
			next := func() string { n++; return fmt.Sprintf("c%d@example.com", n) }
			for i := range perAddress {
				if a := emailLogin(t, st, next(), tc.first); a.status != http.StatusOK {
					t.Fatalf("sign-in %d: %d %q", i+1, a.status, a.err)
				}
			}
			wantRefused(t, emailLogin(t, st, next(), tc.first), 20*time.Second)
			a := emailLogin(t, st, next(), tc.second)
			if tc.apart && a.status != http.StatusOK {
				t.Errorf("another client: %d %q, want it counted apart", a.status, a.err)
			}
			if !tc.apart && a.status != http.StatusTooManyRequests {
				t.Errorf("%v after %v: %d %q, want it counted as the same client and refused", tc.second, tc.first, a.status, a.err)
			}
		})
	}
}

// TestAdminTokenGuessesSpendTheFailureBudget: an admin token sent as a
// bearer on the admin routes is no way around the sign-in limits. Wrong
// ones are charged to the address's failure budget; once it is spent the
// address is refused (the right token too, so a guess that hits is not
// told apart), while candidates at that address keep working.
func TestAdminTokenGuessesSpendTheFailureBudget(t *testing.T) {
	const budget = 5
	st := apiOnly(t, testlab.Redis(t), t.TempDir(), func(c *config.Config) {
		c.Signin.FailuresPerAddress = ratelimit.Budget{Limit: budget, Window: 10 * time.Minute}
		c.Practice = true
	})
	cand := st.Client()
	id := cand.Login(t, "guessing-hall@example.com")
	get := func(c *testlab.Client, path string) int {
		t.Helper()
		code, err := c.Do("GET", path, nil, nil)
		if err != nil && !strings.Contains(err.Error(), "decode") {
			t.Fatal(err)
		}
		return code
	}
	guesser := st.Client()
	for i := range budget {
		guesser.Token = fmt.Sprintf("wrong-admin-token-%02d-xxxxxxxx", i)
		paths := []string{"/api/admin/sessions", "/api/session/" + id + "/status"}
		if code := get(guesser, paths[i%2]); code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i+1, code)
		}
	}
	guesser.Token = "wrong-admin-token-last-xxxxxxxx"
	if code := get(guesser, "/api/admin/sessions"); code != http.StatusTooManyRequests {
		t.Fatalf("a guess past the budget: %d, want 429", code)
	}
	if code := get(st.Admin(), "/api/admin/sessions"); code != http.StatusTooManyRequests {
		t.Fatalf("the right token from the guessing address: %d, want 429 like any other", code)
	}
	if code := get(cand, "/api/session/"+id+"/status"); code != http.StatusOK {
		t.Fatalf("a candidate at the same address: %d, want 200", code)
	}
}
