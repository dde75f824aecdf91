package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/holder"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// holdTimeout bounds waiting for a held shell's output to reach its
// scrollback.
const holdTimeout = 30 * time.Second

// staticExamlab builds this command static (CGO_ENABLED=0), as `make
// build` does: the examlab a client runs as the lab's agent, which ships
// itself as the nodes' terminal holder. The test binary, which the agent
// would otherwise ship as /proc/self/exe, is no examlab.
func staticExamlab(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "examlab")
	cmd := exec.Command("go", "build", "-o", path, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build examlab static: %v\n%s", err, out)
	}
	return path
}

// holdAttach runs, in node's container, `examlab hold attach` from the
// grader's tools as the relay execs it, sends it a hello and input, ends
// its input (a relay that went away) and returns the holder's answer and
// the output that followed it (the scrollback first). An error is what
// the relay would see: holder.ErrNoHolder when no holder answered.
func holdAttach(t *testing.T, eng *testlab.Engine, spec lab.Spec, node, input string) (holder.Attached, string, error) {
	t.Helper()
	var frames bytes.Buffer
	c := holder.NewConn(strings.NewReader(""), &frames)
	if err := c.Hello(holder.Hello{Rows: 24, Cols: 80}); err != nil {
		t.Fatal(err)
	}
	if input != "" {
		if err := c.Input([]byte(input)); err != nil {
			t.Fatal(err)
		}
	}
	// The exec's terminal would mangle the frames: they cross it in base64.
	script := "printf %s " + base64.StdEncoding.EncodeToString(frames.Bytes()) + " | /.examlab/busybox base64 -d | " +
		"/.examlab/examlab hold attach -name " + node + " -- /bin/sh 2>&1 | /.examlab/busybox base64 -w0; echo; echo end-of-frames"
	out, _ := run(t, eng, spec, node, script)
	b64, _, ok := strings.Cut(out, "\nend-of-frames")
	if !ok {
		t.Fatalf("attach in %s did not run:\n%s", node, out)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil {
		t.Fatalf("attach in %s: output %q: %v", node, b64, err)
	}
	conn := holder.NewConn(bytes.NewReader(raw), io.Discard)
	att, err := conn.Attached()
	if err != nil {
		return att, "", err
	}
	rest, _ := io.ReadAll(conn) // up to where the holder let go
	return att, string(rest), nil
}

// TestLabnetShipsTheTerminalHolder runs a segmented lab as today's jobs
// do, with the tools volume named for the client's busybox and examlab:
// the agent puts its examlab into the volume, and `examlab hold attach`
// in a node keeps a shell that a second attach, as after a relay restart,
// finds with its scrollback. A volume of another examlab is refused, and
// an older job's volume, busybox alone, is filled without the holder, so
// the relay's attach finds none there and it gives a shell of its own.
func TestLabnetShipsTheTerminalHolder(t *testing.T) {
	eng := testlab.NewEngine(t)
	self := staticExamlab(t)
	names, err := docker.ToolsNamesFor(docker.DefaultGraderBusybox, self)
	if err != nil || names.With == "" {
		t.Fatalf("this test needs %s (busybox-static) and a static examlab: %+v, %v", docker.DefaultGraderBusybox, names, err)
	}
	// Registered first, so removed last, once the nodes are gone.
	t.Cleanup(func() { eng.RemoveVolume(t, names.With) })
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()

	spec := twoNodes(t, false)
	const alloc = "alloc-hold"
	plan := planFile(t, eng, spec)
	state := filepath.Join(t.TempDir(), "labnet.json")
	other := "examlab-grader-000000000000"
	err = labnet(ctx, []string{"up", "-session", spec.SessionID, "-plan", plan, "-alloc", alloc, "-wait", "1s", "-grader-tools", other, "-grader-holder", self})
	if err == nil || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), names.With) {
		t.Errorf("labnet up with another examlab's volume = %v, want a refusal naming it and %s", err, names.With)
	}

	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- labnet(wctx, []string{"watch", "-session", spec.SessionID, "-exam", spec.ExamID, "-plan", plan, "-state", state, "-alloc", alloc,
			"-wait", "60s", "-every", "200ms", "-grader-tools", names.With, "-grader-holder", self})
	}()
	defer func() {
		stop()
		if err := <-watched; err != nil {
			t.Errorf("labnet watch ended with %v, want nil once stopped", err)
		}
	}()
	startNodes(t, eng, spec, alloc, jobspecs.NomadOptions{GraderTools: names.With})
	if err := labnet(ctx, []string{"up", "-session", spec.SessionID, "-await", state, "-wait", "60s"}); err != nil {
		t.Fatalf("labnet up -await: %v", err)
	}

	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(bin)
	out, code := run(t, eng, spec, "a", "/.examlab/busybox sha256sum /.examlab/examlab && touch /.examlab/examlab")
	if code == 0 || !strings.HasPrefix(out, hex.EncodeToString(sum[:])) {
		t.Errorf("the nodes' examlab is not the agent's, or not read-only (exit %d):\n%s", code, out)
	}

	att, _, err := holdAttach(t, eng, spec, "a", "echo hel''lo-held\n")
	if err != nil || !att.Fresh {
		t.Fatalf("first attach in a: %+v, %v; want a fresh held shell", att, err)
	}
	deadline := time.Now().Add(holdTimeout)
	for {
		again, scroll, err := holdAttach(t, eng, spec, "a", "")
		if err != nil || again.Fresh || again.Tag != att.Tag {
			t.Fatalf("attach after the first went: %+v, %v; want the same shell (%+v)", again, err, att)
		}
		if strings.Contains(scroll, "hello-held") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the held shell's scrollback lacks its output after %s: %q", holdTimeout, scroll)
		}
		time.Sleep(200 * time.Millisecond)
	}

	t.Run("an older job's volume", func(t *testing.T) {
		old := twoNodes(t, false)
		const oldAlloc = "alloc-hold-old"
		oldPlan := clientWith(t, eng, old, oldAlloc, jobspecs.NomadOptions{GraderTools: names.Bare})
		if err := labnet(ctx, []string{"up", "-session", old.SessionID, "-plan", oldPlan, "-alloc", oldAlloc, "-wait", "30s",
			"-grader-tools", names.Bare, "-grader-holder", self}); err != nil {
			t.Fatalf("labnet up with busybox's volume: %v", err)
		}
		if out, code := run(t, eng, old, "a", "/.examlab/busybox sh -c 'PATH=/.examlab/bin; ip route >/dev/null && echo tools'"); code != 0 || !strings.Contains(out, "tools") {
			t.Errorf("the grader's tools are not there (exit %d):\n%s", code, out)
		}
		if _, _, err := holdAttach(t, eng, old, "a", ""); !errors.Is(err, holder.ErrNoHolder) {
			t.Errorf("attach in an older job's node: %v; want holder.ErrNoHolder, on which the relay runs the shell itself", err)
		}
	})
}

