package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/examlab/examlab/lab"
)

// File describes one file of a session's record.
type File struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mod_time"`
	SHA256  string    `json:"sha256,omitempty"`
}

// Manifest lists a snapshot's files with sizes and checksums:
// docker-snapshots/manifest.json.
type Manifest struct {
	SessionID string    `json:"session_id"`
	Runtime   string    `json:"runtime"`
	Reason    string    `json:"reason"`
	CreatedAt time.Time `json:"created_at"`
	Files     []File    `json:"files"`
	// Results is the session's results.json as it was when the snapshot
	// was taken (it lives in the session's folder, beside the snapshot).
	Results *File `json:"results,omitempty"`
	// Missing names nodes that had no container to archive.
	Missing []string `json:"missing,omitempty"`
	// Mode is the snapshot mode asked for (changes or full); each node's
	// entry in Nodes says the mode it was captured in, its image, the
	// counts of its change set and why it fell back to full, if it did.
	Mode  lab.SnapshotMode  `json:"mode,omitempty"`
	Nodes []lab.NodeCapture `json:"nodes,omitempty"`
}

// ManifestName is the snapshot manifest's file name.
const ManifestName = "manifest.json"

// Files lists the regular files in one of the session's folders
// (SnapshotDir, TerminalDir), skipping temp files.
func (s *Store) Files(ctx context.Context, id, folder string) ([]File, error) {
	dir, err := s.Path(id, folder)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return []File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", folder, err)
	}
	out := []File{}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, File{Name: e.Name(), Size: info.Size(), ModTime: info.ModTime().UTC()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Manifest reads the session's snapshot manifest.
func (s *Store) Manifest(ctx context.Context, id string) (*Manifest, error) {
	p, err := s.Path(id, SnapshotDir, ManifestName)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("manifest of %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	return &m, nil
}

var fileNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// FilePath resolves a file name inside one of the session's folders for
// download. Names with separators or leading dots are refused.
func (s *Store) FilePath(id, folder, name string) (string, error) {
	if !fileNamePattern.MatchString(name) || strings.Contains(name, "..") {
		return "", fmt.Errorf("file %q: %w", name, ErrBadID)
	}
	p, err := s.Path(id, folder, name)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("file %s: %w", name, ErrNotFound)
	}
	return filepath.Clean(p), nil
}

// RemoveTemps removes the temp files (CreateAtomic's) that writers killed
// mid-write left in one of the session's folders, and returns how many.
// Call it only while holding what keeps every other writer out of the
// folder (the snapshot lock for SnapshotDir).
func (s *Store) RemoveTemps(id, folder string) (int, error) {
	dir, err := s.Path(id, folder)
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", folder, err)
	}
	n := 0
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), ".") || !strings.Contains(e.Name(), ".tmp-") {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, fmt.Errorf("remove %s: %w", e.Name(), err)
		}
		n++
	}
	return n, nil
}
