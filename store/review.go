package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
)

// A review lab is a lab restored from a finished session's archive for
// the exam staff: the same topology under a lab id of its own, each node
// from its image with the candidate's captured changes applied. Its
// record lives outside the session's folder, under {state}/reviews/, so
// the session's archive stays as the platform wrote it:
//
//	reviews/{id}.json         a review lab that is starting or ready
//	reviews/ended/{id}.json   one that ended or failed
//
// Moving a record to ended/ is what ends it, so the reaper and the panel
// find the live ones by listing one small folder. A live review lab holds
// one of the deployment's lab slots (the admission queue's "held" set),
// and its id's 8-character prefix is claimed like a session's, so its
// containers never collide with a candidate's.

// Errors of review labs; api/ maps them to status codes.
var (
	// ErrArchiveIncomplete: the session's archive cannot restore a lab.
	ErrArchiveIncomplete = errors.New("the archive is incomplete")
	// ErrNoCapacity: every lab slot of the deployment is taken.
	ErrNoCapacity = errors.New("no lab slot is free")
)

// ReviewState is where a review lab is in its life.
type ReviewState string

// Review lab states: starting → ready → ended, or failed.
const (
	ReviewStarting ReviewState = "starting"
	ReviewReady    ReviewState = "ready"
	ReviewEnded    ReviewState = "ended"
	ReviewFailed   ReviewState = "failed"
)

// Live reports whether the review lab holds a lab (or is making one).
func (s ReviewState) Live() bool { return s == ReviewStarting || s == ReviewReady }

