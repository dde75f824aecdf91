package relay

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
)

// castEvent is one decoded event line.
type castEvent struct {
	At   float64
	Kind string
	Data string
}

func readCast(t *testing.T, path string) (castHeader, []castEvent) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 8<<20)
	if !sc.Scan() {
		t.Fatalf("%s is empty", path)
	}
	var h castHeader
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil {
		t.Fatalf("header %q: %v", sc.Text(), err)
	}
	var evs []castEvent
	for sc.Scan() {
		var raw []json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil || len(raw) != 3 {
			t.Fatalf("event line %q is not [time, kind, data]: %v", sc.Text(), err)
		}
		var e castEvent
		if json.Unmarshal(raw[0], &e.At) != nil || json.Unmarshal(raw[1], &e.Kind) != nil || json.Unmarshal(raw[2], &e.Data) != nil {
			t.Fatalf("event line %q has wrong types", sc.Text())
		}
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return h, evs
}

func TestRecorder(t *testing.T) {
	dir := t.TempDir()
	start := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	rec, err := createRecording(dir, "tokyo", lab.Size{Rows: 30, Cols: 100}, start, "s tokyo", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if rec.name != "tokyo.cast" {
		t.Errorf("first recording is %s, want tokyo.cast", rec.name)
	}
	rec.Input(start.Add(500*time.Millisecond), []byte("echo \"héllo\"\r"))
	// "é" arrives split across two reads: the event data stays whole.
	rec.Output(start.Add(time.Second), []byte("h\xc3"))
	rec.Output(start.Add(1500*time.Millisecond), []byte("\xa9llo <b>&\r\n"))
	rec.Resize(start.Add(2*time.Second), lab.Size{Rows: 40, Cols: 120})
	rec.Output(start.Add(3*time.Second), []byte("bad \xff byte"))
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}

	h, evs := readCast(t, filepath.Join(dir, "tokyo.cast"))
	if h.Version != 2 || h.Width != 100 || h.Height != 30 || h.Timestamp != start.Unix() {
		t.Errorf("header %+v", h)
	}
	want := []castEvent{
		{0.5, "i", "echo \"héllo\"\r"},
		{1, "o", "h"},
		{1.5, "o", "éllo <b>&\r\n"},
		{2, "r", "120x40"},
		{3, "o", "bad \uFFFD byte"},
	}
	if len(evs) != len(want) {
		t.Fatalf("events %+v, want %+v", evs, want)
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, evs[i], want[i])
		}
	}

	second, err := createRecording(dir, "tokyo", lab.Size{Rows: 24, Cols: 80}, start, "", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if second.name != "tokyo.2.cast" {
		t.Errorf("second recording is %s, want tokyo.2.cast", second.name)
	}
}

func TestRecorderLimit(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	rec, err := createRecording(dir, "g1", lab.Size{Rows: 24, Cols: 80}, start, "", 4096)
	if err != nil {
		t.Fatal(err)
	}
	chunk := strings.Repeat("y\r\n", 300)
	for i := 0; i < 20; i++ {
		rec.Output(start, []byte(chunk))
	}
	rec.Input(start, []byte("\x03"))
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, "g1.cast"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() > 4096+512 {
		t.Errorf("recording grew to %d bytes past its 4096-byte limit", info.Size())
	}
	_, evs := readCast(t, filepath.Join(dir, "g1.cast"))
	var markers, inputs int
	for _, e := range evs {
		switch e.Kind {
		case "m":
			markers++
		case "i":
			inputs++
		}
	}
	if markers != 1 || inputs != 1 {
		t.Errorf("got %d markers and %d inputs, want the limit marked once and input still recorded", markers, inputs)
	}
}

func TestIncompleteTail(t *testing.T) {
	cases := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"abc", 3},
		{"ab\xc3", 2},
		{"ab\xc3\xa9", 4},
		{"\xe2\x82", 0},
		{"x\xf0\x9f\x98", 1},
		{"x\xf0\x9f\x98\x80", 5},
		{"\xff", 1},
	}
	for _, tc := range cases {
		t.Run(strings.ToValidUTF8(tc.in, "?"), func(t *testing.T) {
			if got := incompleteTail([]byte(tc.in)); got != tc.want {
				t.Errorf("incompleteTail(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}
