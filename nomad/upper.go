package nomad

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/examlab/examlab/changeset"
)

// UpperStats counts what a change set written from an overlay upper
// directory holds.
type UpperStats struct {
	// Added and Modified count the paths written (not whiteouts or
	// markers), split by whether the node's image (the lower layers) has
	// them; Deleted counts whiteouts.
	Added    int `json:"added"`
	Modified int `json:"modified"`
	Deleted  int `json:"deleted"`
	// Skipped counts what a tar cannot hold (sockets), which is left out;
	// SkippedPaths names the first maxSkippedPaths of them, Go-quoted.
	Skipped      int      `json:"skipped,omitempty"`
	SkippedPaths []string `json:"skipped_paths,omitempty"`
}

// maxSkippedPaths bounds the skipped paths a capture names.
const maxSkippedPaths = 20

// ErrUpperUnsupported: the upper directory holds what only the overlay can
// make sense of (a redirected directory or a metadata-only copy), so its
// files alone are not the node's changes. Docker never mounts overlays
// with those features.
var ErrUpperUnsupported = errors.New("the overlay's upper directory uses redirect_dir or metacopy")

// WriteUpper writes the overlay upper directory root — a container's
// writable layer, everything the node changed since it started — to w as a
// change set. It archives the directory as it is on disk (names byte for
// byte, mode, numeric owner, mtime, every extended attribute, symlinks,
// hard links, devices, FIFOs; sockets, which a tar cannot hold, are
// counted in Skipped) and has changeset.FromOverlay turn the overlay's
// whiteouts and opaque directories into the change set's, leaving out
// what omit reports (the container's mount points). lower are the layers
// under root, topmost first, which tell an added path from a modified
// one. It streams: each file is copied through as it is read.
func WriteUpper(ctx context.Context, root string, lower []string, omit func(string) bool, w io.Writer) (UpperStats, error) {
	var st UpperStats
	pr, pw := io.Pipe()
	walked := make(chan error, 1)
	go func() {
		err := archiveDir(ctx, root, pw, &st)
		pw.CloseWithError(err)
		walked <- err
	}()
	var added, modified int
	ost, err := changeset.FromOverlay(w, pr, changeset.OverlayOptions{
		Omit: omit,
		Seen: func(p string, _ bool) {
			if inLower(lower, p) {
				modified++
			} else {
				added++
			}
		},
	})
	pr.CloseWithError(err) // a walk still writing stops
	werr := <-walked
	st.Added, st.Modified, st.Deleted = added, modified, ost.Whiteouts
	if err == nil {
		err = werr
	}
	if err != nil {
		return st, fmt.Errorf("write changes from %s: %w", root, err)
	}
	return st, nil
}

// archiveDir writes the directory root to w as a tar, entries named
// relative to it, parents before children.
func archiveDir(ctx context.Context, root string, w io.Writer, st *UpperStats) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{} // (dev, ino) of multiply linked files → first name
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == root {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		return archiveEntry(tw, path, filepath.ToSlash(rel), links, st)
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func archiveEntry(tw *tar.Writer, path, rel string, links map[[2]uint64]string, st *UpperStats) error {
	var sys unix.Stat_t
	if err := unix.Lstat(path, &sys); err != nil {
		return fmt.Errorf("stat %q: %w", rel, err)
	}
	mode := sys.Mode & unix.S_IFMT
	if mode == unix.S_IFSOCK {
		st.Skipped++
		if len(st.SkippedPaths) < maxSkippedPaths {
			st.SkippedPaths = append(st.SkippedPaths, strconv.Quote(rel))
		}
		return nil
	}
	xattrs, err := readXattrs(path)
	if err != nil {
		return fmt.Errorf("read extended attributes of %q: %w", rel, err)
	}
	for _, k := range []string{"trusted.overlay.redirect", "trusted.overlay.metacopy", "user.overlay.redirect", "user.overlay.metacopy"} {
		if _, ok := xattrs[k]; ok {
			return fmt.Errorf("%q: %w", rel, ErrUpperUnsupported)
		}
	}
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(sys.Mode & 0o7777),
		Uid:     int(sys.Uid),
		Gid:     int(sys.Gid),
		ModTime: time.Unix(sys.Mtim.Sec, sys.Mtim.Nsec),
		Format:  tar.FormatPAX,
	}
	for k, v := range xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	switch mode {
	case unix.S_IFDIR:
		hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
		return tw.WriteHeader(hdr)
	case unix.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("read symlink %q: %w", rel, err)
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		return tw.WriteHeader(hdr)
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if mode == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(sys.Rdev)), int64(unix.Minor(sys.Rdev))
		return tw.WriteHeader(hdr)
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
		return tw.WriteHeader(hdr)
	case unix.S_IFREG:
	default:
		return fmt.Errorf("%q: unknown file type %#o", rel, mode)
	}
	if sys.Nlink > 1 {
		key := [2]uint64{sys.Dev, sys.Ino}
		if first, ok := links[key]; ok {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
			return tw.WriteHeader(hdr)
		}
		links[key] = rel
	}
	hdr.Typeflag, hdr.Size = tar.TypeReg, sys.Size
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	return copyFile(tw, path, rel, sys)
}

// copyFile copies a regular file's content into the archive. The file is
// opened without following a symlink and must still be the one stat saw:
// in a frozen lab it is, and anything else fails the capture rather than
// archive a mix.
func copyFile(tw *tar.Writer, path, rel string, sys unix.Stat_t) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		f, err = os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return fmt.Errorf("open %q: %w", rel, err)
	}
	defer f.Close()
	var now unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &now); err != nil {
		return fmt.Errorf("stat %q: %w", rel, err)
	}
	if now.Ino != sys.Ino || now.Dev != sys.Dev {
		return fmt.Errorf("%q was replaced while it was archived", rel)
	}
	n, err := io.CopyN(tw, f, sys.Size)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%q shrank while it was archived (%d of %d bytes)", rel, n, sys.Size)
	}
	if err != nil {
		return fmt.Errorf("archive %q: %w", rel, err)
	}
	return nil
}

// readXattrs returns a path's extended attributes, without following a
// symlink.
func readXattrs(path string) (map[string]string, error) {
	size, err := unix.Llistxattr(path, nil)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil || size == 0 {
		return nil, err
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range bytes.Split(buf[:size], []byte{0}) {
		if len(name) == 0 {
			continue
		}
		n, err := unix.Lgetxattr(path, string(name), nil)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, err
		}
		val := make([]byte, n)
		if n > 0 {
			if n, err = unix.Lgetxattr(path, string(name), val); err != nil {
				return nil, err
			}
		}
		out[string(name)] = string(val[:n])
	}
	return out, nil
}

// inLower reports whether the image has rel: the topmost lower layer that
// holds the path decides, and a whiteout there means it does not.
func inLower(lower []string, rel string) bool {
	for _, l := range lower {
		var sys unix.Stat_t
		if err := unix.Lstat(filepath.Join(l, rel), &sys); err != nil {
			continue
		}
		return !(sys.Mode&unix.S_IFMT == unix.S_IFCHR && sys.Rdev == 0)
	}
	return false
}
