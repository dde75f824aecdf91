package changeset

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/examlab/examlab/lab"
)

// Applying a snapshot to a fresh node runs nothing of the node's own that
// a path could confuse: the deletions go to the grader's static busybox
// (mounted read-only at ToolsBusybox in every node) as NUL-separated
// arguments on its standard input, never through a shell, so a name with a
// newline, a quote or bytes that are not UTF-8 is one path; the entries
// are streamed as one tar into the fresh node image's GNU tar, which sets
// modes, numeric owners, times, links and extended attributes as the
// archive has them. Nothing is held in memory but one entry's header and
// the list of deleted paths.

// ToolsBusybox is the grader's busybox inside every node
// (grading.Busybox; repeated here so this package needs no grader).
const ToolsBusybox = "/.examlab/busybox"

// ExtractCmd is the command that extracts the filtered stream in the
// node. It is the node image's GNU tar: busybox tar neither keeps
// extended attributes nor numeric owners on every build. Extended
// attributes are set but the trusted.* ones (an overlay file system's
// own bookkeeping, which a node may not set); one tar cannot set is a
// warning, not a failure.
var ExtractCmd = []string{"tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--xattrs-exclude=trusted.*", "-C", "/", "-f", "-"}

// Skipped are top-level paths a snapshot may hold that a node's runtime
// owns, not its filesystem: kernel file systems, the device tree, the
// grader's read-only tools and the engine's marker. A full export holds
// them as empty mount points; they are neither deleted nor extracted.
var Skipped = []string{"proc", "sys", "dev", ".examlab", ".dockerenv"}

// InPlace are files the runtime mounts into every node and writes itself
// (the lab's names and name servers). They cannot be replaced, only
// rewritten: a non-empty one in the snapshot is written into the node's
// file as it stands; an empty one (a full export holds the engine's empty
// placeholders) is left alone.
var InPlace = []string{"etc/hosts", "etc/hostname", "etc/resolv.conf"}

// maxInPlace bounds one in-place file, which is read into memory.
const maxInPlace = 1 << 20

// Errors Apply returns.
var (
	// ErrChecksum: the snapshot read does not match the size and sha256
	// the manifest recorded for it.
	ErrChecksum = errors.New("snapshot differs from its manifest")
	// ErrBadEntry: the snapshot holds a path that is not relative to the
	// node's root.
	ErrBadEntry = errors.New("snapshot holds an unsafe path")
)

// runner starts processes in a lab's node (a lab.Runtime).
type runner interface {
	Exec(ctx context.Context, labID, node string, req lab.ExecRequest) (lab.Process, error)
}

// Expect is what the manifest says of a snapshot; zero fields are not
// checked.
type Expect struct {
	Size   int64
	SHA256 string
	// Full says the snapshot is a whole filesystem (a full export), not
	// a change set: it records no deletions, so whatever the fresh node
	// has beyond it is removed after the extraction.
	Full bool
}

// Stats count what one Apply did.
type Stats struct {
	Deleted int   `json:"deleted"`
	Opaque  int   `json:"opaque"`
	Entries int   `json:"entries"`
	Skipped int   `json:"skipped"`
	InPlace int   `json:"in_place"`
	Bytes   int64 `json:"bytes"`
	// Pruned counts paths of the fresh node a full export did not hold.
	Pruned int `json:"pruned,omitempty"`
}