// TestLabnetToolsRefusals: a client refuses, in one line naming both, a
// tools volume its busybox and examlab do not make, before it asks the
// engine for anything.
func TestLabnetToolsRefusals(t *testing.T) {
	bb := docker.DefaultGraderBusybox
	// busybox-static stands in for a static examlab build.
	static, err := docker.ToolsNamesFor(bb, bb)
	if err != nil || static.With == "" {
		t.Fatalf("this test needs %s (busybox-static): %+v, %v", bb, static, err)
	}
	for _, tc := range []struct {
		name, busybox, holder, want string
		says                        []string
	}{
		{"another build's volume", bb, bb, "examlab-grader-000000000000", []string{"examlab-grader-000000000000", static.With, static.Bare}},
		{"a client examlab built with cgo", bb, "/bin/ls", static.With, []string{static.With, static.Bare, "cannot join it", "terminal holder"}},
		{"no busybox", filepath.Join(t.TempDir(), "busybox"), bb, static.With, []string{"no grader busybox"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, err := docker.New(docker.Options{Host: "unix:///nonexistent/docker.sock", GraderBusybox: tc.busybox, Holder: tc.holder})
			if err != nil {
				t.Fatal(err)
			}
			err = graderTools(context.Background(), rt, "ctoolsrefuse", tc.want, tc.busybox, tc.holder)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			for _, s := range tc.says {
				if !strings.Contains(msg, s) {
					t.Errorf("refusal %q does not say %q", msg, s)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("refusal %q is not one line", msg)
			}
		})
	}
}
