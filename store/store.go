// Package store keeps session records: the files on shared storage are
// the record (metadata, answers, terminal logs, snapshots, audit), written
// atomically; Redis holds the live index for fast lookup and listing and
// can be rebuilt from the files at any time.
package store

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
)

// Errors the store returns; api/ maps them to status codes.
var (
	ErrNotFound     = errors.New("session not found")
	ErrBadID        = errors.New("malformed id")
	ErrTooLarge     = errors.New("too large")
	ErrLocked       = errors.New("session is busy, try again")
	ErrClosed       = errors.New("session no longer accepts changes")
	ErrUnauthorized = auth.ErrUnauthorized
)

// Options configures a Store. Zero values mean the documented defaults.
type Options struct {
	// Dir is the state directory on shared storage; sessions live in
	// Dir/sessions/{id}. Required.
	Dir string
	// Redis is the index. Required.
	Redis redis.UniversalClient
	// Prefix namespaces every Redis key; default "examlab:".
	Prefix string
	// LockTTL bounds how long a writer holds a session's lock and how
	// long others wait for it; default 30s. A crashed writer's lock runs
	// out within seconds (lockLease), since only a live one renews it.
	LockTTL time.Duration
	// MaxAnswerBytes bounds one answer's value; default 64 KiB.
	MaxAnswerBytes int
	// MaxLabs bounds the labs of the whole deployment at once (the
	// admission queue's global limit); 0: no limit.
	MaxLabs int
	// ExamVersion answers the current version (exam.Fingerprint) of an
	// exam; only warm labs of that version are claimed (warm.go). Nil, or
	// an empty answer: no warm lab of the exam is claimed.
	ExamVersion func(examID string) string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// SigningKey seals session folders (see Seal); nil: nothing is sealed,
	// and writes do not renew a seal found in place.
	SigningKey ed25519.PrivateKey
	// Logger hears of seals that fail; default slog.Default().
	Logger *slog.Logger
	// ExecStartTTL is how long the note of an exec start whose end never
	// came holds off a freeze of its lab (execgate.go); default
	// lab.ExecStartTTL.
	ExecStartTTL time.Duration
}

// Store reads and writes session records.
type Store struct {
	dir     string
	rdb     redis.UniversalClient
	prefix  string
	lockTTL time.Duration
	maxAns  int
	maxLabs int
	now     func() time.Time
	// examVersion is Options.ExamVersion.
	examVersion func(examID string) string
	cache       summaryCache
	sign        ed25519.PrivateKey
	log         *slog.Logger
	execTTL     time.Duration
}

// New opens the store rooted at o.Dir.
func New(o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("open store: no state directory")
	}
	if o.Redis == nil {
		return nil, errors.New("open store: no redis client")
	}
	if o.Prefix == "" {
		o.Prefix = "examlab:"
	}
	if o.LockTTL == 0 {
		o.LockTTL = 30 * time.Second
	}
	if o.MaxAnswerBytes == 0 {
		o.MaxAnswerBytes = 64 << 10
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxLabs < 0 {
		return nil, errors.New("open store: a negative lab limit")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sessions"), 0o750); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ExecStartTTL <= 0 {
		o.ExecStartTTL = lab.ExecStartTTL
	}
	return &Store{dir: dir, rdb: o.Redis, prefix: o.Prefix, lockTTL: o.LockTTL, maxAns: o.MaxAnswerBytes, maxLabs: o.MaxLabs, now: o.Now,
		sign: o.SigningKey, log: o.Logger, examVersion: o.ExamVersion, execTTL: o.ExecStartTTL}, nil
}

// Redis returns the index client, for callers that share it (health checks).
func (s *Store) Redis() redis.UniversalClient { return s.rdb }

// MaxAnswerBytes is the largest answer value accepted.
func (s *Store) MaxAnswerBytes() int { return s.maxAns }

func (s *Store) key(parts ...string) string { return s.prefix + strings.Join(parts, ":") }

// SessionDir is sessions/{id}. The id is validated so the path can never
// leave the sessions folder.
func (s *Store) SessionDir(id string) (string, error) {
	if !lab.ValidSessionID(id) {
		return "", fmt.Errorf("session %q: %w", id, ErrBadID)
	}
	return filepath.Join(s.dir, "sessions", id), nil
}