// Apply gives node of lab labID the filesystem a snapshot recorded. open
// opens the snapshot (a change set, or a full export, which is applied the
// same way: it has no whiteouts, and every entry is extracted); it is
// called twice, for the two passes. The first pass checks the snapshot
// against want and collects the deleted paths and opaque directories; the
// deletions are made; the second pass streams every other entry into the
// node's tar. Applying the same snapshot again converges on the same tree.
func Apply(ctx context.Context, rt runner, labID, node string, open func() (io.ReadCloser, error), want Expect) (Stats, error) {
	var st Stats
	plan, err := scan(open, want)
	if err != nil {
		return st, fmt.Errorf("read snapshot of %s: %w", node, err)
	}
	st.Deleted, st.Opaque = len(plan.deleted), len(plan.opaque)
	if err := removePaths(ctx, rt, labID, node, plan.deleted); err != nil {
		return st, err
	}
	for _, dir := range plan.opaque {
		if err := emptyDir(ctx, rt, labID, node, dir); err != nil {
			return st, err
		}
	}
	if want.Full {
		// Before the extraction, which then sets the directories' times
		// as they were.
		n, err := prune(ctx, rt, labID, node, plan.names)
		st.Pruned = n
		if err != nil {
			return st, err
		}
	}
	inPlace, err := extract(ctx, rt, labID, node, open, &st)
	if err != nil {
		return st, err
	}
	for name, content := range inPlace {
		if err := writeInPlace(ctx, rt, labID, node, name, content); err != nil {
			return st, err
		}
		st.InPlace++
	}
	return st, nil
}

// plan is what the first pass found.
type plan struct {
	deleted []string // absolute paths
	opaque  []string // absolute directory paths
	// names are every path a full export holds (relative), to tell what
	// the fresh node has beyond it; nil for a change set.
	names map[string]struct{}
}

// scan is the first pass: it checks the snapshot's size and checksum and
// lists its whiteouts and opaque markers.
func scan(open func() (io.ReadCloser, error), want Expect) (plan, error) {
	var p plan
	if want.Full {
		p.names = map[string]struct{}{}
	}
	f, err := open()
	if err != nil {
		return p, err
	}
	defer f.Close()
	sum := sha256.New()
	cr := &countReader{r: io.TeeReader(f, sum)}
	tr := tar.NewReader(cr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return p, fmt.Errorf("read tar: %w", err)
		}
		name, err := clean(h.Name)
		if err != nil {
			return p, err
		}
		if name == "" || skipped(name) {
			continue
		}
		if p.names != nil {
			p.names[name] = struct{}{}
		}
		dir, base := path.Split(name)
		switch {
		case base == OpaqueMarker:
			// The root is never opaque: emptying it would take the
			// runtime's mounts and the tools with it.
			if d := strings.TrimSuffix(dir, "/"); d != "" {
				p.opaque = append(p.opaque, "/"+d)
			}
		case strings.HasPrefix(base, WhiteoutPrefix):
			gone := dir + strings.TrimPrefix(base, WhiteoutPrefix)
			if !skipped(gone) && !inPlace(gone) {
				p.deleted = append(p.deleted, "/"+gone)
			}
		}
	}
	// The tar's end is two zero blocks, but writers pad further: what
	// the manifest hashed is the whole file.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return p, fmt.Errorf("read tar: %w", err)
	}
	if want.Size > 0 && cr.n != want.Size {
		return p, fmt.Errorf("%w: %d bytes, the manifest says %d", ErrChecksum, cr.n, want.Size)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); want.SHA256 != "" && got != want.SHA256 {
		return p, fmt.Errorf("%w: sha256 %s, the manifest says %s", ErrChecksum, got, want.SHA256)
	}
	return p, nil
}

// clean makes an entry's name a path relative to the node's root, without
// a trailing slash ("" for the root itself), and refuses one that would
// leave the root.
func clean(name string) (string, error) {
	n := strings.TrimPrefix(name, "./")
	n = strings.TrimLeft(n, "/")
	n = strings.TrimSuffix(n, "/")
	if n == "" || n == "." {
		return "", nil
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q", ErrBadEntry, name)
		}
	}
	return n, nil
}

// skipped reports whether a relative path is one of Skipped or below one.
func skipped(name string) bool {
	for _, s := range Skipped {
		if name == s || strings.HasPrefix(name, s+"/") {
			return true
		}
	}
	return false
}

func inPlace(name string) bool {
	for _, s := range InPlace {
		if name == s {
			return true
		}
	}
	return false
}

