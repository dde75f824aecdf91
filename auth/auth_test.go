package auth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/session"
)

const adminToken = "an-admin-token-of-some-length"

// tokens is a token store in a map; lookups count so a test can tell a
// token that was never looked up (the admin token, an oversized one).
type tokens struct {
	byHash  map[string]*session.Session
	lookups int
	err     error
}

func (m *tokens) ByToken(_ context.Context, t string) (*session.Session, error) {
	m.lookups++
	if m.err != nil {
		return nil, m.err
	}
	if s, ok := m.byHash[HashToken(t)]; ok {
		return s, nil
	}
	return nil, ErrUnauthorized
}

func TestBearer(t *testing.T) {
	tests := []struct{ header, want string }{
		{"Bearer abc", "abc"},
		{"bearer  abc ", "abc"},
		{"BEARER abc", "abc"},
		{"Basic abc", ""},
		{"Bearer ", ""},
		{"Bearerabc", ""},
		{"", ""},
	}
	for _, tc := range tests {
		if got := Bearer(tc.header); got != tc.want {
			t.Errorf("Bearer(%q) = %q, want %q", tc.header, got, tc.want)
		}
	}
}

func TestNewTokenIsRandomAndStoredHashed(t *testing.T) {
	a, ha := NewToken()
	b, hb := NewToken()
	if a == b || ha == hb {
		t.Fatal("two tokens are the same")
	}
	if len(a) != 43 || strings.Contains(ha, a) || HashToken(a) != ha || len(ha) != 64 {
		t.Fatalf("token %q hash %q", a, ha)
	}
}

func TestNewRefusesAShortAdminToken(t *testing.T) {
	if _, err := New("short", &tokens{}); !errors.Is(err, ErrShortAdminToken) {
		t.Fatalf("err = %v", err)
	}
	if _, err := New(adminToken, nil); err == nil {
		t.Fatal("no token store accepted")
	}
}

func TestIsAdmin(t *testing.T) {
	a, err := New(adminToken, &tokens{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		token string
		want  bool
	}{
		{adminToken, true},
		{adminToken + "x", false},
		{adminToken[:len(adminToken)-1], false},
		{strings.ToUpper(adminToken), false},
		{"", false},
	}
	for _, tc := range tests {
		if got := a.IsAdmin(tc.token); got != tc.want {
			t.Errorf("IsAdmin(%q) = %v", tc.token, got)
		}
	}
	if !a.AnyAdmin("", "nope", adminToken) || a.AnyAdmin("", "nope") {
		t.Error("AnyAdmin")
	}
}

func TestCandidate(t *testing.T) {
	kim := &session.Session{ID: "kimkimkim123"}
	kimToken, kimHash := NewToken()
	store := &tokens{byHash: map[string]*session.Session{kimHash: kim}}
	a, err := New(adminToken, store)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name    string
		tokens  []string
		want    *session.Session
		lookups int
	}{
		{"candidate token", []string{kimToken}, kim, 1},
		{"empty first, then the cookie", []string{"", kimToken}, kim, 1},
		{"unknown, then known", []string{"stale", kimToken}, kim, 2},
		{"admin token is no candidate", []string{adminToken}, nil, 0},
		{"oversized token is not looked up", []string{strings.Repeat("x", 129)}, nil, 0},
		{"nothing", nil, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store.lookups = 0
			got, err := a.Candidate(ctx, tc.tokens...)
			if tc.want == nil {
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("err = %v, want ErrUnauthorized", err)
				}
			} else if err != nil || got != tc.want {
				t.Fatalf("got %v, %v", got, err)
			}
			if store.lookups != tc.lookups {
				t.Errorf("%d lookups, want %d", store.lookups, tc.lookups)
			}
		})
	}
	// A lookup that fails (Redis down) is not a bad credential.
	store.err = errors.New("redis: connection refused")
	if _, err := a.Candidate(ctx, kimToken); err == nil || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("failed lookup reported as %v", err)
	}
}

func TestCookies(t *testing.T) {
	app := fiber.New()
	app.Get("/in", func(c *fiber.Ctx) error { c.Cookie(Cookie(CandidateCookie, "tok", true, 3600e9)); return nil })
	app.Get("/out", func(c *fiber.Ctx) error { c.Cookie(ClearCookie(AdminCookie, false)); return nil })
	for path, want := range map[string][]string{
		"/in":  {"examlab_session=tok", "path=/", "HttpOnly", "secure", "SameSite=Strict", "expires="},
		"/out": {"examlab_admin=;", "HttpOnly", "SameSite=Strict", "expires=Thu, 01 Jan 1970"},
	} {
		resp, err := app.Test(httptestRequest(path))
		if err != nil {
			t.Fatal(err)
		}
		got := resp.Header.Get("Set-Cookie")
		for _, w := range want {
			if !strings.Contains(strings.ToLower(got), strings.ToLower(w)) {
				t.Errorf("%s: Set-Cookie %q lacks %q", path, got, w)
			}
		}
	}
}

func httptestRequest(path string) *http.Request { return httptest.NewRequest("GET", path, nil) }
