package docker

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
)

// testExec runs against a provisioned lab; TestLab calls it.
func testExec(t *testing.T, r *Runtime, sessionID string) {
	t.Run("stdin streams in and end of input reaches the process", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
		defer cancel()
		p, err := r.Exec(ctx, sessionID, "tokyo", lab.ExecRequest{Cmd: []string{"cat"}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := io.WriteString(p, "hello examlab\n"); err != nil {
			t.Fatal(err)
		}
		if err := p.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != "hello examlab\n" {
			t.Errorf("cat echoed %q", out)
		}
		if code, err := p.Wait(ctx); err != nil || code != 0 {
			t.Errorf("wait: %d %v", code, err)
		}
	})

	t.Run("stdout and stderr merge and the exit code comes back", func(t *testing.T) {
		out, code := run(t, r, sessionID, "tokyo", "sh", "-c", "echo out; echo err >&2; exit 3")
		if code != 3 || !strings.Contains(out, "out\n") || !strings.Contains(out, "err\n") {
			t.Errorf("got %q exit %d", out, code)
		}
	})

	t.Run("tty takes its initial size and follows resizes", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
		defer cancel()
		p, err := r.Exec(ctx, sessionID, "kyoto", lab.ExecRequest{
			Cmd:  []string{"/bin/sh"},
			TTY:  true,
			Size: lab.Size{Rows: 33, Cols: 101},
			Env:  []string{"TERM=xterm"},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		term := &screen{}
		go func() { _, _ = io.Copy(term, p) }()

		io.WriteString(p, "stty size\n")
		term.waitFor(t, "33 101")
		if err := p.Resize(ctx, lab.Size{Rows: 40, Cols: 132}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(p, "stty size; exit 7\n")
		term.waitFor(t, "40 132")
		if code, err := p.Wait(ctx); err != nil || code != 7 {
			t.Errorf("wait: %d %v", code, err)
		}
	})
}

// screen collects a terminal's output for tests to wait on.
type screen struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *screen) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(b)
}

func (s *screen) waitFor(t *testing.T, text string) {
	t.Helper()
	deadline := time.Now().Add(execTimeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		// The terminal echoes the command line itself; count only what
		// follows a line break after it.
		ok := strings.Contains(s.buf.String(), text+"\r\n")
		s.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Fatalf("terminal never showed %q; it shows %q", text, s.buf.String())
}

func frame(stream byte, payload string) []byte {
	h := make([]byte, 8, 8+len(payload))
	h[0] = stream
	binary.BigEndian.PutUint32(h[4:], uint32(len(payload)))
	return append(h, payload...)
}

func TestDemuxReader(t *testing.T) {
	cases := []struct {
		name    string
		in      []byte
		want    string
		wantErr string
	}{
		{name: "empty", in: nil, want: ""},
		{name: "stdout and stderr merge in order",
			in:   bytes.Join([][]byte{frame(1, "a\n"), frame(2, "b\n"), frame(1, "c\n")}, nil),
			want: "a\nb\nc\n"},
		{name: "empty frame", in: append(frame(1, ""), frame(1, "x")...), want: "x"},
		{name: "large frame", in: frame(1, strings.Repeat("z", 70000)), want: strings.Repeat("z", 70000)},
		{name: "truncated payload", in: frame(1, "abcdef")[:10], want: "ab", wantErr: "unexpected EOF"},
		{name: "truncated header", in: append(frame(1, "ok"), 1, 0), want: "ok", wantErr: "truncated frame header"},
		{name: "engine error", in: append(frame(1, "ok"), frame(3, "boom")...), want: "ok", wantErr: "boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A one-byte reader makes every frame boundary land mid-read.
			got, err := io.ReadAll(newDemuxReader(&oneByteReader{r: bytes.NewReader(tc.in)}))
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

type oneByteReader struct{ r io.Reader }

func (o *oneByteReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	return o.r.Read(b[:1])
}
