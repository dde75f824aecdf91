package changeset

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// entry is what a test expects of one tar entry.
type entry struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	body     string
	link     string
	xattrs   map[string]string
	major    int64
	minor    int64
}

func (e entry) String() string {
	return fmt.Sprintf("%q type %c mode %o owner %d:%d body %q link %q xattrs %v dev %d,%d",
		e.name, e.typ, e.mode, e.uid, e.gid, e.body, e.link, e.xattrs, e.major, e.minor)
}

var stamp = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// upperTar writes entries as the engine's archive API streams a directory:
// each name under prefix.
func upperTar(t *testing.T, prefix string, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Typeflag: e.typ, Name: prefix + e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Size: int64(len(e.body)), ModTime: stamp, Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeLink {
			h.Linkname = prefix + e.link
		} else {
			h.Linkname = e.link
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords[paxXattr+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("write %s: %v", e.name, err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readEntries lists a change set's entries in order.
func readEntries(t *testing.T, data []byte) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		e := entry{name: h.Name, typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid, body: string(body), link: h.Linkname, major: h.Devmajor, minor: h.Devminor}
		for k, v := range h.PAXRecords {
			if a, ok := strings.CutPrefix(k, paxXattr); ok {
				if e.xattrs == nil {
					e.xattrs = map[string]string{}
				}
				e.xattrs[a] = v
			}
		}
		if !h.ModTime.Equal(stamp) {
			t.Errorf("%q: mod time %v, want %v", h.Name, h.ModTime, stamp)
		}
		out = append(out, e)
	}
}

func TestFromOverlay(t *testing.T) {
	upper := []entry{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/motd", typ: tar.TypeReg, mode: 0o100600, uid: 1000, gid: 1000, body: "changed\n"},
		{name: "etc/issue", typ: tar.TypeChar, mode: 0o020000},
		{name: "usr/bin/su", typ: tar.TypeReg, mode: 0o104755, body: "su"},
		{name: "etc/alias", typ: tar.TypeSymlink, mode: 0o777, link: "/etc/motd"},
		{name: "etc/motd2", typ: tar.TypeLink, mode: 0o600, uid: 1000, gid: 1000, link: "etc/motd"},
		{name: "opt/", typ: tar.TypeDir, mode: 0o700, xattrs: map[string]string{"trusted.overlay.opaque": "y", "trusted.overlay.origin": "x", "user.note": "kept"}},
		{name: "opt/new", typ: tar.TypeReg, mode: 0o644, body: "fresh"},
		{name: "srv/", typ: tar.TypeDir, mode: 0o755},
		{name: "srv/.wh..opq", typ: tar.TypeChar},
		{name: "srv/.wh..wh..opq", typ: tar.TypeReg},
		{name: "srv/data", typ: tar.TypeReg, mode: 0o640, body: "d"},
		{name: "var/.wh.gone", typ: tar.TypeReg},
		{name: "bin/ping", typ: tar.TypeReg, mode: 0o755, body: "p", xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02"}},
		{name: "dev/null2", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		{name: "root/line\nbreak", typ: tar.TypeReg, mode: 0o644, body: "nl"},
		{name: "root/caf\xe9", typ: tar.TypeReg, mode: 0o644, body: "latin1"},
		{name: "root/.wh.caf\xe9", typ: tar.TypeChar},
		{name: "tmp/fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: "mnt/", typ: tar.TypeDir, mode: 0o755},
		{name: "mnt/tools/", typ: tar.TypeDir, mode: 0o755},
		{name: "mnt/tools/.wh..wh..opq", typ: tar.TypeReg},
		{name: "mnt/toolsbox", typ: tar.TypeReg, mode: 0o644, body: "kept"},
	}
	want := []entry{
		{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/motd", typ: tar.TypeReg, mode: 0o600, uid: 1000, gid: 1000, body: "changed\n"},
		{name: "etc/.wh.issue", typ: tar.TypeReg},
		{name: "usr/bin/su", typ: tar.TypeReg, mode: 0o4755, body: "su"},
		{name: "etc/alias", typ: tar.TypeSymlink, mode: 0o777, link: "/etc/motd"},
		{name: "etc/motd2", typ: tar.TypeLink, mode: 0o600, uid: 1000, gid: 1000, link: "etc/motd"},
		{name: "opt/", typ: tar.TypeDir, mode: 0o700, xattrs: map[string]string{"user.note": "kept"}},
		{name: "opt/" + OpaqueMarker, typ: tar.TypeReg},
		{name: "opt/new", typ: tar.TypeReg, mode: 0o644, body: "fresh"},
		{name: "srv/", typ: tar.TypeDir, mode: 0o755},
		{name: "srv/" + OpaqueMarker, typ: tar.TypeReg},
		{name: "srv/data", typ: tar.TypeReg, mode: 0o640, body: "d"},
		{name: "var/.wh.gone", typ: tar.TypeReg},
		{name: "bin/ping", typ: tar.TypeReg, mode: 0o755, body: "p", xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02"}},
		{name: "dev/null2", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		{name: "root/line\nbreak", typ: tar.TypeReg, mode: 0o644, body: "nl"},
		{name: "root/caf\xe9", typ: tar.TypeReg, mode: 0o644, body: "latin1"},
		{name: "root/.wh..wh.caf\xe9", typ: tar.TypeReg},
		{name: "tmp/fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: "mnt/", typ: tar.TypeDir, mode: 0o755},
		{name: "mnt/toolsbox", typ: tar.TypeReg, mode: 0o644, body: "kept"},
	}
	for _, prefix := range []string{"", "./", "upper/", "./upper/"} {
		t.Run("prefix "+prefix, func(t *testing.T) {
			in := upper
			if prefix != "" && prefix != "./" {
				// The archive API names the directory itself first.
				in = append([]entry{{name: "", typ: tar.TypeDir, mode: 0o755}}, upper[1:]...)
			}
			var out bytes.Buffer
			var seen []string
			omit := func(p string) bool { return p == "mnt/tools" }
			st, err := FromOverlay(&out, bytes.NewReader(upperTar(t, prefix, in)), OverlayOptions{Prefix: prefix, Seen: func(p string, _ bool) { seen = append(seen, p) }, Omit: omit})
			if err != nil {
				t.Fatal(err)
			}
			got := readEntries(t, out.Bytes())
			if !slices.EqualFunc(got, want, func(a, b entry) bool { return a.String() == b.String() }) {
				t.Errorf("change set:\n%s\nwant:\n%s", list(got), list(want))
			}
			if st.Entries != len(want) || st.Whiteouts != 3 || st.Opaque != 2 || st.ContentBytes != int64(len("changed\nsufreshdpnllatin1kept")) {
				t.Errorf("stats %+v, want %d entries, 3 whiteouts, 2 opaque directories", st, len(want))
			}
			wantSeen := []string{"etc", "etc/motd", "usr/bin/su", "etc/alias", "etc/motd2", "opt", "opt/new", "srv", "srv/data", "var/.wh.gone", "bin/ping", "dev/null2", "root/line\nbreak", "root/caf\xe9", "tmp/fifo", "mnt", "mnt/toolsbox"}
			if !slices.Equal(seen, wantSeen) {
				t.Errorf("seen %q, want %q", seen, wantSeen)
			}
		})
	}
}

func TestFromOverlayEmpty(t *testing.T) {
	var out bytes.Buffer
	st, err := FromOverlay(&out, bytes.NewReader(upperTar(t, "upper/", []entry{{name: "", typ: tar.TypeDir, mode: 0o755}})), OverlayOptions{Prefix: "upper/"})
	if err != nil {
		t.Fatal(err)
	}
	if got := readEntries(t, out.Bytes()); len(got) != 0 || st.Entries != 0 {
		t.Errorf("an empty upper directory gave %v (%+v)", got, st)
	}
	if out.Len() != 1024 {
		t.Errorf("an empty change set is %d bytes, want the tar's end of 1024", out.Len())
	}
}

func TestFromOverlayRefusesBadInput(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"entry outside the prefix", upperTar(t, "", []entry{{name: "etc/motd", typ: tar.TypeReg, body: "x"}}), ErrOutside},
		{"dot dot", upperTar(t, "upper/", []entry{{name: "../etc/motd", typ: tar.TypeReg, body: "x"}}), ErrOutside},
		{"hard link outside", upperTar(t, "upper/", []entry{{name: "a", typ: tar.TypeReg, body: "x"}, {name: "b", typ: tar.TypeLink, link: "../../a"}}), ErrOutside},
		{"truncated", upperTar(t, "upper/", []entry{{name: "a", typ: tar.TypeReg, body: strings.Repeat("x", 3000)}})[:1500], io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FromOverlay(io.Discard, bytes.NewReader(tc.in), OverlayOptions{Prefix: "upper/"})
			if !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// failAfter accepts n bytes, then fails every write.
type failAfter struct {
	n   int
	err error
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k := f.n
		f.n = 0
		return k, f.err
	}
	f.n -= len(p)
	return len(p), nil
}

func TestFromOverlayStopsAtAFailingWriter(t *testing.T) {
	full := errors.New("no space left on device")
	in := upperTar(t, "upper/", []entry{
		{name: "a", typ: tar.TypeReg, body: strings.Repeat("a", 64<<10)},
		{name: "b", typ: tar.TypeReg, body: "b"},
	})
	var seen []string
	_, err := FromOverlay(&failAfter{n: 10 << 10, err: full}, bytes.NewReader(in), OverlayOptions{Prefix: "upper/", Seen: func(p string, _ bool) { seen = append(seen, p) }})
	if !errors.Is(err, full) {
		t.Fatalf("err = %v, want the writer's", err)
	}
	if len(seen) != 0 {
		t.Errorf("went on after the failed write: saw %q", seen)
	}
}

func list(es []entry) string {
	var b strings.Builder
	for _, e := range es {
		b.WriteString("  " + e.String() + "\n")
	}
	return b.String()
}
