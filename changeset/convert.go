package changeset

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// The ways an overlay filesystem's upper directory marks what it hides
// from the image below it.
const (
	// overlayOpaqueXattr on a directory says it replaced the image's:
	// the kernel's overlay sets it (trusted.), fuse-overlayfs may too, in
	// the user namespace when it runs unprivileged.
	overlayOpaqueXattr = "overlay.opaque"
	// fuseOpaqueDevice is a whiteout fuse-overlayfs keeps beside its own
	// opaque marker file; it hides nothing of the image's.
	fuseOpaqueDevice = WhiteoutPrefix + ".opq"
	// paxXattr prefixes extended attributes among a tar header's PAX
	// records.
	paxXattr = "SCHILY.xattr."
)

// overlayXattrPrefixes are the extended attributes an overlay keeps for
// itself; none of them belongs to the node's files.
var overlayXattrPrefixes = []string{"trusted.overlay.", "user.overlay.", "user.fuseoverlayfs."}

// modeBits are the bits of a tar header's mode a change set keeps: the
// permissions with setuid, setgid and sticky. The file's type is its
// entry's type; some writers repeat it in the mode (040755), which is
// dropped.
const modeBits = 0o7777

// ErrOutside is returned for an entry of the upper directory's tar whose
// name is not under the prefix it was read with.
var ErrOutside = errors.New("entry outside the upper directory")

// OverlayStats count what FromOverlay wrote.
type OverlayStats struct {
	// Entries is every entry written, whiteouts and opaque markers
	// included.
	Entries int
	// Whiteouts counts deleted paths; Opaque, replaced directories.
	Whiteouts int
	Opaque    int
	// ContentBytes is the size of the regular files' contents written.
	ContentBytes int64
}

// OverlayOptions say how to read an upper directory's tar.
type OverlayOptions struct {
	// Prefix begins every entry's name: "upper/", or "" when the directory
	// is the tar's root. A leading "./" is ignored.
	Prefix string
	// Seen, when set, is called with the path of every entry copied (not
	// whiteouts or markers), without a trailing slash, and whether it is a
	// directory.
	Seen func(path string, dir bool)
	// Omit, when set, leaves out every path it reports true for, and all
	// under it: the mount points of a container, which its runtime made.
	Omit func(path string) bool
}

// FromOverlay reads r, a tar of an overlay filesystem's upper directory
// (see OverlayOptions), and writes to w
// the change set it holds, as this package's doc comment lays it out:
//
//   - a character device 0/0 (the overlay's whiteout) becomes a whiteout
//     entry of the same path;
//   - a directory marked opaque, by an overlay.opaque extended attribute
//     or by fuse-overlayfs's own OpaqueMarker file, gets one OpaqueMarker
//     entry, and fuse-overlayfs's internal whiteout ".wh..opq" is dropped;
//   - every other entry is copied with its metadata (mode, owner, times,
//     extended attributes but the overlay's own, device numbers, link
//     targets; hard links stay hard links), renamed relative to the root.
//
// File contents stream from r to w; nothing but one entry's header is
// held at a time.
//
// A name in the upper directory that begins with WhiteoutPrefix is
// indistinguishable from a whiteout in an image layer too; it is copied as
// it is.
func FromOverlay(w io.Writer, r io.Reader, o OverlayOptions) (OverlayStats, error) {
	var st OverlayStats
	var omitted []string // directories left out, with a trailing slash
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	// Directories whose opaque marker was written: fuse-overlayfs marks
	// one twice (its device and its file).
	marked := map[string]bool{}
	marker := func(dir string, h *tar.Header) error {
		if marked[dir] {
			return nil
		}
		marked[dir] = true
		st.Opaque++
		return st.write(tw, &tar.Header{Typeflag: tar.TypeReg, Name: dir + OpaqueMarker, ModTime: h.ModTime, Format: tar.FormatPAX})
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, fmt.Errorf("read upper dir: %w", err)
		}
		name, err := relative(h.Name, o.Prefix)
		if err != nil {
			return st, err
		}
		if name == "" {
			continue // the upper directory itself: the root is no change
		}
		if under(name, omitted) {
			continue
		}
		if o.Omit != nil && o.Omit(name) {
			omitted = append(omitted, name+"/")
			continue
		}
		dir, base := path.Split(name)
		switch {
		case h.Typeflag == tar.TypeChar && h.Devmajor == 0 && h.Devminor == 0:
			if base == fuseOpaqueDevice {
				if err := marker(dir, h); err != nil {
					return st, err
				}
				continue
			}
			st.Whiteouts++
			wh := &tar.Header{Typeflag: tar.TypeReg, Name: dir + WhiteoutPrefix + base, Uid: h.Uid, Gid: h.Gid, ModTime: h.ModTime, Format: tar.FormatPAX}
			if err := st.write(tw, wh); err != nil {
				return st, err
			}
			continue
		case base == OpaqueMarker && h.Typeflag == tar.TypeReg:
			if err := marker(dir, h); err != nil {
				return st, err
			}
			continue
		case strings.HasPrefix(base, WhiteoutPrefix) && h.Typeflag == tar.TypeReg:
			// An overlay that cannot make devices writes its whiteouts
			// as files of this very form.
			st.Whiteouts++
		}
		out, opaque := copyHeader(h, name)
		if h.Typeflag == tar.TypeLink {
			target, err := relative(h.Linkname, o.Prefix)
			if err != nil || target == "" {
				return st, fmt.Errorf("hard link %q to %q: %w", name, h.Linkname, ErrOutside)
			}
			out.Linkname = target
		}
		if out.Typeflag == tar.TypeDir {
			out.Name += "/"
		}
		if err := st.write(tw, out); err != nil {
			return st, err
		}
		if out.Typeflag == tar.TypeReg {
			n, err := io.Copy(tw, tr)
			st.ContentBytes += n
			if err != nil {
				return st, fmt.Errorf("copy %q: %w", name, err)
			}
		}
		if o.Seen != nil {
			o.Seen(name, out.Typeflag == tar.TypeDir)
		}
		if opaque && out.Typeflag == tar.TypeDir {
			if err := marker(name+"/", h); err != nil {
				return st, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("end change set: %w", err)
	}
	return st, nil
}

// under reports whether name lies in one of dirs (each ending in "/").
func under(name string, dirs []string) bool {
	for _, d := range dirs {
		if strings.HasPrefix(name, d) {
			return true
		}
	}
	return false
}

func (st *OverlayStats) write(tw *tar.Writer, h *tar.Header) error {
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write %q: %w", h.Name, err)
	}
	st.Entries++
	return nil
}

