// Package testlab starts real parts for examlab's tests: a private
// redis-server per test on a unix socket, and the whole platform in
// process against it and the real Docker engine.
package testlab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab/redistest"
)

// Timeouts tests share. They tell a stuck lab from a slow one; they are
// no measure of speed. An archive on a loaded CI machine includes closing
// terminals, grading and a full export of every node through exec on the
// Nomad runtime.
const (
	ProvisionTimeout = 3 * time.Minute
	ArchiveTimeout   = 5 * time.Minute
)

// Redis starts a private redis-server for the test; see redistest.Start.
func Redis(t testing.TB) string { return redistest.Start(t) }

// Options tune a test stack.
type Options struct {
	// Roles defaults to every role in one process.
	Roles *platform.Roles
	// Redis reuses a running test redis (to restart the platform on the
	// same data); default: a new one.
	Redis string
	// StateDir reuses a state directory; default: a new temp dir.
	StateDir string
	// Config edits the configuration before the platform starts.
	Config func(*config.Config)
	// Platform options (runtime override, no scheduler).
	Platform platform.Options
}

// Stack is a running examlab for a test.
type Stack struct {
	*platform.Platform
	URL        string
	AdminToken string
	t          testing.TB
	codes      *codeBook
}

// Start builds and starts the platform; it is shut down when the test ends.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	checkEngine(t)
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.RelayListen = "127.0.0.1:0"
	cfg.Redis = o.Redis
	if cfg.Redis == "" {
		cfg.Redis = Redis(t)
	}
	cfg.StateDir = o.StateDir
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.AdminToken = "test-admin-token-0123456789"
	// Each stack owns its labs: its reaper must not see other tests' labs
	// on the shared engine.
	cfg.Instance = "t-" + strings.ToLower(store.NewSessionID())
	cfg.WorkerConcurrency = 8
	// Tests sign candidates in by email through the practice sitting;
	// tests of the front door itself make their own sittings.
	cfg.Practice = true
	if o.Config != nil {
		o.Config(&cfg)
	}
	roles := platform.All
	if o.Roles != nil {
		roles = *o.Roles
	}
	if o.Platform.Logger == nil {
		o.Platform.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx := context.Background()
	p, err := platform.New(ctx, cfg, roles, o.Platform)
	if err != nil {
		t.Fatalf("new platform: %v", err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start platform: %v", err)
	}
	s := &Stack{Platform: p, AdminToken: cfg.AdminToken, t: t, codes: &codeBook{m: map[string]string{}}}
	if a := p.APIAddr(); a != "" {
		s.URL = "http://" + a
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return s
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Client is an HTTP client for one candidate or admin, with a cookie jar.
type Client struct {
	Base  string
	Token string // sent as a bearer token when set
	HTTP  *http.Client
	codes *codeBook
}

// codeBook remembers the access code the practice sitting issued to each
// email, so a test can sign the same candidate in again (a second window)
// the way a person would: with their code.
type codeBook struct {
	mu sync.Mutex
	m  map[string]string
}

// Client returns a fresh client for the stack.
func (s *Stack) Client() *Client {
	jar, _ := cookiejar.New(nil)
	return &Client{Base: s.URL, HTTP: &http.Client{Jar: jar, Timeout: 30 * time.Second}, codes: s.codes}
}

// Admin returns a client carrying the admin token.
func (s *Stack) Admin() *Client {
	c := s.Client()
	c.Token = s.AdminToken
	return c
}

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (if non-nil). It returns the status code.
func (c *Client) Do(method, path string, body any, out any) (int, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.Base+path, rd)
	if err != nil {
		return 0, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s %s answer %q: %w", method, path, raw, err)
		}
	}
	return resp.StatusCode, nil
}

// Session is the part of a session view tests read.
type Session struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Deadline string `json:"deadline"`
	// ReadyAt is when the platform recorded the lab ready (the deadline
	// counts from it); zero before.
	ReadyAt time.Time `json:"ready_at"`
	Error   string    `json:"error"`
	Nodes   []struct {
		Name      string `json:"name"`
		Container string `json:"container"`
		State     string `json:"state"`
		IP        string `json:"ip"`
	} `json:"nodes"`
}

// Login logs a candidate in and returns their session id; the client
// keeps the cookie and the token.
func (c *Client) Login(t testing.TB, email string) string {
	t.Helper()
	var out struct {
		SessionID string `json:"session_id"`
		Token     string `json:"token"`
		Code      string `json:"code"`
	}
	body := map[string]string{"email": email}
	if c.codes != nil {
		c.codes.mu.Lock()
		defer c.codes.mu.Unlock()
		if code := c.codes.m[email]; code != "" {
			body = map[string]string{"code": code}
		}
	}
	code, err := c.Do("POST", "/api/login", body, &out)
	if err != nil || code != 200 {
		t.Fatalf("login %s: %d %v", email, code, err)
	}
	if out.Code != "" && c.codes != nil {
		c.codes.m[email] = out.Code
	}
	c.Token = out.Token
	return out.SessionID
}

// Status returns the session's current view.
func (c *Client) Status(t testing.TB, id string) Session {
	t.Helper()
	var s Session
	code, err := c.Do("GET", "/api/session/"+id+"/status", nil, &s)
	if err != nil || code != 200 {
		t.Fatalf("status %s: %d %v", id, code, err)
	}
	return s
}

// StartLab starts the session and waits until it is ready.
func (c *Client) StartLab(t testing.TB, id string) Session {
	t.Helper()
	code, err := c.Do("POST", "/api/session/"+id+"/start", nil, nil)
	if err != nil || (code != 202 && code != 200) {
		t.Fatalf("start %s: %d %v", id, code, err)
	}
	return c.WaitStatus(t, id, ProvisionTimeout, "ready")
}

// WaitStatus polls the session until it reaches one of want, failing the
// test if it ends failed or time runs out.
func (c *Client) WaitStatus(t testing.TB, id string, timeout time.Duration, want ...string) Session {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last Session
	for time.Now().Before(deadline) {
		last = c.Status(t, id)
		for _, w := range want {
			if last.Status == w {
				return last
			}
		}
		if last.Status == "failed" {
			t.Fatalf("session %s failed: %s", id, last.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("session %s: still %s after %s, want %v%s", id, last.Status, timeout, want, EngineTrouble())
	return last
}