// prune removes what the node has on its root file system beyond names:
// what a full export does not hold was deleted by the candidate. It runs
// before the extraction, so a path the export holds is never removed. The
// node's paths come NUL-separated from the grader's busybox find, which
// stays on the root file system (mounts are the runtime's).
func prune(ctx context.Context, rt runner, labID, node string, names map[string]struct{}) (int, error) {
	// A fixed script (no path in it): it only keeps find's complaints
	// out of the list, which shares the process's output.
	list := "exec " + ToolsBusybox + " find / -xdev -mindepth 1 -print0 2>/dev/null"
	p, err := rt.Exec(ctx, labID, node, lab.ExecRequest{Cmd: []string{ToolsBusybox, "sh", "-c", list}})
	if err != nil {
		return 0, fmt.Errorf("list the files of %s: %w", node, err)
	}
	defer p.Close()
	_ = p.CloseWrite()
	var extra []string
	var cur []byte
	buf := make([]byte, 32<<10)
	var rerr error
	for {
		n, err := p.Read(buf)
		for _, b := range buf[:n] {
			if b != 0 {
				cur = append(cur, b)
				continue
			}
			name, abs := strings.CutPrefix(string(cur), "/")
			cur = cur[:0]
			if _, ok := names[name]; ok || !abs || name == "" || skipped(name) || inPlace(name) {
				continue
			}
			// Under a path already going, it goes with it.
			if len(extra) > 0 && strings.HasPrefix(name, strings.TrimPrefix(extra[len(extra)-1], "/")+"/") {
				continue
			}
			extra = append(extra, "/"+name)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
	}
	code, err := p.Wait(ctx)
	if rerr != nil || err != nil {
		return 0, fmt.Errorf("list the files of %s: %w", node, errors.Join(rerr, err))
	}
	if code != 0 {
		return 0, fmt.Errorf("list the files of %s: find exited %d", node, code)
	}
	return len(extra), removePaths(ctx, rt, labID, node, extra)
}

// removePaths deletes every path in one busybox xargs run: the paths go
// NUL-separated on its standard input, whatever bytes they hold.
func removePaths(ctx context.Context, rt runner, labID, node string, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	var in bytes.Buffer
	for _, p := range paths {
		in.WriteString(p)
		in.WriteByte(0)
	}
	cmd := []string{ToolsBusybox, "xargs", "-0", "-r", ToolsBusybox, "rm", "-rf", "--"}
	if err := run(ctx, rt, labID, node, cmd, &in); err != nil {
		return fmt.Errorf("remove deleted paths in %s: %w", node, err)
	}
	return nil
}

// emptyDir removes everything in dir, keeping dir itself (the change set
// extracts its metadata later).
func emptyDir(ctx context.Context, rt runner, labID, node, dir string) error {
	cmd := []string{ToolsBusybox, "find", dir, "-mindepth", "1", "-maxdepth", "1", "-exec", ToolsBusybox, "rm", "-rf", "--", "{}", "+"}
	if err := run(ctx, rt, labID, node, cmd, nil); err != nil {
		// A directory the image never had is not there to empty.
		if strings.Contains(err.Error(), "No such file or directory") {
			return nil
		}
		return fmt.Errorf("empty %q in %s: %w", dir, node, err)
	}
	return nil
}

// extract is the second pass: every entry but whiteouts, markers, skipped
// and in-place paths is copied into the node's tar as it streams. The
// in-place files are returned, to be written once the tar is done.
func extract(ctx context.Context, rt runner, labID, node string, open func() (io.ReadCloser, error), st *Stats) (map[string][]byte, error) {
	f, err := open()
	if err != nil {
		return nil, fmt.Errorf("read snapshot of %s: %w", node, err)
	}
	defer f.Close()
	p, err := rt.Exec(ctx, labID, node, lab.ExecRequest{Cmd: ExtractCmd})
	if err != nil {
		return nil, fmt.Errorf("extract in %s: %w", node, err)
	}
	defer p.Close()
	out := make(chan []byte, 1)
	go func() {
		// The tar's messages, kept short: they name the entries it could
		// not make.
		b, _ := io.ReadAll(io.LimitReader(p, 64<<10))
		_, _ = io.Copy(io.Discard, p)
		out <- b
	}()
	inPlaceFiles := map[string][]byte{}
	werr := func() error {
		tr := tar.NewReader(f)
		tw := tar.NewWriter(p)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("read snapshot: %w", err)
			}
			name, err := clean(h.Name)
			if err != nil {
				return err
			}
			base := path.Base(name)
			switch {
			case name == "" || skipped(name):
				st.Skipped++
				continue
			case strings.HasPrefix(base, WhiteoutPrefix):
				continue
			case inPlace(name):
				if h.Typeflag == tar.TypeReg && h.Size > 0 && h.Size <= maxInPlace {
					b, err := io.ReadAll(tr)
					if err != nil {
						return fmt.Errorf("read snapshot: %w", err)
					}
					inPlaceFiles["/"+name] = b
				} else {
					st.Skipped++
				}
				continue
			}
			if h.Typeflag == tar.TypeLink {
				ln, err := clean(h.Linkname)
				if err != nil {
					return err
				}
				h.Linkname = ln
			}
			if h.Typeflag == tar.TypeDir {
				h.Name = name + "/"
			} else {
				h.Name = name
			}
			if h.ModTime.Nanosecond() != 0 {
				// Only PAX keeps a time finer than the second; left to
				// choose, the writer would round it.
				h.Format = tar.FormatPAX
			}
			if err := tw.WriteHeader(h); err != nil {
				return fmt.Errorf("stream %q into %s: %w", name, node, err)
			}
			n, err := io.Copy(tw, tr)
			if err != nil {
				return fmt.Errorf("stream %q into %s: %w", name, node, err)
			}
			st.Entries++
			st.Bytes += n
		}
		return tw.Close()
	}()
	_ = p.CloseWrite()
	msg := <-out
	code, err := p.Wait(ctx)
	if werr != nil {
		return nil, errors.Join(werr, tarFailure(code, msg))
	}
	if err != nil {
		return nil, fmt.Errorf("extract in %s: %w", node, err)
	}
	if code != 0 {
		return nil, fmt.Errorf("extract in %s: %w", node, tarFailure(code, msg))
	}
	return inPlaceFiles, nil
}

