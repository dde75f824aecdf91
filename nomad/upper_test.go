package nomad

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mountOverlay mounts an overlay of lower at merged with upper as its
// writable layer, the way a container's root is mounted: with the
// kernel's overlay or with fuse-overlayfs (the Docker engine's
// fuse-overlayfs storage driver). It skips, saying why, where this
// machine cannot.
func mountOverlay(t *testing.T, kind, lower, upper, work, merged string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting an overlay needs root: run the test as root")
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	var err error
	var out []byte
	switch kind {
	case "overlay":
		err = unix.Mount("overlay", merged, "overlay", 0, opts)
	case "fuse-overlayfs":
		if _, lerr := exec.LookPath("fuse-overlayfs"); lerr != nil {
			t.Skip("fuse-overlayfs is not installed (Debian: apt-get install fuse-overlayfs)")
		}
		out, err = exec.Command("fuse-overlayfs", "-o", opts, merged).CombinedOutput()
	}
	if err != nil {
		t.Skipf("cannot mount %s here: %v %s", kind, err, out)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
		}
	})
}

// entry is what a test compares of one tar member.
type entry struct {
	typ     byte
	mode    int64
	uid     int
	content string
	link    string
	xattr   string
}

func readEntries(t *testing.T, r io.Reader) map[string]entry {
	t.Helper()
	got := map[string]entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := got[h.Name]; dup {
			t.Errorf("%q archived twice", h.Name)
		}
		got[h.Name] = entry{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, content: string(b), link: h.Linkname,
			xattr: h.PAXRecords["SCHILY.xattr.user.grade"]}
	}
}

// TestWriteUpperFromOverlays: what a node does to its files, read back
// from the overlay's upper directory, is a change set holding exactly
// that, on the kernel's overlay and on fuse-overlayfs alike.
func TestWriteUpperFromOverlays(t *testing.T) {
	for _, kind := range []string{"overlay", "fuse-overlayfs"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			lower, upper, work, merged := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
			for _, d := range []string{lower, upper, work, merged, lower + "/etc/app", lower + "/srv/old/deep", lower + "/usr/bin"} {
				must(t, os.MkdirAll(d, 0o755))
			}
			for name, body := range map[string]string{
				"etc/motd": "welcome\n", "etc/issue": "Debian\n", "etc/app/conf": "a=1\n",
				"srv/old/x": "x", "srv/old/deep/y": "y", "usr/bin/tool": "#!/bin/sh\n",
			} {
				must(t, os.WriteFile(filepath.Join(lower, name), []byte(body), 0o644))
			}
			mountOverlay(t, kind, lower, upper, work, merged)

			m := func(p string) string { return filepath.Join(merged, p) }
			must(t, os.WriteFile(m("root-notes.txt"), []byte("added\n"), 0o600))     // added
			must(t, os.WriteFile(m("etc/motd"), []byte("changed\n"), 0o644))         // modified
			must(t, os.Chmod(m("usr/bin/tool"), 0o750))                              // chmod-ed
			must(t, os.Remove(m("etc/issue")))                                       // deleted
			must(t, os.Symlink("../etc/motd", m("usr/bin/motd-link")))               // symlink
			must(t, os.Link(m("root-notes.txt"), m("etc/app/notes-link")))           // hard link
			must(t, os.RemoveAll(m("srv/old")))                                      // a directory replaced
			must(t, os.MkdirAll(m("srv/old"), 0o700))                                //   by a new one
			must(t, os.WriteFile(m("srv/old/fresh"), []byte("f"), 0o644))            //   with new contents
			must(t, os.WriteFile(m("odd\nname\xff"), []byte("bytes"), 0o644))        // newline, not UTF-8
			must(t, unix.Mkfifo(m("etc/app/pipe"), 0o640))                           // a FIFO
			must(t, unix.Lsetxattr(m("etc/app/conf"), "user.grade", []byte("A"), 0)) // an xattr
			l, err := net.Listen("unix", m("run.sock"))                              // a socket
			must(t, err)
			defer l.Close()

			var buf bytes.Buffer
			must(t, os.Mkdir(m("alloc"), 0o755)) // a mount point, left out
			st, err := WriteUpper(context.Background(), upper, []string{lower}, func(p string) bool { return p == "alloc" }, &buf)
			if err != nil {
				t.Fatal(err)
			}
			got := readEntries(t, &buf)
			want := map[string]entry{
				"root-notes.txt":       {typ: tar.TypeReg, mode: 0o600, content: "added\n"},
				"etc/":                 {typ: tar.TypeDir, mode: 0o755},
				"etc/motd":             {typ: tar.TypeReg, mode: 0o644, content: "changed\n"},
				"etc/.wh.issue":        {typ: tar.TypeReg},
				"etc/app/":             {typ: tar.TypeDir, mode: 0o755},
				"etc/app/notes-link":   {typ: tar.TypeLink, mode: 0o600, link: "root-notes.txt"},
				"etc/app/pipe":         {typ: tar.TypeFifo, mode: 0o640},
				"etc/app/conf":         {typ: tar.TypeReg, mode: 0o644, content: "a=1\n", xattr: "A"},
				"usr/":                 {typ: tar.TypeDir, mode: 0o755},
				"usr/bin/":             {typ: tar.TypeDir, mode: 0o755},
				"usr/bin/tool":         {typ: tar.TypeReg, mode: 0o750, content: "#!/bin/sh\n"},
				"usr/bin/motd-link":    {typ: tar.TypeSymlink, mode: 0o777, link: "../etc/motd"},
				"srv/":                 {typ: tar.TypeDir, mode: 0o755},
				"srv/old/":             {typ: tar.TypeDir, mode: 0o700},
				"srv/old/.wh..wh..opq": {typ: tar.TypeReg},
				"srv/old/fresh":        {typ: tar.TypeReg, mode: 0o644, content: "f"},
				"odd\nname\xff":        {typ: tar.TypeReg, mode: 0o644, content: "bytes"},
			}
			// The hard link's first name is whichever the walk met first.
			if e, ok := got["root-notes.txt"]; ok && e.typ == tar.TypeLink {
				want["root-notes.txt"], want["etc/app/notes-link"] = entry{typ: tar.TypeLink, mode: 0o600, link: "etc/app/notes-link"},
					entry{typ: tar.TypeReg, mode: 0o600, content: "added\n"}
			}
			var names []string
			for n := range got {
				names = append(names, n)
			}
			sort.Strings(names)
			for n, w := range want {
				if g, ok := got[n]; !ok {
					t.Errorf("%q is missing from the change set (it has %q)", n, names)
				} else if g != w {
					t.Errorf("%q = %+v, want %+v", n, g, w)
				}
			}
			for n := range got {
				if _, ok := want[n]; !ok {
					t.Errorf("%q is in the change set but was not changed", n)
				}
			}
			for n := range got {
				if strings.Contains(n, ".wh..opq") && !strings.HasSuffix(n, ".wh..wh..opq") {
					t.Errorf("the overlay's own mark %q was archived", n)
				}
			}
			if st.Deleted != 1 || st.Skipped != 1 || len(st.SkippedPaths) != 1 || st.SkippedPaths[0] != `"run.sock"` {
				t.Errorf("stats %+v: want 1 deleted, run.sock skipped", st)
			}
			// Added: root-notes.txt, the link, pipe, motd-link, fresh,
			// the odd name; the rest the image had.
			if st.Added != 6 || st.Modified != 9 {
				t.Errorf("stats %+v: want 6 added, 9 modified", st)
			}
		})
	}
}

