package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
)

// Errors of sittings and rosters.
var (
	ErrNoSitting   = errors.New("sitting not found")
	ErrNoEntry     = errors.New("roster entry not found")
	ErrExists      = errors.New("already exists")
	ErrLiveSession = errors.New("the candidate's session is still running; submit it first")
)

// A sitting lives in sittings/{id}/: sitting.json, the admins' audit
// trail audit.jsonl, and its roster in batches/{batch}/{entry}.json. An
// import writes its entries into a staging folder and renames the folder
// into batches/ in one step, so a crash never leaves half a file imported;
// later changes to an entry (a new code, its session) rewrite that entry's
// file alone. Redis indexes codes and emails to entries for the sign-in
// path.
const (
	// longLockTTL bounds the sitting lock of a whole-roster operation
	// (import, export with new codes) on a roster of thousands.
	longLockTTL = 10 * time.Minute
	sittingsDir = "sittings"
	sittingFile = "sitting.json"
	batchesDir  = "batches"
	stagingDir  = "staging"
)

func (s *Store) sittingDir(id string) (string, error) {
	if !sitting.ValidID(id) {
		return "", fmt.Errorf("sitting %q: %w", id, ErrBadID)
	}
	return filepath.Join(s.dir, sittingsDir, id), nil
}

// CreateSitting stores a new sitting; ErrExists if the id is taken.
func (s *Store) CreateSitting(ctx context.Context, st *sitting.Sitting) error {
	if err := st.Validate(); err != nil {
		return err
	}
	dir, err := s.sittingDir(st.ID)
	if err != nil {
		return err
	}
	unlock, err := s.lock(ctx, "sitting", st.ID)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, sittingFile)); err == nil {
		return fmt.Errorf("sitting %s: %w", st.ID, ErrExists)
	}
	now := s.now().UTC()
	st.CreatedAt, st.UpdatedAt, st.Version = now, now, 1
	if err := os.MkdirAll(filepath.Join(dir, batchesDir), 0o750); err != nil {
		return fmt.Errorf("create sitting %s: %w", st.ID, err)
	}
	return s.writeSitting(dir, st)
}

func (s *Store) writeSitting(dir string, st *sitting.Sitting) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode sitting %s: %w", st.ID, err)
	}
	return WriteFileAtomic(filepath.Join(dir, sittingFile), b)
}

// GetSitting reads one sitting.
func (s *Store) GetSitting(ctx context.Context, id string) (*sitting.Sitting, error) {
	dir, err := s.sittingDir(id)
	if err != nil {
		return nil, err
	}
	return readRecord[sitting.Sitting](filepath.Join(dir, sittingFile), "sitting", id, ErrNoSitting)
}