// relative strips prefix, and any "./" before it, from a tar entry's name
// and returns it without a trailing slash; "" is the upper directory
// itself.
func relative(name, prefix string) (string, error) {
	rest := strings.TrimPrefix(name, "./")
	if p := strings.TrimSuffix(strings.TrimPrefix(prefix, "./"), "/"); p != "" && p != "." {
		if rest == p || rest == p+"/" {
			return "", nil
		}
		var ok bool
		if rest, ok = strings.CutPrefix(rest, p+"/"); !ok {
			return "", fmt.Errorf("%q is not under %q: %w", name, prefix, ErrOutside)
		}
	}
	rest = strings.TrimSuffix(rest, "/")
	if rest == "" || rest == "." {
		return "", nil
	}
	for _, part := range strings.Split(rest, "/") {
		if part == ".." || part == "" {
			return "", fmt.Errorf("%q: %w", name, ErrOutside)
		}
	}
	return rest, nil
}

// copyHeader returns h renamed to name, with its metadata and extended
// attributes but none of the overlay's own, and whether an overlay
// attribute marked it opaque. The copy is built field by field so that no
// PAX record of the old name or size travels with it.
func copyHeader(h *tar.Header, name string) (*tar.Header, bool) {
	out := &tar.Header{
		Typeflag:   h.Typeflag,
		Name:       name,
		Linkname:   h.Linkname,
		Size:       h.Size,
		Mode:       h.Mode & modeBits,
		Uid:        h.Uid,
		Gid:        h.Gid,
		Uname:      h.Uname,
		Gname:      h.Gname,
		ModTime:    h.ModTime,
		AccessTime: h.AccessTime,
		ChangeTime: h.ChangeTime,
		Devmajor:   h.Devmajor,
		Devminor:   h.Devminor,
		Format:     tar.FormatPAX,
	}
	opaque := false
	for k, v := range h.PAXRecords {
		attr, ok := strings.CutPrefix(k, paxXattr)
		if !ok {
			continue
		}
		if overlayAttr(attr) {
			if strings.HasSuffix(attr, "."+overlayOpaqueXattr) && v == "y" {
				opaque = true
			}
			continue
		}
		if out.PAXRecords == nil {
			out.PAXRecords = map[string]string{}
		}
		out.PAXRecords[k] = v
	}
	return out, opaque
}

func overlayAttr(name string) bool {
	for _, p := range overlayXattrPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