// TestWriteUpperStopsOnAFailingWriter: a capture whose reader has gone
// ends with the writer's error.
func TestWriteUpperStopsOnAFailingWriter(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte("x"), 1<<20), 0o644))
	gone := errors.New("reader gone")
	_, err := WriteUpper(context.Background(), dir, nil, nil, failAfter{n: 4096, err: gone})
	if !errors.Is(err, gone) {
		t.Fatalf("WriteUpper = %v, want the writer's error", err)
	}
}

type failAfter struct {
	n   int
	err error
}

func (f failAfter) Write(b []byte) (int, error) {
	if len(b) > f.n {
		return f.n, f.err
	}
	return len(b), nil
}

func TestRootOverlay(t *testing.T) {
	const mi = `1170 1100 0:95 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/A:/var/lib/docker/overlay2/l/B,upperdir=/var/lib/docker/overlay2/abc\040d/diff,workdir=/var/lib/docker/overlay2/abc/work
1171 1170 0:98 / /proc rw,nosuid - proc proc rw
`
	upper, lower, err := rootOverlay(strings.NewReader(mi))
	if err != nil || upper != "/var/lib/docker/overlay2/abc d/diff" || strings.Join(lower, ",") != "/var/lib/docker/overlay2/l/A,/var/lib/docker/overlay2/l/B" {
		t.Errorf("rootOverlay = %q %q %v", upper, lower, err)
	}
	if _, _, err := rootOverlay(strings.NewReader("1 0 0:1 / / rw - fuse.fuse-overlayfs fuse rw,user_id=0\n")); err == nil {
		t.Error("a root that is not a kernel overlay gave an upper directory")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
