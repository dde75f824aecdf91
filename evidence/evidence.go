// Package evidence seals a session's folder — a manifest of every file
// with its size and sha256, signed with the deployment's ed25519 key — and
// verifies a sealed folder, here or on a copy taken anywhere else.
package evidence

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The seal's files, at the top of the session folder. Neither is listed in
// the manifest.
const (
	ManifestFile  = "evidence.json"
	SignatureFile = "evidence.sig"
	// pendingSig is the next signature while a seal is being written: a
	// crash between renaming the manifest and its signature into place
	// leaves it, and it still proves the manifest it signs.
	pendingSig = ".evidence.sig.next"
	// Format names the manifest's layout.
	Format = "examlab-evidence/1"
)

// File is one file of a sealed folder.
type File struct {
	// Path is relative to the folder, with forward slashes.
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest is evidence.json.
type Manifest struct {
	Format    string    `json:"format"`
	SessionID string    `json:"session_id"`
	ExamID    string    `json:"exam_id"`
	SealedAt  time.Time `json:"sealed_at"`
	// Key is the fingerprint of the key that signed the manifest.
	Key   string `json:"key"`
	Files []File `json:"files"`
}

// Info describes what is sealed.
type Info struct {
	SessionID string
	ExamID    string
	SealedAt  time.Time
}

// Kinds of problem a verification reports.
const (
	Unsealed  = "unsealed"
	Missing   = "missing"
	Changed   = "changed"
	Extra     = "extra"
	Invalid   = "invalid"
	Signature = "bad-signature"
)

// Problem is one thing about a folder that does not match its seal.
type Problem struct {
	Kind   string `json:"kind"`
	Path   string `json:"path"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return p.Kind + " " + p.Path + ": " + p.Detail }

// Observed is a file as a verification found it.
type Observed struct {
	Path   string
	Size   int64
	SHA256 string
	// Stamp changes whenever the file may have (see Stamp).
	Stamp string
}

// Report is the outcome of a verification.
type Report struct {
	// Manifest is the folder's manifest as read; nil when there is none
	// or it is not a manifest.
	Manifest *Manifest
	// Problems lists every mismatch; none means the folder is as sealed.
	Problems []Problem
	// Observed are the folder's files as hashed (full verifications only).
	Observed []Observed
}

// OK reports whether the folder is exactly as sealed.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// Sealed reports whether the folder has a seal at all.
func (r *Report) Sealed() bool {
	return len(r.Problems) != 1 || r.Problems[0].Kind != Unsealed
}

// IsSealed reports whether dir has a manifest.
func IsSealed(dir string) (bool, error) {
	_, err := os.Lstat(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Seal writes dir's manifest and signature. known carries hashes taken a
// moment ago (by the verification that precedes a re-seal): a file whose
// stamp is unchanged since is not read again.
func Seal(dir string, key ed25519.PrivateKey, info Info, known []Observed) (*Manifest, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	defer root.Close()
	byPath := make(map[string]Observed, len(known))
	for _, o := range known {
		byPath[o.Path] = o
	}
	entries, err := walk(root)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	buf := make([]byte, hashBufSize)
	m := Manifest{Format: Format, SessionID: info.SessionID, ExamID: info.ExamID, SealedAt: info.SealedAt.UTC(),
		Key: Fingerprint(key.Public().(ed25519.PublicKey)), Files: []File{}}
	for _, e := range entries {
		if !e.info.Mode().IsRegular() {
			// Nothing the platform writes; a verification names it.
			continue
		}
		st := Stamp(e.info)
		if o, ok := byPath[e.path]; ok && o.Stamp == st && o.SHA256 != "" {
			m.Files = append(m.Files, File{Path: e.path, Size: o.Size, SHA256: o.SHA256})
			continue
		}
		size, sum, err := hashFile(root, e.path, buf)
		if err != nil {
			return nil, fmt.Errorf("seal %s: %w", dir, err)
		}
		m.Files = append(m.Files, File{Path: e.path, Size: size, SHA256: sum})
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	b = append(b, '\n')
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(key, b)) + "\n"
	// Signature first, under a name of its own: whenever the manifest in
	// place is new, a signature of it is on disk.
	if err := writeAtomic(dir, pendingSig, []byte(sig)); err != nil {
		return nil, err
	}
	if err := writeAtomic(dir, ManifestFile, b); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(dir, pendingSig), filepath.Join(dir, SignatureFile)); err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return &m, nil
}

// Verify checks dir against its seal: the signature under pub, and every
// file's presence, size and sha256, and that no file was added. Every
// mismatch is a Problem; the error is for a folder that cannot be read.
func Verify(dir string, pub ed25519.PublicKey) (*Report, error) {
	return verify(dir, pub, true)
}

// QuickCheck is Verify without reading the files' contents: the signature,
// which files there are and their sizes. A file changed in place without
// a change of size passes it.
func QuickCheck(dir string, pub ed25519.PublicKey) (*Report, error) {
	return verify(dir, pub, false)
}

func verify(dir string, pub ed25519.PublicKey, hash bool) (*Report, error) {
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("verify %s: not a folder", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", dir, err)
	}
	defer root.Close()
	r := &Report{}
	add := func(kind, p, format string, args ...any) {
		r.Problems = append(r.Problems, Problem{Kind: kind, Path: p, Detail: fmt.Sprintf(format, args...)})
	}
	mb, err := root.ReadFile(ManifestFile)
	if errors.Is(err, os.ErrNotExist) {
		add(Unsealed, ManifestFile, "missing: the folder has no seal")
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", dir, err)
	}
	checkSignature(root, mb, pub, add)
	var m Manifest
	if err := json.Unmarshal(mb, &m); err != nil || m.Format != Format {
		add(Invalid, ManifestFile, "not an examlab evidence manifest")
		return r, nil
	}
	r.Manifest = &m

	listed := make(map[string]bool, len(m.Files))
	buf := make([]byte, hashBufSize)
	for _, f := range m.Files {
		if !localPath(f.Path) {
			add(Invalid, f.Path, "the path leaves the folder or names the seal itself; not read")
			continue
		}
		if listed[f.Path] {
			add(Invalid, f.Path, "listed twice")
			continue
		}
		listed[f.Path] = true
		fi, err := root.Lstat(filepath.FromSlash(f.Path))
		switch {
		case errors.Is(err, os.ErrNotExist):
			add(Missing, f.Path, "sealed with %d bytes, not in the folder", f.Size)
			continue
		case err != nil:
			add(Changed, f.Path, "cannot be read: %v", err)
			continue
		case !fi.Mode().IsRegular():
			add(Changed, f.Path, "is no longer a regular file (%s)", fi.Mode().Type())
			continue
		}
		if fi.Size() != f.Size {
			add(Changed, f.Path, "%d bytes, sealed with %d", fi.Size(), f.Size)
			continue
		}
		if !hash {
			continue
		}
		size, sum, err := hashFile(root, f.Path, buf)
		if err != nil {
			add(Changed, f.Path, "cannot be read: %v", err)
			continue
		}
		if sum != f.SHA256 || size != f.Size {
			add(Changed, f.Path, "its sha256 differs from the sealed one")
			continue
		}
		r.Observed = append(r.Observed, Observed{Path: f.Path, Size: size, SHA256: sum, Stamp: Stamp(fi)})
	}
	entries, err := walk(root)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", dir, err)
	}
	for _, e := range entries {
		switch {
		case !e.info.Mode().IsRegular():
			add(Extra, e.path, "not in the manifest (a %s, not followed)", kindOf(e.info.Mode()))
		case !listed[e.path]:
			add(Extra, e.path, "not in the manifest (%d bytes)", e.info.Size())
		}
	}
	return r, nil
}

// checkSignature reports a manifest that its signature does not prove. A
// seal interrupted between its renames left the new signature aside; it
// counts if it proves the manifest in place.
func checkSignature(root *os.Root, manifest []byte, pub ed25519.PublicKey, add func(kind, p, format string, args ...any)) {
	valid := func(name string) (bool, error) {
		b, err := root.ReadFile(name)
		if err != nil {
			return false, err
		}
		sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(sig) != ed25519.SignatureSize {
			return false, errors.New("not a base64 ed25519 signature")
		}
		return ed25519.Verify(pub, manifest, sig), nil
	}
	ok, err := valid(SignatureFile)
	if ok {
		return
	}
	if pending, _ := valid(pendingSig); pending {
		return
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		add(Signature, SignatureFile, "missing")
	case err != nil:
		add(Signature, SignatureFile, "%v", err)
	default:
		var m struct {
			Key string `json:"key"`
		}
		_ = json.Unmarshal(manifest, &m)
		detail := "does not match " + ManifestFile + " under key " + Fingerprint(pub)
		if m.Key != "" && m.Key != Fingerprint(pub) {
			detail += " (the manifest names key " + m.Key + ")"
		}
		add(Signature, SignatureFile, "%s", detail)
	}
}

// Stamp is a file's size, modification and change times and inode (where
// the system has them): a change of content changes it, and the change
// time cannot be set back by an ordinary tool (touch -d sets only the
// modification time).
func Stamp(fi fs.FileInfo) string {
	return fmt.Sprintf("%d:%d", fi.Size(), fi.ModTime().UnixNano()) + sysStamp(fi)
}

// Stamps returns the stamp of every entry of dir (the seal's files too),
// without reading any file: what a cached verification is checked against.
func Stamps(dir string) (map[string]string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	defer root.Close()
	entries, err := walk(root)
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	out := make(map[string]string, len(entries)+2)
	for _, e := range entries {
		out[e.path] = Stamp(e.info)
	}
	for _, name := range []string{ManifestFile, SignatureFile} {
		if fi, err := root.Lstat(name); err == nil {
			out[name] = Stamp(fi)
		}
	}
	return out, nil
}

type entry struct {
	path string
	info fs.FileInfo
}

// walk lists everything in the folder that is evidence: every entry but
// the seal's own files and dot-named ones (temp files of atomic writes),
// symlinks not followed, sorted by path.
func walk(root *os.Root) ([]entry, error) {
	var out []entry
	err := fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if p == ManifestFile || p == SignatureFile {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while listed
		}
		if err != nil {
			return err
		}
		out = append(out, entry{path: p, info: fi})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out, err
}

// localPath reports whether p, from a manifest, names a file the seal may
// cover: relative, clean, inside the folder, not dot-named, not the seal.
func localPath(p string) bool {
	if p == "" || strings.ContainsAny(p, "\\\x00") || path.Clean(p) != p || !filepath.IsLocal(p) {
		return false
	}
	if p == ManifestFile || p == SignatureFile {
		return false
	}
	for _, part := range strings.Split(p, "/") {
		if strings.HasPrefix(part, ".") {
			return false
		}
	}
	return true
}

// hashBufSize is the read size of hashing: large enough that syscalls do
// not dominate, small enough to keep per call.
const hashBufSize = 256 << 10

func hashFile(root *os.Root, p string, buf []byte) (int64, string, error) {
	f, err := root.Open(filepath.FromSlash(p))
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	// A plain reader: io.CopyBuffer would otherwise use *os.File's WriteTo,
	// which copies through a small buffer of its own.
	n, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf)
	if err != nil {
		return 0, "", fmt.Errorf("read %s: %w", p, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

func kindOf(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return "special file"
	}
}

// writeAtomic writes name in dir through a temp file, synced and renamed.
func writeAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Chmod(0o640); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
