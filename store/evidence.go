package store

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/evidence"
)

// ErrEvidence is a session folder that no longer matches its seal; the
// platform does not sign it again.
var ErrEvidence = errors.New("the session's files no longer match their seal")

// States of a session's evidence, as the panel shows them.
const (
	// EvidenceUnsealed: the session has not completed, so nothing is sealed.
	EvidenceUnsealed = "unsealed"
	// EvidenceVerified: every file was hashed and matched the seal, and no
	// file changed since.
	EvidenceVerified = "verified"
	// EvidenceFailed: a file or the signature does not match the seal.
	EvidenceFailed = "failed"
	// EvidenceUnchecked: the signature, the list of files and their sizes
	// match, but a file changed on disk since its contents were last
	// hashed; opening the session hashes them.
	EvidenceUnchecked = "unchecked"
)

// EvidenceStatus is what is known of a session's seal.
type EvidenceStatus struct {
	State     string    `json:"state"`
	SealedAt  time.Time `json:"sealed_at,omitzero"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
	// Key is the fingerprint of the key the seal is checked against.
	Key      string   `json:"key,omitempty"`
	Files    int      `json:"files,omitempty"`
	Problems []string `json:"problems,omitempty"`
}

// evidenceRecord is the last full verification of a session, kept in
// Redis with the stamps of the files it hashed: while they are the same,
// the outcome stands without reading the files again.
type evidenceRecord struct {
	EvidenceStatus
	Stamps map[string]string `json:"stamps"`
	// Renew marks a seal the platform failed to renew after a write into
	// a folder it had just verified; Known are the hashes of that
	// verification. While the stamps are unchanged the next write or seal
	// resumes from them.
	Renew bool                `json:"renew,omitempty"`
	Known []evidence.Observed `json:"known,omitempty"`
}

// evidenceLockTTL bounds how long a sealer holds a session's evidence
// (and how long others wait for it); hashing a full-export archive of
// gigabytes takes a minute. A crashed sealer's lock runs out within
// lockLease.
const evidenceLockTTL = 10 * time.Minute

// SigningKey is the public half of the key that seals session folders;
// nil when the store seals nothing.
func (s *Store) SigningKey() ed25519.PublicKey {
	if s.sign == nil {
		return nil
	}
	return s.sign.Public().(ed25519.PublicKey)
}

// Seal seals the session's folder: a manifest of its files signed with the
// deployment's key. A folder sealed before is verified first and, if it no
// longer matches, is not signed again: ErrEvidence.
func (s *Store) Seal(ctx context.Context, id string) (EvidenceStatus, error) {
	if s.sign == nil {
		return EvidenceStatus{}, errors.New("seal: the store has no signing key")
	}
	dir, err := s.SessionDir(id)
	if err != nil {
		return EvidenceStatus{}, err
	}
	unlock, err := s.lockFor(ctx, "evidence", id, evidenceLockTTL)
	if err != nil {
		return EvidenceStatus{}, err
	}
	defer unlock()
	sealed, err := evidence.IsSealed(dir)
	if err != nil {
		return EvidenceStatus{}, fmt.Errorf("seal %s: %w", id, err)
	}
	var prior *evidence.Report
	if sealed {
		if prior, _, err = s.verifyBeforeSeal(ctx, id, dir); err != nil {
			return EvidenceStatus{}, err
		}
		if !prior.OK() {
			st := s.evidenceFailed(ctx, id, dir, prior, "seal")
			return st, fmt.Errorf("seal %s: %w", id, ErrEvidence)
		}
	}
	return s.sealLocked(ctx, id, dir, prior)
}

// sealedWrite runs write, one of the platform's writes into a session's
// folder. When the folder is sealed the seal is verified first and renewed
// after the write; a folder that no longer matched its seal keeps the old
// one, and the mismatch is logged, audit-logged and shown in the panel.
// The write's own outcome is what the caller gets: what it wrote stays
// written whatever becomes of the seal.
//
// The evidence lock is taken around every such write, sealed or not, so
// that a write and the first seal never interleave. Lock order: evidence,
// then any other of the session's locks.
func (s *Store) sealedWrite(ctx context.Context, id, action string, write func() error) error {
	if s.sign == nil {
		return write()
	}
	dir, err := s.SessionDir(id)
	if err != nil {
		return err
	}
	unlock, err := s.lockFor(ctx, "evidence", id, evidenceLockTTL)
	if err != nil {
		return err
	}
	defer unlock()
	sealed, err := evidence.IsSealed(dir)
	if err != nil || !sealed {
		return write()
	}
	prior, before, verr := s.verifyBeforeSeal(ctx, id, dir)
	werr := write()
	if verr == nil && prior.OK() {
		if after, err := evidence.Stamps(dir); err == nil && maps.Equal(before, after) {
			return werr // nothing was written (a refused transition): the seal stands
		}
	}
	switch {
	case verr != nil:
		s.log.Error("verify evidence before a write", "session", id, "action", action, "err", verr)
	case !prior.OK():
		s.evidenceFailed(ctx, id, dir, prior, action)
	default:
		if _, err := s.sealLocked(ctx, id, dir, prior); err != nil {
			// The seal in place is the old one. The folder is as the
			// platform left it, so the next write (or the cleanup task's
			// retry) renews it, unless something else changes it first.
			s.log.Error("renew seal", "session", id, "action", action, "err", err)
			s.saveRecord(ctx, id, dir, evidenceRecord{Renew: true, Known: prior.Observed, EvidenceStatus: EvidenceStatus{
				State: EvidenceUnchecked, CheckedAt: s.now().UTC(), Key: evidence.Fingerprint(s.SigningKey()),
				Problems: []string{"the seal could not be renewed after " + action + " (" + err.Error() + "); the next write renews it"}}})
		}
	}
	return werr
}

// verifyBeforeSeal checks the seal in place before it is renewed, and
// returns the folder's stamps as they were. When every stamp is the same as
// at the last full verification (or seal), which hashed each file, the
// files are not read again: a change of content changes a file's ctime,
// which no ordinary tool sets back. The signature, file list and sizes are
// checked regardless. Otherwise every file is hashed.
func (s *Store) verifyBeforeSeal(ctx context.Context, id, dir string) (*evidence.Report, map[string]string, error) {
	stamps, err := evidence.Stamps(dir)
	if err != nil {
		return nil, nil, err
	}
	recs, err := s.evidenceRecords(ctx, []string{id})
	if err != nil {
		return nil, nil, err
	}
	rec, ok := recs[id]
	if ok && rec.Renew && maps.Equal(stamps, rec.Stamps) {
		// Nothing changed since the platform's own write that it could
		// not seal: the verification before that write still holds.
		return &evidence.Report{Observed: rec.Known}, stamps, nil
	}
	if ok && rec.State == EvidenceVerified && maps.Equal(stamps, rec.Stamps) {
		r, err := evidence.QuickCheck(dir, s.SigningKey())
		if err != nil {
			return nil, nil, err
		}
		if r.OK() {
			for _, f := range r.Manifest.Files {
				r.Observed = append(r.Observed, evidence.Observed{Path: f.Path, Size: f.Size, SHA256: f.SHA256, Stamp: stamps[f.Path]})
			}
			return r, stamps, nil
		}
	}
	r, err := evidence.Verify(dir, s.SigningKey())
	return r, stamps, err
}

// sealLocked writes the seal; the caller holds the evidence lock and has
// verified any seal in place (prior, whose hashes are reused).
func (s *Store) sealLocked(ctx context.Context, id, dir string, prior *evidence.Report) (EvidenceStatus, error) {
	sess, err := s.Get(ctx, id)
	if err != nil {
		return EvidenceStatus{}, err
	}
	var known []evidence.Observed
	if prior != nil {
		known = prior.Observed
	}
	now := s.now().UTC()
	m, err := evidence.Seal(dir, s.sign, evidence.Info{SessionID: id, ExamID: sess.ExamID, SealedAt: now}, known)
	if err != nil {
		return EvidenceStatus{}, fmt.Errorf("seal %s: %w", id, err)
	}
	st := EvidenceStatus{State: EvidenceVerified, SealedAt: m.SealedAt, CheckedAt: now, Key: m.Key, Files: len(m.Files)}
	s.saveEvidence(ctx, id, dir, st)
	return st, nil
}

// evidenceFailed records a folder that does not match its seal.
func (s *Store) evidenceFailed(ctx context.Context, id, dir string, r *evidence.Report, action string) EvidenceStatus {
	st := statusOf(r, s.SigningKey(), s.now().UTC())
	s.log.Error("session files do not match their seal; not sealed again", "session", id, "action", action, "problems", st.Problems)
	p, err := s.Path(id, auditFile)
	if err == nil {
		err = s.appendAudit(ctx, id, p, AuditEntry{Actor: "platform", Action: "evidence-failed",
			Detail: map[string]any{"during": action, "problems": st.Problems}})
	}
	if err != nil {
		s.log.Error("audit evidence failure", "session", id, "err", err)
	}
	s.saveEvidence(ctx, id, dir, st)
	return st
}

func statusOf(r *evidence.Report, pub ed25519.PublicKey, now time.Time) EvidenceStatus {
	st := EvidenceStatus{State: EvidenceVerified, CheckedAt: now, Key: evidence.Fingerprint(pub)}
	if r.Manifest != nil {
		st.SealedAt, st.Files = r.Manifest.SealedAt, len(r.Manifest.Files)
	}
	if !r.Sealed() {
		st.State = EvidenceUnsealed
		return st
	}
	if !r.OK() {
		st.State = EvidenceFailed
		for _, p := range r.Problems {
			st.Problems = append(st.Problems, p.String())
		}
	}
	return st
}

// saveEvidence keeps st as the session's last verification, with the
// folder's stamps as they are now.
func (s *Store) saveEvidence(ctx context.Context, id, dir string, st EvidenceStatus) {
	s.saveRecord(ctx, id, dir, evidenceRecord{EvidenceStatus: st})
}

func (s *Store) saveRecord(ctx context.Context, id, dir string, rec evidenceRecord) {
	stamps, err := evidence.Stamps(dir)
	if err != nil {
		s.log.Error("stat session files", "session", id, "err", err)
		return
	}
	rec.Stamps = stamps
	b, err := json.Marshal(rec)
	if err == nil {
		err = s.rdb.HSet(context.WithoutCancel(ctx), s.key("evidence"), id, b).Err()
	}
	if err != nil {
		s.log.Error("keep evidence status", "session", id, "err", err)
	}
}

// Evidence verifies the session's folder against its seal, hashing every
// file unless none changed since the last verification (whose outcome then
// stands). full hashes them regardless.
func (s *Store) Evidence(ctx context.Context, id string, full bool) (EvidenceStatus, error) {
	dir, err := s.SessionDir(id)
	if err != nil {
		return EvidenceStatus{}, err
	}
	if s.sign == nil {
		return EvidenceStatus{State: EvidenceUnsealed}, nil
	}
	recs, err := s.evidenceRecords(ctx, []string{id})
	if err != nil {
		return EvidenceStatus{}, err
	}
	rec, had := recs[id]
	if had && rec.Renew {
		// A renewal is pending: the folder holds a write of the platform's
		// that the seal in place does not cover yet, so hashing it against
		// that seal would cry wolf. Only a change since is news.
		stamps, err := evidence.Stamps(dir)
		if err != nil {
			return EvidenceStatus{}, err
		}
		if maps.Equal(stamps, rec.Stamps) {
			return rec.EvidenceStatus, nil
		}
	}
	if !full && had && rec.State != EvidenceUnchecked {
		stamps, err := evidence.Stamps(dir)
		if err != nil {
			return EvidenceStatus{}, err
		}
		if maps.Equal(stamps, rec.Stamps) {
			return rec.EvidenceStatus, nil
		}
	}
	sealed, err := evidence.IsSealed(dir)
	if err != nil {
		return EvidenceStatus{}, err
	}
	if !sealed {
		if !had || rec.SealedAt.IsZero() {
			return EvidenceStatus{State: EvidenceUnsealed}, nil
		}
		// It was sealed: the seal is gone, not yet to come.
		st := EvidenceStatus{State: EvidenceFailed, SealedAt: rec.SealedAt, CheckedAt: s.now().UTC(), Key: evidence.Fingerprint(s.SigningKey()),
			Problems: []string{sealGone(rec.SealedAt)}}
		s.saveEvidence(ctx, id, dir, st)
		return st, nil
	}
	// Under the lock: a write and its renewed seal are never seen halfway.
	unlock, err := s.lockFor(ctx, "evidence", id, evidenceLockTTL)
	if err != nil {
		return EvidenceStatus{}, err
	}
	defer unlock()
	r, err := evidence.Verify(dir, s.SigningKey())
	if err != nil {
		return EvidenceStatus{}, err
	}
	st := statusOf(r, s.SigningKey(), s.now().UTC())
	if st.State == EvidenceUnsealed {
		return st, nil // removed since we looked; the next look says so
	}
	s.saveEvidence(ctx, id, dir, st)
	return st, nil
}

func sealGone(at time.Time) string {
	return evidence.Problem{Kind: evidence.Missing, Path: evidence.ManifestFile,
		Detail: "the folder was sealed at " + at.Format(time.RFC3339) + " and its seal is gone"}.String()
}

// EvidenceStates gives the verification state of each session for a
// listing, without hashing: a session whose files kept their stamps since
// its last verification keeps that outcome; one whose files changed is
// checked for its signature, file list and sizes (EvidenceFailed naming
// what differs, or EvidenceUnchecked). A failure stays until a full
// verification finds the folder whole again.
func (s *Store) EvidenceStates(ctx context.Context, ids []string) (map[string]EvidenceStatus, error) {
	out := make(map[string]EvidenceStatus, len(ids))
	if s.sign == nil || len(ids) == 0 {
		for _, id := range ids {
			out[id] = EvidenceStatus{State: EvidenceUnsealed}
		}
		return out, nil
	}
	recs, err := s.evidenceRecords(ctx, ids)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		dir, err := s.SessionDir(id)
		if err != nil {
			return nil, err
		}
		rec, had := recs[id]
		if had && rec.State == EvidenceFailed {
			out[id] = rec.EvidenceStatus
			continue
		}
		if !had {
			// Never sealed (or never seen sealed): one stat says whether
			// there is a seal to check.
			if sealed, err := evidence.IsSealed(dir); err == nil && !sealed {
				out[id] = EvidenceStatus{State: EvidenceUnsealed}
				continue
			}
		}
		stamps, err := evidence.Stamps(dir)
		if errors.Is(err, os.ErrNotExist) {
			out[id] = EvidenceStatus{State: EvidenceUnsealed}
			continue
		}
		if err != nil {
			return nil, err
		}
		if had && maps.Equal(stamps, rec.Stamps) {
			out[id] = rec.EvidenceStatus
			continue
		}
		r, err := evidence.QuickCheck(dir, s.SigningKey())
		if err != nil {
			return nil, err
		}
		st := statusOf(r, s.SigningKey(), s.now().UTC())
		switch {
		case !r.Sealed() && had && !rec.SealedAt.IsZero():
			st = EvidenceStatus{State: EvidenceFailed, SealedAt: rec.SealedAt, CheckedAt: st.CheckedAt, Key: st.Key,
				Problems: []string{sealGone(rec.SealedAt)}}
		case st.State == EvidenceVerified:
			st.State = EvidenceUnchecked
		}
		out[id] = st
	}
	return out, nil
}

func (s *Store) evidenceRecords(ctx context.Context, ids []string) (map[string]evidenceRecord, error) {
	vals, err := s.rdb.HMGet(ctx, s.key("evidence"), ids...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read evidence status: %w", err)
	}
	out := make(map[string]evidenceRecord, len(ids))
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var rec evidenceRecord
		if json.Unmarshal([]byte(str), &rec) == nil {
			out[ids[i]] = rec
		}
	}
	return out, nil
}
