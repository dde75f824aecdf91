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
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/examlab/examlab/changeset"
)

// UpperStats counts what a change set written from an overlay upper
// directory holds.
type UpperStats struct {
	// Entries is every tar entry written, markers included.
	Entries int `json:"entries"`
	// Files, Dirs, Symlinks, HardLinks and Others (devices, FIFOs) are
	// the added or changed paths by kind.
	Files     int `json:"files"`
	Dirs      int `json:"dirs"`
	Symlinks  int `json:"symlinks"`
	HardLinks int `json:"hard_links"`
	Others    int `json:"others"`
	// Added and Modified split those paths by whether the node's image
	// (the lower layers) has them.
	Added    int `json:"added"`
	Modified int `json:"modified"`
	// Deleted is the number of whiteouts, Opaque of opaque directories.
	Deleted int `json:"deleted"`
	Opaque  int `json:"opaque"`
	// Bytes is the content of the regular files.
	Bytes int64 `json:"bytes"`
	// Skipped counts what a tar cannot hold (sockets), which is left out;
	// SkippedPaths names the first maxSkippedPaths of them.
	Skipped      int      `json:"skipped,omitempty"`
	SkippedPaths []string `json:"skipped_paths,omitempty"`
}

// maxSkippedPaths bounds the skipped paths a capture names.
const maxSkippedPaths = 20

// overlayOpaqueXattrs mark a directory of an upper directory as opaque:
// the kernel's overlay and fuse-overlayfs (running as root) both set the
// first; an unprivileged overlay the second.
var overlayOpaqueXattrs = []string{"trusted.overlay.opaque", "user.overlay.opaque"}

// fuseOpaqueDevice is fuse-overlayfs's own mark of an opaque directory, a
// character device beside the OpaqueMarker file it also writes.
const fuseOpaqueDevice = changeset.WhiteoutPrefix + ".opq"

// internalXattr reports whether an extended attribute is the overlay's
// bookkeeping rather than the node's: such are never archived.
func internalXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.") ||
		strings.HasPrefix(name, "user.fuseoverlayfs.")
}

// ErrUpperUnsupported: the upper directory holds what only the overlay can
// make sense of (a redirected directory or a metadata-only copy), so its
// files alone are not the node's changes. Docker never mounts overlays
// with those features.
var ErrUpperUnsupported = errors.New("the overlay's upper directory uses redirect_dir or metacopy")

// WriteUpper writes the overlay upper directory root — a container's
// writable layer, everything the node changed since it started — to w as a
// change set (see package changeset): added and changed files, directories,
// symlinks, hard links, devices and FIFOs with their mode, owner, mtime and
// extended attributes; the overlay's whiteouts (character devices 0/0) as
// changeset whiteouts; opaque directories with the OpaqueMarker. Sockets
// cannot be archived and are counted in Skipped. lower are the layers
// under it, topmost first, which tell an added path from a modified one.
// It streams: each file is copied through as it is read.
func WriteUpper(ctx context.Context, root string, lower []string, w io.Writer) (UpperStats, error) {
	var st UpperStats
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
		return writeUpperEntry(tw, path, filepath.ToSlash(rel), lower, links, &st)
	})
	if err != nil {
		return st, fmt.Errorf("write changes from %s: %w", root, err)
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("write changes from %s: %w", root, err)
	}
	return st, nil
}

func writeUpperEntry(tw *tar.Writer, path, rel string, lower []string, links map[[2]uint64]string, st *UpperStats) error {
	var sys unix.Stat_t
	if err := unix.Lstat(path, &sys); err != nil {
		return fmt.Errorf("stat %q: %w", rel, err)
	}
	base := filepath.Base(rel)
	mode := sys.Mode & unix.S_IFMT
	if mode == unix.S_IFCHR && sys.Rdev == 0 {
		if base == fuseOpaqueDevice {
			return nil // the OpaqueMarker file beside it says the same
		}
		// A whiteout: the node deleted this path of its image.
		st.Deleted++
		return writeMarker(tw, pathJoin(parentOf(rel), changeset.WhiteoutPrefix+base), st)
	}
	if mode == unix.S_IFREG && base == changeset.OpaqueMarker {
		return nil // written with its directory, whatever marked it
	}
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
	if inLower(lower, rel) {
		st.Modified++
	} else {
		st.Added++
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
		if internalXattr(k) {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	switch mode {
	case unix.S_IFDIR:
		hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
		st.Dirs++
		if err := writeHeader(tw, hdr, st); err != nil {
			return err
		}
		opaque, err := isOpaque(path, xattrs)
		if err != nil {
			return fmt.Errorf("%q: %w", rel, err)
		}
		if opaque {
			st.Opaque++
			return writeMarker(tw, pathJoin(rel, changeset.OpaqueMarker), st)
		}
		return nil
	case unix.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("read symlink %q: %w", rel, err)
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		st.Symlinks++
		return writeHeader(tw, hdr, st)
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if mode == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(sys.Rdev)), int64(unix.Minor(sys.Rdev))
		st.Others++
		return writeHeader(tw, hdr, st)
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
		st.Others++
		return writeHeader(tw, hdr, st)
	case unix.S_IFREG:
	default:
		return fmt.Errorf("%q: unknown file type %#o", rel, mode)
	}
	if sys.Nlink > 1 {
		key := [2]uint64{sys.Dev, sys.Ino}
		if first, ok := links[key]; ok {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
			st.HardLinks++
			return writeHeader(tw, hdr, st)
		}
		links[key] = rel
	}
	hdr.Typeflag, hdr.Size = tar.TypeReg, sys.Size
	st.Files++
	if err := writeHeader(tw, hdr, st); err != nil {
		return err
	}
	return copyFile(tw, path, rel, sys, st)
}

// copyFile copies a regular file's content into the archive. The file is
// opened without following a symlink and must still be the one stat saw:
// in a frozen lab it is, and anything else fails the capture rather than
// archive a mix.
func copyFile(tw *tar.Writer, path, rel string, sys unix.Stat_t, st *UpperStats) error {
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
	st.Bytes += n
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%q shrank while it was archived (%d of %d bytes)", rel, n, sys.Size)
	}
	if err != nil {
		return fmt.Errorf("archive %q: %w", rel, err)
	}
	return nil
}

func writeHeader(tw *tar.Writer, hdr *tar.Header, st *UpperStats) error {
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("archive %q: %w", hdr.Name, err)
	}
	st.Entries++
	return nil
}

// writeMarker writes an empty regular file: a whiteout or an opaque mark.
func writeMarker(tw *tar.Writer, name string, st *UpperStats) error {
	return writeHeader(tw, &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Format: tar.FormatPAX, ModTime: time.Unix(0, 0)}, st)
}

// isOpaque reports whether an upper directory hides the image's contents
// of the same directory.
func isOpaque(path string, xattrs map[string]string) (bool, error) {
	for _, k := range overlayOpaqueXattrs {
		if xattrs[k] == "y" {
			return true, nil
		}
	}
	// fuse-overlayfs without the right to set trusted.* marks it with a
	// file of the marker's name.
	fi, err := os.Lstat(filepath.Join(path, changeset.OpaqueMarker))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return fi.Mode().IsRegular(), nil
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

// parentOf is the directory part of a relative slash path, "" at the top.
func parentOf(rel string) string {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return ""
	}
	return rel[:i]
}

func pathJoin(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
