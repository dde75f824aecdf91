package holder

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// outputTimeout bounds each wait for the shell's output.
const outputTimeout = 20 * time.Second

// attachTo dials the holder and says hello.
func attachTo(t *testing.T, dir string) (*Conn, Attached) {
	t.Helper()
	c, err := net.Dial("unix", SocketPath(dir, "tokyo"))
	if err != nil {
		t.Fatalf("dial holder: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	conn := NewConn(c, c)
	if err := conn.Hello(Hello{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	att, err := conn.Attached()
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	return conn, att
}

// readUntil reads output until it holds want; it returns what was read.
func readUntil(t *testing.T, conn *Conn, want string) string {
	t.Helper()
	var got bytes.Buffer
	buf := make([]byte, 4096)
	deadline := time.Now().Add(outputTimeout)
	for !strings.Contains(got.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output within %s; got %q", want, outputTimeout, got.String())
		}
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("read output waiting for %q: %v (got %q)", want, err, got.String())
		}
	}
	return got.String()
}

// TestHolder: a shell on a real pty outlives its attach; a second attach
// takes it over with the scrollback and the offsets that say what it is,
// the first is told, and the shell's exit reaches the attach.
func TestHolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	ln, err := Listen(dir, "tokyo")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket folder: %v, mode %v; want 0700", err, fi.Mode().Perm())
	}
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := Serve(context.Background(), Options{
			Listener: ln, Shell: []string{"/bin/sh"},
			Env:   []string{"PATH=/usr/bin:/bin", "PS1=$ ", TagVar + "=0123456789abcdef01234567"},
			Grace: time.Minute,
		})
		done <- result{code, err}
	}()

	a1, att1 := attachTo(t, dir)
	if !att1.Fresh || att1.Tag != "0123456789abcdef01234567" || att1.End-att1.Start < 0 {
		t.Fatalf("first attach: %+v; want a fresh shell with the tag", att1)
	}
	scroll1 := make([]byte, att1.End-att1.Start)
	if _, err := io.ReadFull(a1, scroll1); err != nil {
		t.Fatal(err)
	}
	if err := a1.Input([]byte("X=42; echo hel''lo\n")); err != nil {
		t.Fatal(err)
	}
	readUntil(t, a1, "hello")

	a2, att2 := attachTo(t, dir)
	if att2.Fresh || att2.Tag != att1.Tag {
		t.Fatalf("second attach: %+v; want the same shell, not fresh", att2)
	}
	scroll := make([]byte, att2.End-att2.Start)
	if _, err := io.ReadFull(a2, scroll); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(scroll), "hello") || att2.Start != 0 {
		t.Errorf("scrollback %q from %d; want all output since the start, with hello", scroll, att2.Start)
	}
	// The first attach is told, after whatever output it was sent.
	buf := make([]byte, 4096)
	for {
		_, err := a1.Read(buf)
		if err == nil {
			continue
		}
		if _, replaced := a1.Ended(); !errors.Is(err, io.EOF) || !replaced {
			t.Fatalf("first attach ended with %v, replaced %v; want EOF after a takeover notice", err, replaced)
		}
		break
	}
	if err := a1.Input([]byte("echo from-the-old-one\n")); err == nil {
		// A replaced attach's input must never reach the shell; its
		// connection is closed, so this write may or may not fail.
		t.Log("write after takeover did not fail at once")
	}
	if err := a2.Resize(40, 132); err != nil {
		t.Fatal(err)
	}
	if err := a2.Input([]byte("echo X=$X; stty size\n")); err != nil {
		t.Fatal(err)
	}
	out := readUntil(t, a2, "40 132")
	if !strings.Contains(out, "X=42") || strings.Contains(out, "from-the-old-one") {
		t.Errorf("after the takeover the shell said %q; want X=42 and nothing typed into the old attach", out)
	}
	if err := a2.Input([]byte("exit 7\n")); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := a2.Read(buf); err != nil {
			break
		}
	}
	if exit, _ := a2.Ended(); exit == nil || exit.Code != 7 {
		t.Errorf("the attach learned exit %+v; want code 7", exit)
	}
	select {
	case r := <-done:
		if r.err != nil || r.code != 7 {
			t.Errorf("Serve returned %d, %v; want 7", r.code, r.err)
		}
	case <-time.After(outputTimeout):
		t.Fatal("the holder did not end with its shell")
	}
	if _, err := os.Stat(SocketPath(dir, "tokyo")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket is left after the holder ended: %v", err)
	}
}

// TestHolderGrace: without an attach for the grace period the shell is
// hung up and the holder ends.
func TestHolderGrace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	ln, err := Listen(dir, "tokyo")
	if err != nil {
		t.Fatal(err)
	}
	code, err := Serve(context.Background(), Options{Listener: ln, Shell: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}, Grace: 200 * time.Millisecond})
	if err != nil || code != 128+1 {
		t.Errorf("Serve returned %d, %v; want the shell hung up (129)", code, err)
	}
}

// TestConnRefusesOthers: an exec that is not a holder (the node has no
// binary) is ErrNoHolder, and frames over the bound are refused before
// their payload is read.
func TestConnRefusesOthers(t *testing.T) {
	c := NewConn(strings.NewReader("OCI runtime exec failed: no such file"), io.Discard)
	if _, err := c.Attached(); !errors.Is(err, ErrNoHolder) {
		t.Errorf("a shell's error message: %v; want ErrNoHolder", err)
	}
	big := []byte{KindOutput, 0x7f, 0xff, 0xff, 0xff}
	c = NewConn(bytes.NewReader(big), io.Discard)
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, ErrProtocol) {
		t.Errorf("a 2 GiB frame: %v; want ErrProtocol", err)
	}
	if err := WriteFrame(io.Discard, KindInput, make([]byte, MaxFrame+1)); !errors.Is(err, ErrProtocol) {
		t.Errorf("writing an oversized frame: %v; want ErrProtocol", err)
	}
}
