package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"
)

// HistoryEntry is one command line a terminal saw.
type HistoryEntry struct {
	At      time.Time `json:"at"`
	Command string    `json:"command"`
	// Source says who reported it: "relay" (typed input the server saw)
	// or "client" (posted by the page).
	Source string `json:"source"`
}

// History is terminal-logs/{terminal}.json.
type History struct {
	Terminal string         `json:"terminal"`
	Entries  []HistoryEntry `json:"entries"`
}

var terminalPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)

// ValidTerminalID reports whether id names a terminal (a node name).
func ValidTerminalID(id string) bool { return terminalPattern.MatchString(id) }

// MaxHistoryEntries bounds one terminal's kept history.
const MaxHistoryEntries = 5000

// AppendHistory adds entries to a terminal's command history.
func (s *Store) AppendHistory(ctx context.Context, id, terminal string, entries []HistoryEntry) (h History, err error) {
	if !ValidTerminalID(terminal) {
		return History{}, fmt.Errorf("terminal %q: %w", terminal, ErrBadID)
	}
	p, err := s.Path(id, TerminalDir, terminal+".json")
	if err != nil {
		return History{}, err
	}
	werr := s.sealedWrite(ctx, id, "history", func() error {
		h, err = s.appendHistory(ctx, id, terminal, p, entries)
		return err
	})
	if err == nil {
		err = werr
	}
	return h, err
}

func (s *Store) appendHistory(ctx context.Context, id, terminal, p string, entries []HistoryEntry) (History, error) {
	unlock, err := s.lock(ctx, "history", id+":"+terminal)
	if err != nil {
		return History{}, err
	}
	defer unlock()
	h := History{Terminal: terminal, Entries: []HistoryEntry{}}
	if b, err := os.ReadFile(p); err == nil {
		if err := json.Unmarshal(b, &h); err != nil {
			return History{}, fmt.Errorf("decode history: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return History{}, fmt.Errorf("read history: %w", err)
	}
	now := s.now().UTC()
	for _, e := range entries {
		if e.At.IsZero() || e.At.After(now) {
			e.At = now
		}
		h.Entries = append(h.Entries, e)
	}
	if len(h.Entries) > MaxHistoryEntries {
		h.Entries = h.Entries[len(h.Entries)-MaxHistoryEntries:]
	}
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return History{}, fmt.Errorf("encode history: %w", err)
	}
	if err := WriteFileAtomic(p, b); err != nil {
		return History{}, err
	}
	return h, nil
}

// Histories returns every terminal's command history of the session.
func (s *Store) Histories(ctx context.Context, id string) (map[string]History, error) {
	files, err := s.Files(ctx, id, TerminalDir)
	if err != nil {
		return nil, err
	}
	out := map[string]History{}
	for _, f := range files {
		if len(f.Name) < 6 || f.Name[len(f.Name)-5:] != ".json" {
			continue
		}
		p, err := s.Path(id, TerminalDir, f.Name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var h History
		if json.Unmarshal(b, &h) == nil && h.Terminal != "" {
			out[h.Terminal] = h
		}
	}
	return out, nil
}
