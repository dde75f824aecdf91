package nomad

import (
	"archive/tar"
	"bytes"
	"errors"
	"testing"
)

// TestTarTail tells a whole tar stream from one cut short, wherever the
// cut falls.
func TestTarTail(t *testing.T) {
	var whole bytes.Buffer
	tw := tar.NewWriter(&whole)
	for _, name := range []string{"etc/hostname", "root/work.txt"} {
		body := bytes.Repeat([]byte("x"), 700)
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := whole.Bytes()
	feed := func(data []byte, chunk int) error {
		c := newTarCheck()
		defer c.abort()
		for len(data) > 0 {
			n := min(chunk, len(data))
			c.Write(data[:n])
			data = data[n:]
		}
		return c.complete()
	}
	for _, chunk := range []int{1, 100, 512, 4096} {
		if err := feed(b, chunk); err != nil {
			t.Errorf("whole archive in %d-byte writes: %v", chunk, err)
		}
	}
	for _, cut := range []int{0, 100, 512, 1024, 1536, len(b) - 1024, len(b) - 512, len(b) - 1} {
		if err := feed(b[:cut], 300); !errors.Is(err, ErrExportCut) {
			t.Errorf("archive cut at %d of %d bytes: %v, want ErrExportCut", cut, len(b), err)
		}
	}
	// A member of zeros cut short where the stream still ends in zero
	// blocks: the headers say it is short.
	var zeros bytes.Buffer
	zw := tar.NewWriter(&zeros)
	zw.WriteHeader(&tar.Header{Name: "var/zeros", Mode: 0o644, Size: 8192})
	zw.Write(make([]byte, 8192))
	zw.Close()
	if err := feed(zeros.Bytes()[:512+4096], 512); !errors.Is(err, ErrExportCut) {
		t.Errorf("a zero-filled member cut short: %v", err)
	}
	// A stream of the right length whose end is not zeros.
	bad := append([]byte(nil), b...)
	bad[len(bad)-3] = 'x'
	if err := feed(bad, 512); !errors.Is(err, ErrExportCut) {
		t.Errorf("archive without its end blocks: %v", err)
	}
}

func TestLingeringKeepsTheCommandWhole(t *testing.T) {
	got := lingering([]string{"echo", "a b", "$HOME"}, exportLinger)
	want := []string{"/bin/sh", "-c", `"$@"; rc=$?; sleep 1.00; exit $rc`, "examlab-exec", "echo", "a b", "$HOME"}
	if len(got) != len(want) {
		t.Fatalf("lingering = %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("lingering = %q, want %q", got, want)
		}
	}
}

// TestOutputEnd: the end of an agent verb's output is known from the
// length it announces on stderr, however the two streams are cut into
// writes, and output that came short or long is refused.
func TestOutputEnd(t *testing.T) {
	tests := []struct {
		name   string
		stdout []string
		stderr []string
		ended  bool
		ok     bool
	}{
		{"announced after the output", []string{"abc", "de"}, []string{"examlab-logs 5\n"}, true, true},
		{"announced before the output", nil, []string{"note\nexamlab-logs 5\n"}, false, false},
		{"announcement split across writes", []string{"abcde"}, []string{"exam", "lab-logs ", "5", "\n"}, true, true},
		{"no output", nil, []string{"examlab-logs 0\n"}, true, true},
		{"output cut short", []string{"abc"}, []string{"examlab-logs 5\n"}, false, false},
		{"more output than announced", []string{"abcdef"}, []string{"examlab-logs 5\n"}, true, false},
		{"never announced", []string{"abc"}, []string{"examlab: engine unreachable\n"}, false, false},
		{"not a number", []string{"abc"}, []string{"examlab-logs three\n"}, false, false},
		{"a line without its end", []string{"abc"}, []string{"examlab-logs 3"}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newOutputEnd(VerbLogs, logsTrailer)
			out := e.counter()
			for _, s := range tc.stderr {
				e.Write([]byte(s))
			}
			for _, s := range tc.stdout {
				out.Write([]byte(s))
			}
			ended := false
			select {
			case <-e.done:
				ended = true
			default:
			}
			if ended != tc.ended {
				t.Errorf("ended = %v, want %v", ended, tc.ended)
			}
			if err := e.complete(); (err == nil) != tc.ok {
				t.Errorf("complete() = %v, want ok %v", err, tc.ok)
			}
		})
	}
}