// UpdateSitting applies fn to the sitting under its lock; the result must
// still validate and keep its id and exam.
func (s *Store) UpdateSitting(ctx context.Context, id string, fn func(*sitting.Sitting) error) (*sitting.Sitting, error) {
	dir, err := s.sittingDir(id)
	if err != nil {
		return nil, err
	}
	unlock, err := s.lock(ctx, "sitting", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := s.GetSitting(ctx, id)
	if err != nil {
		return nil, err
	}
	before := *st
	if err := fn(st); err != nil {
		return nil, err
	}
	if st.ID != before.ID {
		return nil, fmt.Errorf("%w: a sitting's id cannot change", sitting.ErrInvalid)
	}
	if err := st.Validate(); err != nil {
		return nil, err
	}
	st.Version++
	st.UpdatedAt = s.now().UTC()
	if err := s.writeSitting(dir, st); err != nil {
		return nil, err
	}
	return st, nil
}

// Sittings lists every sitting, newest window first.
func (s *Store) Sittings(ctx context.Context) ([]*sitting.Sitting, error) {
	des, err := os.ReadDir(filepath.Join(s.dir, sittingsDir))
	if errors.Is(err, os.ErrNotExist) {
		return []*sitting.Sitting{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list sittings: %w", err)
	}
	out := []*sitting.Sitting{}
	for _, de := range des {
		if !de.IsDir() || !sitting.ValidID(de.Name()) {
			continue
		}
		st, err := s.GetSitting(ctx, de.Name())
		if errors.Is(err, ErrNoSitting) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Opens.Equal(out[j].Opens) {
			return out[i].Opens.After(out[j].Opens)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// IssuedCode is an access code at the one moment it exists in clear: when
// an entry is added or its code reissued.
type IssuedCode struct {
	Entry sitting.Entry `json:"entry"`
	Code  string        `json:"code"`
}

func newEntryID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// Roster returns a sitting's entries in the order they were added.
func (s *Store) Roster(ctx context.Context, id string) ([]sitting.Entry, error) {
	dir, err := s.sittingDir(id)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, sittingFile)); err != nil {
		return nil, fmt.Errorf("sitting %s: %w", id, ErrNoSitting)
	}
	batches, err := os.ReadDir(filepath.Join(dir, batchesDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read roster of %s: %w", id, err)
	}
	out := []sitting.Entry{}
	for _, b := range batches {
		files, err := os.ReadDir(filepath.Join(dir, batchesDir, b.Name()))
		if err != nil {
			return nil, fmt.Errorf("read roster of %s: %w", id, err)
		}
		for _, f := range files {
			if !strings.HasSuffix(f.Name(), ".json") {
				continue
			}
			e, err := readEntry(filepath.Join(dir, batchesDir, b.Name(), f.Name()))
			if err != nil {
				return nil, err
			}
			out = append(out, *e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].AddedAt.Equal(out[j].AddedAt) {
			return out[i].AddedAt.Before(out[j].AddedAt)
		}
		if out[i].Line != out[j].Line {
			return out[i].Line < out[j].Line
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

func readEntry(p string) (*sitting.Entry, error) {
	return readRecord[sitting.Entry](p, "roster entry", strings.TrimSuffix(filepath.Base(p), ".json"), os.ErrNotExist)
}

// AddEntries puts rows on the sitting's roster, each with a fresh access
// code, all or none: an email already on the roster refuses the whole
// call. The codes are returned in clear this once.
func (s *Store) AddEntries(ctx context.Context, id string, rows []sitting.Row, selfRegistered bool) ([]IssuedCode, error) {
	dir, err := s.sittingDir(id)
	if err != nil {
		return nil, err
	}
	unlock, err := s.lockFor(ctx, "sitting", id, longLockTTL)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := s.GetSitting(ctx, id); err != nil {
		return nil, err
	}
	// Emails are checked again under the lock: a preview may be stale.
	for _, r := range rows {
		taken, err := s.rdb.Exists(ctx, s.key("sitting", id, "email", r.Email)).Result()
		if err != nil {
			return nil, fmt.Errorf("check roster of %s: %w", id, err)
		}
		if taken > 0 {
			return nil, fmt.Errorf("%w: line %d: %s is already on the roster", sitting.ErrInvalid, r.Line, r.Email)
		}
	}
	batch := s.now().UTC().Format("20060102T150405.000000000Z") + "-" + newEntryID()[:4]
	stage := filepath.Join(dir, stagingDir, batch)
	if err := os.MkdirAll(stage, 0o750); err != nil {
		return nil, fmt.Errorf("import roster of %s: %w", id, err)
	}
	defer os.RemoveAll(stage)
	now := s.now().UTC()
	issued := make([]IssuedCode, 0, len(rows))
	for _, r := range rows {
		code, hash := sitting.NewCode()
		e := sitting.Entry{ID: newEntryID(), Email: r.Email, Name: r.Name, ExternalID: r.ExternalID,
			CodeHash: hash, CodeIssuedAt: now, AddedAt: now, Line: r.Line, SelfRegistered: selfRegistered}
		// The staging folder is not yet the record, so each file is
		// written plainly; one sync of the filesystem below makes them all
		// durable before the rename commits them.
		b, err := json.MarshalIndent(&e, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encode roster entry: %w", err)
		}
		if err := os.WriteFile(filepath.Join(stage, e.ID+".json"), b, 0o640); err != nil {
			return nil, fmt.Errorf("import roster of %s: %w", id, err)
		}
		issued = append(issued, IssuedCode{Entry: e, Code: code})
	}
	if err := syncFS(stage); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, batchesDir), 0o750); err != nil {
		return nil, err
	}
	// The rename is the commit: before it no entry exists, after it all do.
	if err := os.Rename(stage, filepath.Join(dir, batchesDir, batch)); err != nil {
		return nil, fmt.Errorf("import roster of %s: %w", id, err)
	}
	if err := syncDir(filepath.Join(dir, batchesDir)); err != nil {
		return nil, err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, ic := range issued {
			s.indexEntry(ctx, p, id, batch, &ic.Entry, "")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index roster of %s: %w (rebuild-index repairs it)", id, err)
	}
	return issued, nil
}

func writeEntry(dir string, e *sitting.Entry) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("encode roster entry: %w", err)
	}
	return WriteFileAtomic(filepath.Join(dir, e.ID+".json"), b)
}

// indexEntry points the entry's code and email at it; oldHash, if set, is
// a code that no longer admits anyone.
func (s *Store) indexEntry(ctx context.Context, p redis.Pipeliner, sittingID, batch string, e *sitting.Entry, oldHash string) {
	p.Set(ctx, s.key("entry", e.ID), sittingID+"/"+batch, 0)
	p.Set(ctx, s.key("code", e.CodeHash), e.ID, 0)
	p.Set(ctx, s.key("sitting", sittingID, "email", e.Email), e.ID, 0)
	if oldHash != "" && oldHash != e.CodeHash {
		p.Del(ctx, s.key("code", oldHash))
	}
}

// entryPath finds an entry's file through the index.
func (s *Store) entryPath(ctx context.Context, entryID string) (sittingID, batch, path string, err error) {
	loc, err := s.rdb.Get(ctx, s.key("entry", entryID)).Result()
	if errors.Is(err, redis.Nil) {
		return "", "", "", fmt.Errorf("entry %s: %w", entryID, ErrNoEntry)
	}
	if err != nil {
		return "", "", "", fmt.Errorf("look up entry %s: %w", entryID, err)
	}
	sittingID, batch, ok := strings.Cut(loc, "/")
	dir, derr := s.sittingDir(sittingID)
	if !ok || derr != nil || strings.ContainsAny(batch, `/\`) || batch == ".." || batch == "." {
		return "", "", "", fmt.Errorf("entry %s: bad index entry %q", entryID, loc)
	}
	return sittingID, batch, filepath.Join(dir, batchesDir, batch, entryID+".json"), nil
}

// Entry reads one roster entry of a sitting.
func (s *Store) Entry(ctx context.Context, sittingID, entryID string) (*sitting.Entry, error) {
	sid, _, p, err := s.entryPath(ctx, entryID)
	if err != nil {
		return nil, err
	}
	if sid != sittingID {
		return nil, fmt.Errorf("entry %s: %w", entryID, ErrNoEntry)
	}
	e, err := readEntry(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("entry %s: %w", entryID, ErrNoEntry)
	}
	return e, err
}

// UpdateEntry applies fn to one entry under the entry's lock and
// rewrites the entry's file. A changed code is re-indexed and the old one
// stops admitting at once.
func (s *Store) UpdateEntry(ctx context.Context, sittingID, entryID string, fn func(*sitting.Entry) error) (*sitting.Entry, error) {
	// Each entry has a lock of its own, so a hall of candidates signing in
	// at once do not queue behind one another; whoever holds the
	// sitting's lock too takes it first.
	unlock, err := s.lock(ctx, "entry", entryID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.updateEntryLocked(ctx, sittingID, entryID, fn)
}

func (s *Store) updateEntryLocked(ctx context.Context, sittingID, entryID string, fn func(*sitting.Entry) error) (*sitting.Entry, error) {
	sid, batch, p, err := s.entryPath(ctx, entryID)
	if err != nil {
		return nil, err
	}
	if sid != sittingID {
		return nil, fmt.Errorf("entry %s: %w", entryID, ErrNoEntry)
	}
	e, err := readEntry(p)
	if err != nil {
		return nil, err
	}
	oldHash, oldEmail := e.CodeHash, e.Email
	if err := fn(e); err != nil {
		return nil, err
	}
	if e.ID != entryID || e.Email != oldEmail {
		return nil, fmt.Errorf("%w: an entry's id and email cannot change", sitting.ErrInvalid)
	}
	if err := writeEntry(filepath.Dir(p), e); err != nil {
		return nil, err
	}
	_, err = s.rdb.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		s.indexEntry(ctx, pl, sittingID, batch, e, oldHash)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index entry %s: %w", entryID, err)
	}
	return e, nil
}

// ReissueCode gives an entry a new access code; the old one stops working
// at once. The new code is returned in clear this once.
func (s *Store) ReissueCode(ctx context.Context, sittingID, entryID string) (IssuedCode, error) {
	code, hash := sitting.NewCode()
	e, err := s.UpdateEntry(ctx, sittingID, entryID, func(e *sitting.Entry) error {
		e.CodeHash = hash
		e.CodeIssuedAt = s.now().UTC()
		return nil
	})
	if err != nil {
		return IssuedCode{}, err
	}
	return IssuedCode{Entry: *e, Code: code}, nil
}

// ReissueAll gives every entry of the sitting a new code (for an export of
// the roster with codes): every earlier code stops working.
func (s *Store) ReissueAll(ctx context.Context, sittingID string) ([]IssuedCode, error) {
	unlock, err := s.lockFor(ctx, "sitting", sittingID, longLockTTL)
	if err != nil {
		return nil, err
	}
	defer unlock()
	entries, err := s.Roster(ctx, sittingID)
	if err != nil {
		return nil, err
	}
	out := make([]IssuedCode, 0, len(entries))
	for _, old := range entries {
		code, hash := sitting.NewCode()
		e, err := s.UpdateEntry(ctx, sittingID, old.ID, func(e *sitting.Entry) error {
			e.CodeHash = hash
			e.CodeIssuedAt = s.now().UTC()
			return nil
		})
		if err != nil {
			return nil, err
		}
		out = append(out, IssuedCode{Entry: *e, Code: code})
	}
	return out, nil
}

// EntryByCode finds whom a normalized access code admits: ErrUnknownCode
// when no one.
func (s *Store) EntryByCode(ctx context.Context, normalized string) (*sitting.Sitting, *sitting.Entry, error) {
	entryID, err := s.rdb.Get(ctx, s.key("code", sitting.HashCode(normalized))).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil, sitting.ErrUnknownCode
	}
	if err != nil {
		return nil, nil, fmt.Errorf("look up code: %w", err)
	}
	return s.entryWithSitting(ctx, entryID)
}

// EntryByEmail finds a sitting's entry for an email; ErrNoEntry when the
// email is not on its roster.
func (s *Store) EntryByEmail(ctx context.Context, sittingID, email string) (*sitting.Entry, error) {
	entryID, err := s.rdb.Get(ctx, s.key("sitting", sittingID, "email", email)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%s in %s: %w", email, sittingID, ErrNoEntry)
	}
	if err != nil {
		return nil, fmt.Errorf("look up email: %w", err)
	}
	return s.Entry(ctx, sittingID, entryID)
}

func (s *Store) entryWithSitting(ctx context.Context, entryID string) (*sitting.Sitting, *sitting.Entry, error) {
	sid, _, p, err := s.entryPath(ctx, entryID)
	if errors.Is(err, ErrNoEntry) {
		return nil, nil, sitting.ErrUnknownCode
	}
	if err != nil {
		return nil, nil, err
	}
	st, err := s.GetSitting(ctx, sid)
	if errors.Is(err, ErrNoSitting) {
		return nil, nil, sitting.ErrUnknownCode // a deleted sitting admits no one
	}
	if err != nil {
		return nil, nil, err
	}
	e, err := readEntry(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, sitting.ErrUnknownCode
	}
	if err != nil {
		return nil, nil, err
	}
	return st, e, nil
}

// entryLive reports whether the entry's session still has a lab or may
// get one.
func (s *Store) entryLive(ctx context.Context, e *sitting.Entry) (bool, error) {
	if e.SessionID == "" {
		return false, nil
	}
	sess, err := s.Get(ctx, e.SessionID)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !sess.Status.Terminal(), nil
}

// ResetEntry frees an entry for a new session (an admin's decision after
// the first one ended or failed): it refuses while that session runs.
func (s *Store) ResetEntry(ctx context.Context, sittingID, entryID string) (*sitting.Entry, error) {
	return s.UpdateEntry(ctx, sittingID, entryID, func(e *sitting.Entry) error {
		live, err := s.entryLive(ctx, e)
		if err != nil {
			return err
		}
		if live {
			return ErrLiveSession
		}
		e.SessionID = ""
		return nil
	})
}

// RemoveEntry takes an entry off the roster: its code stops working. It
// refuses while the entry's session runs; the session's record stays.
func (s *Store) RemoveEntry(ctx context.Context, sittingID, entryID string) error {
	unlock, err := s.lock(ctx, "sitting", sittingID)
	if err != nil {
		return err
	}
	defer unlock()
	unlockEntry, err := s.lock(ctx, "entry", entryID)
	if err != nil {
		return err
	}
	defer unlockEntry()
	sid, _, p, err := s.entryPath(ctx, entryID)
	if err != nil {
		return err
	}
	if sid != sittingID {
		return fmt.Errorf("entry %s: %w", entryID, ErrNoEntry)
	}
	e, err := readEntry(p)
	if err != nil {
		return err
	}
	live, err := s.entryLive(ctx, e)
	if err != nil {
		return err
	}
	if live {
		return ErrLiveSession
	}
	// Unindex first: from here the code admits no one even if the file
	// removal below is interrupted (rebuild-index would bring it back).
	if err := s.rdb.Del(ctx, s.key("code", e.CodeHash), s.key("sitting", sittingID, "email", e.Email), s.key("entry", e.ID)).Err(); err != nil {
		return fmt.Errorf("remove entry %s: %w", entryID, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove entry %s: %w", entryID, err)
	}
	return syncDir(filepath.Dir(p))
}

// RosterEmails is the set of emails on a sitting's roster (for an import's
// duplicate check).
func (s *Store) RosterEmails(ctx context.Context, sittingID string) (map[string]bool, error) {
	entries, err := s.Roster(ctx, sittingID)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(entries))
	for _, e := range entries {
		out[e.Email] = true
	}
	return out, nil
}

// rebuildSittings re-creates the roster index from the files.
func (s *Store) rebuildSittings(ctx context.Context) (int, error) {
	sittings, err := s.Sittings(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, st := range sittings {
		dir, _ := s.sittingDir(st.ID)
		batches, err := os.ReadDir(filepath.Join(dir, batchesDir))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, err
		}
		for _, b := range batches {
			files, err := os.ReadDir(filepath.Join(dir, batchesDir, b.Name()))
			if err != nil {
				return n, err
			}
			_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
				for _, f := range files {
					if !strings.HasSuffix(f.Name(), ".json") {
						continue
					}
					e, err := readEntry(filepath.Join(dir, batchesDir, b.Name(), f.Name()))
					if err != nil {
						return err
					}
					s.indexEntry(ctx, p, st.ID, b.Name(), e, "")
					n++
				}
				return nil
			})
			if err != nil {
				return n, fmt.Errorf("rebuild roster index of %s: %w", st.ID, err)
			}
		}
	}
	return n, nil
}

// SessionStatuses reads the states of the given sessions from the listing
// index (no metadata file is opened): what a roster page shows beside each
// entry. Ids the index does not know are left out.
func (s *Store) SessionStatuses(ctx context.Context, ids []string) (map[string]session.State, error) {
	out := make(map[string]session.State, len(ids))
	err := s.summaries(ctx, func(all map[string]*Summary) {
		for _, id := range ids {
			if sum, ok := all[id]; ok {
				out[id] = sum.Status
			}
		}
	})
	return out, err
}

// AuditSitting appends an entry to the sitting's own trail,
// sittings/{id}/audit.jsonl: who created, edited or deleted it, imported
// or exported its roster, reissued a code or reset or removed an entry.
func (s *Store) AuditSitting(ctx context.Context, id string, e AuditEntry) error {
	dir, err := s.sittingDir(id)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, sittingFile)); err != nil {
		return fmt.Errorf("sitting %s: %w", id, ErrNoSitting)
	}
	return s.appendAudit(ctx, "sitting-audit:"+id, filepath.Join(dir, auditFile), e)
}

// SittingAudit returns the sitting's trail, oldest first.
func (s *Store) SittingAudit(ctx context.Context, id string) ([]AuditEntry, error) {
	dir, err := s.sittingDir(id)
	if err != nil {
		return nil, err
	}
	return readAudit(filepath.Join(dir, auditFile))
}

// deletedDir keeps the record of deleted sittings. Its name is not a valid
// sitting id, so listings and rebuild-index pass it by.
const deletedDir = "_deleted"

// DeleteSitting takes a sitting out of service: it refuses with
// ErrLiveSession while any of its candidates' sessions has not ended;
// otherwise every code and email of its roster is unindexed (from then on
// its codes admit no one) and its folder — roster and audit trail, with
// record appended — moves to sittings/_deleted/{id}-{time}, freeing the
// id. The candidates' sessions keep their records.
func (s *Store) DeleteSitting(ctx context.Context, id string, record AuditEntry) error {
	dir, err := s.sittingDir(id)
	if err != nil {
		return err
	}
	unlock, err := s.lock(ctx, "sitting", id)
	if err != nil {
		return err
	}
	defer unlock()
	entries, err := s.Roster(ctx, id)
	if err != nil {
		return err
	}
	live := 0
	for i := range entries {
		l, err := s.entryLive(ctx, &entries[i])
		if err != nil {
			return err
		}
		if l {
			live++
		}
	}
	if live > 0 {
		return fmt.Errorf("sitting %s: %d of its sessions have not ended: %w", id, live, ErrLiveSession)
	}
	if err := s.AuditSitting(ctx, id, record); err != nil {
		return err
	}
	// Unindex first: from here no code of the sitting admits anyone, even
	// if the move below is interrupted (a second delete finishes it).
	var keys []string
	for _, e := range entries {
		keys = append(keys, s.key("code", e.CodeHash), s.key("sitting", id, "email", e.Email), s.key("entry", e.ID))
	}
	for len(keys) > 0 {
		n := min(len(keys), 3000)
		if err := s.rdb.Del(ctx, keys[:n]...).Err(); err != nil {
			return fmt.Errorf("delete sitting %s: %w", id, err)
		}
		keys = keys[n:]
	}
	trash := filepath.Join(s.dir, sittingsDir, deletedDir)
	if err := os.MkdirAll(trash, 0o750); err != nil {
		return fmt.Errorf("delete sitting %s: %w", id, err)
	}
	if err := os.Rename(dir, filepath.Join(trash, id+"-"+s.now().UTC().Format("20060102T150405.000000000Z"))); err != nil {
		return fmt.Errorf("delete sitting %s: %w", id, err)
	}
	return syncDir(filepath.Join(s.dir, sittingsDir))
}

// syncFS makes everything written to dir's filesystem durable: one call for
// a staging folder of thousands of files instead of an fsync each.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