// Review is one review lab's record.
type Review struct {
	// ID is the review lab's own id: its containers are exam-{id8}-{node}.
	ID string `json:"id"`
	// SessionID is the finished session it was restored from.
	SessionID string      `json:"session_id"`
	ExamID    string      `json:"exam_id"`
	Status    ReviewState `json:"status"`
	// Detail says why it failed or ended.
	Detail    string    `json:"detail,omitempty"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	ReadyAt   time.Time `json:"ready_at,omitzero"`
	// ExpiresAt is when the reaper ends it: TTL after it was asked for,
	// then TTL after it became ready.
	ExpiresAt time.Time        `json:"expires_at"`
	EndedAt   time.Time        `json:"ended_at,omitzero"`
	EndedBy   string           `json:"ended_by,omitempty"`
	TTL       time.Duration    `json:"ttl"`
	Nodes     []lab.NodeStatus `json:"nodes,omitempty"`
	// Mode is how the archive was applied: "changes" or "full".
	Mode string `json:"mode,omitempty"`
	// Regrade is the latest regrade run in this review lab.
	Regrade *ReviewRegrade `json:"regrade,omitempty"`
}

// ReviewRegrade is the progress and outcome of a regrade in a review lab.
type ReviewRegrade struct {
	State     string    `json:"state"` // queued, running, done, failed
	Nonce     string    `json:"nonce"`
	QueuedAt  time.Time `json:"queued_at"`
	DoneAt    time.Time `json:"done_at,omitzero"`
	Score     int       `json:"score,omitempty"`
	MaxScore  int       `json:"max_score,omitempty"`
	Error     string    `json:"error,omitempty"`
	QueuedBy  string    `json:"queued_by,omitempty"`
	ResultsAt time.Time `json:"results_at,omitzero"`
}

// Expired reports whether the review lab is past its time.
func (r *Review) Expired(now time.Time) bool {
	return !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt)
}

const (
	reviewsDir      = "reviews"
	reviewsEndedDir = "ended"
)

func (s *Store) reviewPath(id string, ended bool) (string, error) {
	if !lab.ValidSessionID(id) {
		return "", fmt.Errorf("review lab %q: %w", id, ErrBadID)
	}
	if ended {
		return filepath.Join(s.dir, reviewsDir, reviewsEndedDir, id+".json"), nil
	}
	return filepath.Join(s.dir, reviewsDir, id+".json"), nil
}

// ReviewDir is the review lab's own folder, for its terminal recordings:
// reviews/{id}/.
func (s *Store) ReviewDir(id string) (string, error) {
	if !lab.ValidSessionID(id) {
		return "", fmt.Errorf("review lab %q: %w", id, ErrBadID)
	}
	return filepath.Join(s.dir, reviewsDir, id), nil
}

// Review returns a review lab's record, live or ended; ErrNotFound when
// the id is no review lab's.
func (s *Store) Review(ctx context.Context, id string) (*Review, error) {
	for _, ended := range []bool{false, true} {
		p, err := s.reviewPath(id, ended)
		if err != nil {
			return nil, err
		}
		r, err := readRecord[Review](p, "review lab", id, ErrNotFound)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		return r, err
	}
	return nil, fmt.Errorf("review lab %s: %w", id, ErrNotFound)
}

// LiveReviews lists the review labs that are starting or ready, oldest
// first.
func (s *Store) LiveReviews(ctx context.Context) ([]*Review, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, reviewsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list review labs: %w", err)
	}
	var out []*Review
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || !lab.ValidSessionID(id) {
			continue
		}
		r, err := s.Review(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue // ended meanwhile
		}
		if err != nil {
			return nil, err
		}
		if r.Status.Live() {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// ReviewOf returns the session's live review lab, or ErrNotFound.
func (s *Store) ReviewOf(ctx context.Context, sessionID string) (*Review, error) {
	all, err := s.LiveReviews(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range all {
		if r.SessionID == sessionID {
			return r, nil
		}
	}
	return nil, fmt.Errorf("review lab of %s: %w", sessionID, ErrNotFound)
}

// isLiveReview reports whether id is a live review lab's (whose slot the
// admission sweep must leave alone: it has no session record).
func (s *Store) isLiveReview(ctx context.Context, id string) bool {
	r, err := s.Review(ctx, id)
	return err == nil && r.Status.Live()
}

// reviewTakeScript gives a review lab one of the deployment's slots when
// the deployment is under its limit. A review lab takes no sitting's
// slot: a sitting's capacity is its candidates'. ARGV: prefix, id, max
// labs (0: none). Answers 1 when the slot is the review lab's.
var reviewTakeScript = redis.NewScript(`
local P, id, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call("sismember", P .. "held", id) == 1 then return 1 end
if max > 0 and redis.call("scard", P .. "held") >= max then return 0 end
redis.call("sadd", P .. "held", id)
return 1
`)

// StartReview records a new review lab of the finished session sess,
// asked for by by, or returns the session's live one (created false). The
// new lab claims its id's prefix and a lab slot; with none free it is
// ErrNoCapacity and nothing is recorded.
func (s *Store) StartReview(ctx context.Context, sess *session.Session, by string, ttl time.Duration) (r *Review, created bool, err error) {
	unlock, err := s.lock(ctx, "review", sess.ID)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	if cur, err := s.ReviewOf(ctx, sess.ID); err == nil {
		return cur, false, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, false, err
	}
	var id string
	for i := 0; ; i++ {
		id = NewSessionID()
		ok, err := s.rdb.SetNX(ctx, s.key("short", id[:8]), id, 0).Result()
		if err != nil {
			return nil, false, fmt.Errorf("claim review lab prefix: %w", err)
		}
		if ok {
			break
		}
		if i > 20 {
			return nil, false, errors.New("claim review lab prefix: no free prefix")
		}
	}
	ok, err := reviewTakeScript.Run(ctx, s.rdb, []string{s.queuePrefix() + "held"}, s.queuePrefix(), id, s.maxLabs).Int()
	if err != nil || ok != 1 {
		s.releaseReviewShort(context.WithoutCancel(ctx), id)
		if err != nil {
			return nil, false, fmt.Errorf("take a lab slot for a review lab: %w", err)
		}
		return nil, false, fmt.Errorf("all %d lab slots of this deployment are in use; a review lab needs one of them: try again when a lab ends: %w", s.maxLabs, ErrNoCapacity)
	}
	now := s.now().UTC()
	r = &Review{
		ID: id, SessionID: sess.ID, ExamID: sess.ExamID, Status: ReviewStarting,
		CreatedBy: by, CreatedAt: now, ExpiresAt: now.Add(ttl), TTL: ttl,
	}
	if err := s.writeReview(r); err != nil {
		_, _ = s.ReleaseSlot(context.WithoutCancel(ctx), id)
		s.releaseReviewShort(context.WithoutCancel(ctx), id)
		return nil, false, err
	}
	return r, true, nil
}

// UpdateReview applies fn to a live review lab's record under its lock.
// A record fn leaves ended or failed moves to reviews/ended/, and its slot
// and prefix are given back; the caller then admits whoever waits.
// Updating an ended record is allowed (fn sees it ended) but it never
// comes back to life.
func (s *Store) UpdateReview(ctx context.Context, id string, fn func(*Review) error) (*Review, error) {
	unlock, err := s.lock(ctx, "review-lab", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := s.Review(ctx, id)
	if err != nil {
		return nil, err
	}
	wasLive := r.Status.Live()
	if err := fn(r); err != nil {
		return nil, err
	}
	if !wasLive && r.Status.Live() {
		return nil, fmt.Errorf("review lab %s has ended: %w", id, session.ErrNotAllowed)
	}
	if err := s.writeReview(r); err != nil {
		return nil, err
	}
	if wasLive && !r.Status.Live() {
		p, _ := s.reviewPath(id, false)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("end review lab %s: %w", id, err)
		}
	}
	if !r.Status.Live() {
		if _, err := s.ReleaseSlot(ctx, id); err != nil {
			return r, err
		}
		s.releaseReviewShort(ctx, id)
	}
	return r, nil
}

// writeReview writes the record where its state keeps it.
func (s *Store) writeReview(r *Review) error {
	p, err := s.reviewPath(r.ID, !r.Status.Live())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return fmt.Errorf("write review lab %s: %w", r.ID, err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode review lab %s: %w", r.ID, err)
	}
	return WriteFileAtomic(p, b)
}

func (s *Store) releaseReviewShort(ctx context.Context, id string) {
	s.rdb.Eval(ctx, `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`,
		[]string{s.key("short", id[:8])}, id)
}

// HoldReviewSlot puts a live review lab back among the slot holders (after
// Redis lost its keys): it runs whatever the limit, as the lab exists.
func (s *Store) HoldReviewSlot(ctx context.Context, id string) error {
	if err := s.rdb.SAdd(ctx, s.queuePrefix()+"held", id).Err(); err != nil {
		return fmt.Errorf("hold slot of review lab %s: %w", id, err)
	}
	return nil
}

// ArchiveNode is one node's snapshot in a session's archive.
type ArchiveNode struct {
	Node string
	Path string
	File File
}

// Archive is what a review lab is restored from.
type Archive struct {
	Manifest     *Manifest
	ManifestPath string
	Nodes        []ArchiveNode
}

// CheckArchive checks that the session's archive holds a whole snapshot of
// every node: the manifest, and for each node its tar, present with the
// size and sha256 the manifest gives. With hash it reads every tar in
// full to compare its sha256; without, only sizes are compared (for a
// caller that checksums while it reads the tars anyway). A refusal (ErrArchiveIncomplete) names what is missing or wrong in plain
// words.
func (s *Store) CheckArchive(ctx context.Context, id string, nodes []lab.Node, hash bool) (*Archive, error) {
	m, err := s.Manifest(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("the session has no snapshot manifest (%s/%s): %w", SnapshotDir, ManifestName, ErrArchiveIncomplete)
	}
	if err != nil {
		return nil, fmt.Errorf("the snapshot manifest cannot be read (%v): %w", err, ErrArchiveIncomplete)
	}
	files := map[string]File{}
	for _, f := range m.Files {
		files[f.Name] = f
	}
	mp, err := s.Path(id, SnapshotDir, ManifestName)
	if err != nil {
		return nil, err
	}
	a := &Archive{Manifest: m, ManifestPath: mp}
	for _, n := range nodes {
		name := n.Container + ".tar"
		f, ok := files[name]
		if !ok {
			return nil, fmt.Errorf("the snapshot manifest lists no %s for node %s: %w", name, n.Name, ErrArchiveIncomplete)
		}
		p, err := s.Path(id, SnapshotDir, name)
		if err != nil {
			return nil, err
		}
		if err := checkFile(ctx, p, f, hash); err != nil {
			return nil, fmt.Errorf("%s/%s of node %s %v: %w", SnapshotDir, name, n.Name, err, ErrArchiveIncomplete)
		}
		a.Nodes = append(a.Nodes, ArchiveNode{Node: n.Name, Path: p, File: f})
	}
	return a, nil
}

// checkFile compares a file with its manifest entry.
func checkFile(ctx context.Context, path string, want File, hash bool) error {
	fh, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("is missing")
	}
	if err != nil {
		return fmt.Errorf("cannot be read (%v)", err)
	}
	defer fh.Close()
	info, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("cannot be read (%v)", err)
	}
	if info.Size() != want.Size {
		return fmt.Errorf("is %d bytes where the manifest says %d", info.Size(), want.Size)
	}
	if want.SHA256 == "" {
		return errors.New("has no sha256 in the manifest")
	}
	if !hash {
		return nil
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, ctxReader{ctx, fh}); err != nil {
		return fmt.Errorf("cannot be read (%v)", err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("has sha256 %s where the manifest says %s", got, want.SHA256)
	}
	return nil
}

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
