// Package auth is how examlab knows who is asking: the cookie names, bearer
// header parsing, candidate tokens (made here, stored only as hashes) and
// the constant-time admin check, shared by the API and the terminal relay
// so the two can never disagree on who someone is.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"

	"github.com/examlab/examlab/session"
)

// Cookie names. Both are HttpOnly and SameSite=Strict, so page scripts
// cannot read them and other sites cannot ride them.
const (
	CandidateCookie = "examlab_session"
	AdminCookie     = "examlab_admin"
)

// MinAdminToken is the shortest admin token accepted.
const MinAdminToken = 16

// maxToken bounds a presented token before it is hashed or looked up.
const maxToken = 128

var (
	// ErrUnauthorized: no credential, or one that names no one.
	ErrUnauthorized = errors.New("unknown or expired token")
	// ErrShortAdminToken: the configured admin token is too short to guard
	// anything.
	ErrShortAdminToken = errors.New("admin token of at least 16 characters required")
)

// Bearer returns the token of an "Authorization: Bearer <token>" header
// value, or "" when the header holds no bearer token.
func Bearer(header string) string {
	if len(header) > 7 && strings.EqualFold(header[:7], "bearer ") {
		return strings.TrimSpace(header[7:])
	}
	return ""
}

// NewToken returns a fresh random candidate token (256 bits, URL-safe) and
// the hash under which it is stored.
func NewToken() (token, hash string) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, HashToken(token)
}

// HashToken is the stored form of a token: hex sha256. Tokens are 256-bit
// random, so a plain hash is enough to make a leaked index useless.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// tokenStore resolves a candidate token to its session (store.Store).
type tokenStore interface {
	ByToken(ctx context.Context, token string) (*session.Session, error)
}

// Auth checks credentials for the API and the relay alike.
type Auth struct {
	adminSum [sha256.Size]byte
	tokens   tokenStore
}

// New returns an Auth for the deployment's admin token, looking candidate
// tokens up in tokens.
func New(adminToken string, tokens tokenStore) (*Auth, error) {
	if len(adminToken) < MinAdminToken {
		return nil, ErrShortAdminToken
	}
	if tokens == nil {
		return nil, errors.New("new auth: no token store")
	}
	return &Auth{adminSum: sha256.Sum256([]byte(adminToken)), tokens: tokens}, nil
}

// IsAdmin reports whether token is the admin token. It compares fixed-size
// hashes in constant time, so neither the token nor its length leaks
// through timing.
func (a *Auth) IsAdmin(token string) bool {
	if token == "" {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(sum[:], a.adminSum[:]) == 1
}

// AnyAdmin reports whether any of tokens is the admin token.
func (a *Auth) AnyAdmin(tokens ...string) bool {
	for _, t := range tokens {
		if a.IsAdmin(t) {
			return true
		}
	}
	return false
}

// Candidate returns the session of the first of tokens that is a
// candidate's (empty ones and the admin token are passed over), or
// ErrUnauthorized when none is. Other errors are lookups that failed.
func (a *Auth) Candidate(ctx context.Context, tokens ...string) (*session.Session, error) {
	for _, t := range tokens {
		if t == "" || len(t) > maxToken || a.IsAdmin(t) {
			continue
		}
		sess, err := a.tokens.ByToken(ctx, t)
		if err == nil {
			return sess, nil
		}
		if !errors.Is(err, ErrUnauthorized) {
			return nil, err
		}
	}
	return nil, ErrUnauthorized
}
