package changeset_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/changeset"
	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// These tests drive real containers on the local Docker engine (DOCKER_HOST,
// else /var/run/docker.sock) from the lab image `make image` builds, and
// the grader's busybox (busybox-static) the runtime mounts at /.examlab.

// Named timeouts of the steps the tests wait on.
const (
	provisionTimeout = 3 * time.Minute
	applyTimeout     = 3 * time.Minute
)

const oneNode = `
id: changeset-test
title: Change set test
duration: 10m
tasks:
  - {id: t1, title: T, kind: text, prompt: p}
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 128, cpus: 0.5, pids: 256}
    capabilities: [CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, KILL]
  nodes:
    - {name: n1, role: branch}
`

// newLab brings up a one-node lab on a runtime of the test's own instance
// and removes it when the test ends.
func newLab(t testing.TB, rt *docker.Runtime) string {
	t.Helper()
	ex, err := exam.Parse([]byte(oneNode))
	if err != nil {
		t.Fatal(err)
	}
	id := labID(t)
	spec, err := lab.NewSpec(ex, lab.Session{ID: id, Candidate: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rt.Destroy(ctx, id)
	})
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return id
}

func labID(t testing.TB) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[0] = 't'
	for i := 1; i < len(b); i++ {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func runtime(t testing.TB) *docker.Runtime {
	t.Helper()
	rt, err := docker.New(docker.Options{Instance: "t-" + labID(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.Ping(ctx); err != nil {
		t.Fatalf("these tests need a running Docker engine: %v", err)
	}
	return rt
}

// sh runs a shell script of the test's own in a node.
func sh(t testing.TB, rt lab.Runner, id, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, code, err := lab.Output(ctx, rt, id, "n1", "sh", "-c", script)
	if err != nil || code != 0 {
		t.Fatalf("%s: exit %d, %v: %s", script, code, err, out)
	}
	return out
}

// imageLike is what both labs get first, standing in for image content the
// candidate then deletes: a name with a newline in it.
const imageLike = `set -e
f=$(printf '/srv/del\nme'); echo gone > "$f"
touch -d '2021-01-01 00:00:00' "$f" /srv`

// candidateWork is what the candidate does: a file changed (content,
// mode, owner), a directory and a setuid file added with a time of their
// own, a symlink and a hard link, image files deleted, a directory deleted
// and made again (its image contents gone), and names with a newline and
// with a byte that is not UTF-8.
const candidateWork = `set -e
printf 'changed\n' > /etc/motd; chmod 0640 /etc/motd; chown 1000:1000 /etc/motd
mkdir -p /opt/app; chmod 0750 /opt/app; chown 1000:100 /opt/app
printf '#!/bin/sh\necho hi\n' > /opt/app/run.sh; chmod 4755 /opt/app/run.sh
ln -s /etc/motd /opt/app/link
ln /opt/app/run.sh /opt/app/hard
touch -d '2020-01-02 03:04:05' /opt/app/run.sh
rm /etc/issue
rm -rf /etc/skel; mkdir /etc/skel; echo only > /etc/skel/only
f=$(printf '/root/odd\nname'); echo nl > "$f"
g=$(printf '/root/caf\351'); echo latin1 > "$g"
rm -f "$(printf '/srv/del\nme')"`

// changedPaths are what candidateWork added or changed, directories whose
// entries changed included, as a change set lists them.
var changedPaths = []string{"etc", "etc/motd", "etc/skel", "etc/skel/only", "opt", "opt/app", "opt/app/run.sh",
	"opt/app/link", "opt/app/hard", "root", "root/odd\nname", "root/caf\xe9", "srv"}

// whiteouts are candidateWork's deletions, in the change set format.
var whiteouts = []string{"etc/" + changeset.WhiteoutPrefix + "issue", "srv/" + changeset.WhiteoutPrefix + "del\nme", "etc/skel/" + changeset.OpaqueMarker}

// fingerprint lists every path under the folders the test changes with
// its mode, owner, type, link target, size and time (to the second, as a
// tar keeps it), and every file's sha256: two nodes with equal
// fingerprints hold the same files there. Left out are the files the
// engine makes in every container (/etc/hosts, hostname, resolv.conf,
// mtab).
func fingerprint(t testing.TB, rt lab.Runner, id string) string {
	t.Helper()
	// Times to the second: a tar (a full export's too) keeps no more.
	out := sh(t, rt, id, `find /etc /opt /root /srv -xdev \( -path /etc/hosts -o -path /etc/hostname -o -path /etc/resolv.conf -o -path /etc/mtab \) -prune -o -printf '%p|%m|%U|%G|%y|%l|%s|%T@\0' | sort -z | tr '\0' '\n';
find /etc /opt /root /srv -xdev -type f ! -path /etc/hosts ! -path /etc/hostname ! -path /etc/resolv.conf -print0 | sort -z | xargs -0 sha256sum`)
	return fractions.ReplaceAllString(out, "|$1\n")
}

// fractions are the sub-second parts of the listed times.
var fractions = regexp.MustCompile(`\|([0-9]+)\.[0-9]+\n`)

// changeSetOf builds the change set of candidateWork from the candidate's
// node: the changed paths as its own tar writes them (so every mode,
// owner, time and link is the node's), then the whiteouts and the opaque
// marker. It is built from known changes: the platform's capture of a
// change set lands separately, and api's review test archives a real lab.
func changeSetOf(t testing.TB, rt lab.Runner, id string, extra func(*tar.Writer)) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := rt.Exec(ctx, id, "n1", lab.ExecRequest{Cmd: []string{"sh", "-c", "exec tar -c -f - -C / --numeric-owner --xattrs --no-recursion --null -T - 2>/dev/null"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var list bytes.Buffer
	for _, n := range changedPaths {
		list.WriteString(n)
		list.WriteByte(0)
	}
	if _, err := p.Write(list.Bytes()); err != nil {
		t.Fatal(err)
	}
	p.CloseWrite()
	path := filepath.Join(t.TempDir(), "exam-n1.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	tr := tar.NewReader(p)
	seen := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read the node's tar: %v", err)
		}
		if h.ModTime.Nanosecond() != 0 {
			h.Format = tar.FormatPAX // keep the time as the node has it
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
		seen++
	}
	if seen != len(changedPaths) {
		t.Fatalf("the node's tar held %d of the %d changed paths", seen, len(changedPaths))
	}
	for _, w := range whiteouts {
		if err := tw.WriteHeader(&tar.Header{Name: w, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if extra != nil {
		extra(tw)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func opener(path string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return os.Open(path) }
}

// TestApplyChangeSet applies a change set to a fresh node and finds the
// candidate's node in it, path for path: contents, modes (setuid
// included), owners, times, links, deletions (a name with a newline
// among them) and an opaque directory holding only its new entry. Paths
// the runtime owns are skipped, /etc/hosts is written in place, and a
// second application changes nothing.
func TestApplyChangeSet(t *testing.T) {
	rt := runtime(t)
	cand, fresh := newLab(t, rt), newLab(t, rt)
	sh(t, rt, cand, imageLike)
	sh(t, rt, fresh, imageLike)
	sh(t, rt, cand, candidateWork)
	want := fingerprint(t, rt, cand)
	if before := fingerprint(t, rt, fresh); before == want {
		t.Fatal("the fresh node already looks like the candidate's: the test proves nothing")
	}
	cs := changeSetOf(t, rt, cand, func(tw *tar.Writer) {
		hosts := "10.9.9.9\treview-marker\n"
		tw.WriteHeader(&tar.Header{Name: "etc/hosts", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(hosts))})
		tw.Write([]byte(hosts))
		tw.WriteHeader(&tar.Header{Name: "proc/", Typeflag: tar.TypeDir, Mode: 0o555})
		tw.WriteHeader(&tar.Header{Name: ".examlab/busybox", Typeflag: tar.TypeReg, Mode: 0o755})
	})
	ctx, cancel := context.WithTimeout(context.Background(), applyTimeout)
	defer cancel()
	for round := 1; round <= 2; round++ {
		st, err := changeset.Apply(ctx, rt, fresh, "n1", opener(cs), changeset.Expect{})
		if err != nil {
			t.Fatalf("apply, round %d: %v", round, err)
		}
		if st.Deleted != 2 || st.Opaque != 1 || st.Entries != len(changedPaths) || st.InPlace != 1 || st.Skipped != 2 {
			t.Errorf("round %d: %+v", round, st)
		}
		if got := fingerprint(t, rt, fresh); got != want {
			t.Fatalf("round %d: the restored node differs from the candidate's:\n%s", round, diff(want, got))
		}
	}
	if out := sh(t, rt, fresh, "cat /etc/hosts; ls /etc/skel; test ! -e /etc/issue && echo issue-gone; stat -c %a /opt/app/run.sh"); !strings.Contains(out, "review-marker") ||
		strings.TrimSpace(strings.Split(out, "\n")[1]) != "only" || !strings.Contains(out, "issue-gone") || !strings.Contains(out, "4755") {
		t.Errorf("restored node: %q", out)
	}
	// The grader's tools are untouched and still run.
	sh(t, rt, fresh, changeset.ToolsBusybox+" true")
}

// TestApplyFullExport restores a node from a real full export (docker
// export through the runtime's ExportFS): it has no whiteouts, so what
// the fresh node has beyond it — the candidate's deletions — is removed.
func TestApplyFullExport(t *testing.T) {
	rt := runtime(t)
	cand, fresh := newLab(t, rt), newLab(t, rt)
	sh(t, rt, cand, imageLike)
	sh(t, rt, fresh, imageLike)
	sh(t, rt, cand, candidateWork)
	want := fingerprint(t, rt, cand)
	path := filepath.Join(t.TempDir(), "full.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), applyTimeout)
	defer cancel()
	if err := rt.ExportFS(ctx, cand, "n1", f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := changeset.Apply(ctx, rt, fresh, "n1", opener(path), changeset.Expect{Full: true})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if st.Pruned < 3 || st.Deleted != 0 {
		t.Errorf("stats %+v: want the deleted issue, skel files and srv file pruned", st)
	}
	if got := fingerprint(t, rt, fresh); got != want {
		t.Fatalf("the restored node differs from the candidate's:\n%s", diff(want, got))
	}
}

// TestApplyRefusesAChangedSnapshot: a snapshot whose size or checksum is
// not the manifest's is refused before anything in the node changes, and
// so is one with a path that leaves the root.
func TestApplyRefusesAChangedSnapshot(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2})
	tw.Write([]byte("x\n"))
	tw.Close()
	path := filepath.Join(t.TempDir(), "s.tar")
	os.WriteFile(path, buf.Bytes(), 0o600)
	var evil bytes.Buffer
	ew := tar.NewWriter(&evil)
	ew.WriteHeader(&tar.Header{Name: "../../etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644})
	ew.Close()
	evilPath := filepath.Join(t.TempDir(), "evil.tar")
	os.WriteFile(evilPath, evil.Bytes(), 0o600)
	never := neverRun{t}
	for _, tc := range []struct {
		name string
		path string
		want changeset.Expect
		err  error
	}{
		{"size", path, changeset.Expect{Size: int64(buf.Len()) + 1}, changeset.ErrChecksum},
		{"checksum", path, changeset.Expect{SHA256: strings.Repeat("0", 64)}, changeset.ErrChecksum},
		{"path outside the root", evilPath, changeset.Expect{}, changeset.ErrBadEntry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := changeset.Apply(context.Background(), never, "tabcdefghijk", "n1", opener(tc.path), tc.want)
			if !errors.Is(err, tc.err) {
				t.Fatalf("apply: %v, want %v", err, tc.err)
			}
		})
	}
}

// neverRun fails the test when anything would run in a node.
type neverRun struct{ t *testing.T }

func (n neverRun) Exec(context.Context, string, string, lab.ExecRequest) (lab.Process, error) {
	n.t.Fatal("a refused snapshot ran something in the node")
	return nil, nil
}

// diff lists the lines only one side has.
func diff(want, got string) string {
	w, g := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(want, "\n") {
		w[l] = true
	}
	for _, l := range strings.Split(got, "\n") {
		g[l] = true
	}
	var out []string
	for l := range w {
		if !g[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range g {
		if !w[l] {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