// Path joins name under the session's folder and refuses anything that
// would resolve outside it.
func (s *Store) Path(id string, name ...string) (string, error) {
	dir, err := s.SessionDir(id)
	if err != nil {
		return "", err
	}
	p := filepath.Join(append([]string{dir}, name...)...)
	if p != dir && !strings.HasPrefix(p, dir+string(filepath.Separator)) {
		return "", fmt.Errorf("path %q: %w", filepath.Join(name...), ErrBadID)
	}
	return p, nil
}

// Session folders.
const (
	AnswersDir   = "answers"
	TerminalDir  = "terminal-logs"
	SnapshotDir  = "docker-snapshots"
	metadataFile = "metadata.json"
	auditFile    = "audit.jsonl"
)

// NewSessionID returns a random 12-character lowercase slug.
func NewSessionID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	// A leading letter keeps names like exam-1234… from looking numeric.
	b[0] = alphabet[int(b[0])%26]
	return string(b)
}

// NormalizeEmail lower-cases and trims an address and checks its shape.
func NormalizeEmail(email string) (string, error) {
	e, err := sitting.NormalizeEmail(email)
	if err != nil {
		return "", fmt.Errorf("email %q: %w", email, ErrBadID)
	}
	return e, nil
}

// Get returns the session's record from its metadata file.
func (s *Store) Get(ctx context.Context, id string) (*session.Session, error) {
	p, err := s.Path(id, metadataFile)
	if err != nil {
		return nil, err
	}
	return readRecord[session.Session](p, "session", id, ErrNotFound)
}

// readRecord reads one JSON record file; a missing file is missing (the
// store's not-found error of its kind).
func readRecord[T any](path, kind, id string, missing error) (*T, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s %s: %w", kind, id, missing)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", kind, id, err)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", kind, id, err)
	}
	return &v, nil
}

// SignIn is who signs in, to which exam, through which roster entry.
type SignIn struct {
	SittingID string
	EntryID   string
	ExamID    string
	Duration  time.Duration
	Runtime   string
}

// SignIn returns the roster entry's one session with a fresh bearer
// token, creating the session on the entry's first sign-in. An entry keeps
// its session whatever becomes of it (a finished candidate sees that their
// work was received) until an admin resets the entry.
func (s *Store) SignIn(ctx context.Context, in SignIn) (*session.Session, string, error) {
	unlock, err := s.lock(ctx, "entry", in.EntryID)
	if err != nil {
		return nil, "", err
	}
	defer unlock()
	e, err := s.Entry(ctx, in.SittingID, in.EntryID)
	if err != nil {
		return nil, "", err
	}
	token, th := auth.NewToken()
	if e.SessionID != "" {
		sess, err := s.Update(ctx, e.SessionID, func(x *session.Session) error {
			x.TokenHashes = append(x.TokenHashes, th)
			return nil
		})
		if err == nil {
			return sess, token, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, "", err
		}
		// The session was deleted by retention: the entry starts afresh.
	}

	sess := session.New(e.Email, in.ExamID, in.Runtime, in.Duration, s.now())
	sess.Name, sess.SittingID, sess.EntryID = e.Name, in.SittingID, e.ID
	sess.TokenHashes = []string{th}
	// The 8-character prefix names containers, networks and Nomad jobs, so
	// it must be unique among live sessions; claim it before anything else.
	for i := 0; ; i++ {
		id := NewSessionID()
		ok, err := s.rdb.SetNX(ctx, s.key("short", id[:8]), id, 0).Result()
		if err != nil {
			return nil, "", fmt.Errorf("claim session prefix: %w", err)
		}
		if ok {
			sess.ID, sess.Short = id, id[:8]
			break
		}
		if i > 20 {
			return nil, "", errors.New("claim session prefix: no free prefix")
		}
	}
	if err := s.write(ctx, sess); err != nil {
		return nil, "", err
	}
	if _, err := s.updateEntryLocked(ctx, in.SittingID, e.ID, func(x *sitting.Entry) error {
		x.SessionID = sess.ID
		return nil
	}); err != nil {
		return nil, "", fmt.Errorf("bind session to roster entry: %w", err)
	}
	return sess, token, nil
}

// ByToken resolves a candidate's bearer token to their session.
func (s *Store) ByToken(ctx context.Context, token string) (*session.Session, error) {
	if token == "" || len(token) > 128 {
		return nil, ErrUnauthorized
	}
	id, err := s.rdb.Get(ctx, s.key("token", auth.HashToken(token))).Result()
	if errors.Is(err, redis.Nil) {
		return nil, ErrUnauthorized
	}
	if err != nil {
		return nil, fmt.Errorf("look up token: %w", err)
	}
	sess, err := s.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrUnauthorized
	}
	return sess, err
}

