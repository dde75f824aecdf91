package store

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// AuditEntry records one action taken on a session, by whom.
type AuditEntry struct {
	At     time.Time      `json:"at"`
	Actor  string         `json:"actor"`
	Action string         `json:"action"`
	Detail map[string]any `json:"detail,omitempty"`
}

// Audit appends an entry to the session's audit.jsonl. Each entry is one
// write of one line, synced before returning.
func (s *Store) Audit(ctx context.Context, id string, e AuditEntry) error {
	p, err := s.Path(id, auditFile)
	if err != nil {
		return err
	}
	return s.sealedWrite(ctx, id, "audit "+e.Action, func() error { return s.appendAudit(ctx, id, p, e) })
}

// AuditLog returns the session's audit entries, oldest first. A torn last
// line (a crash mid-append) is skipped.
func (s *Store) AuditLog(ctx context.Context, id string) ([]AuditEntry, error) {
	p, err := s.Path(id, auditFile)
	if err != nil {
		return nil, err
	}
	return readAudit(p)
}

// appendAudit writes one line of an audit trail and syncs it, under a lock
// so that lines from several processes never interleave.
func (s *Store) appendAudit(ctx context.Context, lockName, path string, e AuditEntry) error {
	if e.At.IsZero() {
		e.At = s.now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode audit entry: %w", err)
	}
	unlock, err := s.lock(ctx, "audit", lockName)
	if err != nil {
		return err
	}
	defer unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write audit log: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync audit log: %w", err)
	}
	return nil
}

// readAudit reads an audit trail; a missing file is an empty trail and a
// torn last line (a crash mid-append) is skipped.
func readAudit(path string) ([]AuditEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return []AuditEntry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	out := []AuditEntry{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e AuditEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}