func tarFailure(code int, msg []byte) error {
	if code == 0 && len(msg) == 0 {
		return nil
	}
	return fmt.Errorf("tar exited %d: %s", code, strings.TrimSpace(string(msg)))
}

// writeInPlace rewrites a runtime-mounted file's content without
// replacing the file.
func writeInPlace(ctx context.Context, rt runner, labID, node, name string, content []byte) error {
	cmd := []string{ToolsBusybox, "dd", "of=" + name}
	if err := run(ctx, rt, labID, node, cmd, bytes.NewReader(content)); err != nil {
		return fmt.Errorf("write %s in %s: %w", name, node, err)
	}
	return nil
}

// run runs cmd in the node with stdin, and fails with its output when it
// exits non-zero.
func run(ctx context.Context, rt runner, labID, node string, cmd []string, stdin io.Reader) error {
	p, err := rt.Exec(ctx, labID, node, lab.ExecRequest{Cmd: cmd})
	if err != nil {
		return err
	}
	defer p.Close()
	out := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(p, 16<<10))
		_, _ = io.Copy(io.Discard, p)
		out <- b
	}()
	var werr error
	if stdin != nil {
		_, werr = io.Copy(p, stdin)
	}
	_ = p.CloseWrite()
	msg := <-out
	code, err := p.Wait(ctx)
	if err != nil {
		return err
	}
	if werr != nil {
		return werr
	}
	if code != 0 {
		return fmt.Errorf("%s exited %d: %s", path.Base(cmd[1]), code, strings.TrimSpace(string(msg)))
	}
	return nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