// Update applies fn to the session under its lock and writes the result
// durably. fn may refuse by returning an error; nothing is written then.
func (s *Store) Update(ctx context.Context, id string, fn func(*session.Session) error) (sess *session.Session, err error) {
	werr := s.sealedWrite(ctx, id, "update", func() error {
		sess, err = s.update(ctx, id, fn)
		return err
	})
	if err == nil {
		err = werr
	}
	return sess, err
}

func (s *Store) update(ctx context.Context, id string, fn func(*session.Session) error) (*session.Session, error) {
	unlock, err := s.lock(ctx, "session", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sess, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	before := sess.Status
	if err := fn(sess); err != nil {
		return nil, err
	}
	if !before.CanMove(sess.Status) && !sess.ParkedFrom(before) {
		return nil, fmt.Errorf("session %s: move from %s to %s: %w", id, before, sess.Status, session.ErrNotAllowed)
	}
	sess.Version++
	sess.UpdatedAt = s.now().UTC()
	if err := s.write(ctx, sess); err != nil {
		return nil, err
	}
	return sess, nil
}

// write stores the metadata file, then indexes it. The file is the record:
// if indexing fails the caller sees the error and a rebuild repairs Redis.
func (s *Store) write(ctx context.Context, sess *session.Session) error {
	p, err := s.Path(sess.ID, metadataFile)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(sess, "", "  ")
	if err != nil {
		return fmt.Errorf("encode session %s: %w", sess.ID, err)
	}
	if err := WriteFileAtomic(p, b); err != nil {
		return err
	}
	return s.index(ctx, sess)
}

// lock takes a short Redis lock so that writers in different processes
// (API, workers, relay) serialise their read-modify-write of one record.
func (s *Store) lock(ctx context.Context, kind, name string) (func(), error) {
	return s.lockFor(ctx, kind, name, s.lockTTL)
}

// lockLease is how long a record lock outlives a holder that stopped
// renewing it. The holder renews it every lockLease/3 while it works, so
// a process killed holding a lock keeps the others waiting for seconds,
// not for the lock's whole TTL (every save of the session's answers
// would wait that long).
const lockLease = 5 * time.Second

// lockFor is lock with a TTL of its own, for the few operations that may
// hold a lock longer than a record's read-modify-write (a roster import of
// thousands of rows). The TTL bounds both how long a caller waits for the
// lock and how long a live holder keeps renewing it.
func (s *Store) lockFor(ctx context.Context, kind, name string, ttl time.Duration) (func(), error) {
	key := s.key("lock", kind, name)
	tok, _ := auth.NewToken()
	lease := min(ttl, lockLease)
	deadline := time.Now().Add(ttl)
	for {
		ok, err := s.rdb.SetNX(ctx, key, tok, lease).Result()
		if err != nil {
			return nil, fmt.Errorf("lock %s %s: %w", kind, name, err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("lock %s %s: %w", kind, name, ErrLocked)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(15 * time.Millisecond):
		}
	}
	stop := make(chan struct{})
	if lease < ttl {
		go s.renewLock(key, tok, lease, time.Now().Add(ttl), stop)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			// Release only our own lock: compare-and-delete.
			unlockScript.Run(context.WithoutCancel(ctx), s.rdb, []string{key}, tok)
		})
	}, nil
}

// renewLock extends the lock key holds for tok by lease every lease/3
// until stop is closed or until is reached.
func (s *Store) renewLock(key, tok string, lease time.Duration, until time.Time, stop <-chan struct{}) {
	t := time.NewTicker(lease / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			if now.After(until) {
				return
			}
			// The script renews only our own lock; one that ran out
			// meanwhile is not taken back.
			renewLockScript.Run(context.Background(), s.rdb, []string{key}, tok, lease.Milliseconds())
		}
	}
}

// ReleaseShort frees the session's 8-character prefix once its lab is gone.
func (s *Store) ReleaseShort(ctx context.Context, sess *session.Session) error {
	err := s.rdb.Eval(ctx, `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`,
		[]string{s.key("short", sess.Short)}, sess.ID).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("release prefix %s: %w", sess.Short, err)
	}
	return nil
}
