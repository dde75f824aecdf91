package relay

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/examlab/examlab/lab"
)

// castFlushDelay is how long recorded events may sit in memory before they
// reach the file: short enough that a crash loses little, long enough that
// a flood of output is written in large pieces.
const castFlushDelay = 250 * time.Millisecond

// castHeader is the first line of an asciicast v2 file.
type castHeader struct {
	Version   int               `json:"version"`
	Width     int               `json:"width"`
	Height    int               `json:"height"`
	Timestamp int64             `json:"timestamp"`
	Title     string            `json:"title,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
}

// recorder writes one shell's asciicast v2 recording. Events are
// [seconds since start, kind, data] lines; kind is "o" output, "i" input,
// "r" resize ("COLSxROWS") or "m" marker.
type recorder struct {
	mu        sync.Mutex
	f         *os.File
	w         *bufio.Writer
	name      string
	start     time.Time
	limit     int64
	written   int64
	truncated bool
	// pending holds the start of a UTF-8 sequence split across two reads,
	// so that every event's data is whole characters.
	pending []byte
	timer   *time.Timer
	err     error
}

// createRecording opens the first free name of node's recordings in dir:
// {node}.cast, then {node}.2.cast, {node}.3.cast…
func createRecording(dir, node string, size lab.Size, start time.Time, title string, limit int64) (*recorder, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create recording folder: %w", err)
	}
	var f *os.File
	var name string
	for i := 1; ; i++ {
		name = node + ".cast"
		if i > 1 {
			name = node + "." + strconv.Itoa(i) + ".cast"
		}
		var err error
		f, err = os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || i >= 10000 {
			return nil, fmt.Errorf("create recording %s: %w", name, err)
		}
	}
	rec := &recorder{f: f, w: bufio.NewWriterSize(f, 64<<10), name: name, start: start, limit: limit}
	h := castHeader{
		Version: 2, Width: int(size.Cols), Height: int(size.Rows), Timestamp: start.Unix(), Title: title,
		Env: map[string]string{"TERM": "xterm-256color", "SHELL": "/bin/bash"},
	}
	b, _ := json.Marshal(h)
	rec.w.Write(append(b, '\n'))
	rec.written = int64(len(b) + 1)
	if err := rec.flushLocked(); err != nil {
		f.Close()
		return nil, err
	}
	return rec, nil
}

// Output records what the shell wrote.
func (r *recorder) Output(at time.Time, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.truncated || r.f == nil {
		return
	}
	data := p
	if len(r.pending) > 0 {
		data = append(r.pending, p...)
		r.pending = nil
	}
	if cut := incompleteTail(data); cut < len(data) {
		r.pending = append([]byte(nil), data[cut:]...)
		data = data[:cut]
	}
	if len(data) == 0 {
		return
	}
	line := r.encode(at, "o", data)
	if r.written+int64(len(line)) > r.limit {
		r.truncated = true
		r.eventLocked(at, "m", []byte(fmt.Sprintf("recording limit of %d bytes reached; later output is not recorded", r.limit)))
		return
	}
	r.writeLocked(line)
}

// Input records what the candidate typed.
func (r *recorder) Input(at time.Time, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	r.eventLocked(at, "i", p)
}

// Resize records a terminal size change.
func (r *recorder) Resize(at time.Time, sz lab.Size) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	r.eventLocked(at, "r", []byte(fmt.Sprintf("%dx%d", sz.Cols, sz.Rows)))
}

// Marker records a labelled point in time (a reattach, the end).
func (r *recorder) Marker(at time.Time, label string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	r.eventLocked(at, "m", []byte(label))
}

func (r *recorder) eventLocked(at time.Time, kind string, data []byte) {
	r.writeLocked(r.encode(at, kind, data))
}

// encode renders one event line.
func (r *recorder) encode(at time.Time, kind string, data []byte) []byte {
	var line bytes.Buffer
	line.Grow(len(data) + 32)
	line.WriteByte('[')
	line.WriteString(strconv.FormatFloat(max(at.Sub(r.start).Seconds(), 0), 'f', 6, 64))
	line.WriteString(`, "`)
	line.WriteString(kind)
	line.WriteString(`", `)
	enc := json.NewEncoder(&line)
	enc.SetEscapeHTML(false)
	// Invalid UTF-8 is written as U+FFFD, as asciinema itself does.
	_ = enc.Encode(string(data))
	line.Truncate(line.Len() - 1) // the encoder's newline
	line.WriteString("]\n")
	return line.Bytes()
}

func (r *recorder) writeLocked(line []byte) {
	n, err := r.w.Write(line)
	r.written += int64(n)
	if err != nil && r.err == nil {
		r.err = fmt.Errorf("write recording %s: %w", r.name, err)
	}
	if r.timer == nil {
		r.timer = time.AfterFunc(castFlushDelay, r.flush)
	}
}

func (r *recorder) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timer = nil
	if r.f != nil {
		_ = r.flushLocked()
	}
}

func (r *recorder) flushLocked() error {
	if err := r.w.Flush(); err != nil && r.err == nil {
		r.err = fmt.Errorf("write recording %s: %w", r.name, err)
	}
	return r.err
}

// Close writes what is left, syncs and closes the file.
func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return r.err
	}
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if len(r.pending) > 0 && !r.truncated {
		r.eventLocked(time.Now(), "o", r.pending)
		r.pending = nil
	}
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	err := r.flushLocked()
	if serr := r.f.Sync(); serr != nil && err == nil {
		err = fmt.Errorf("sync recording %s: %w", r.name, serr)
	}
	if cerr := r.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close recording %s: %w", r.name, cerr)
	}
	r.f = nil
	return err
}

// incompleteTail returns where a trailing, unfinished UTF-8 sequence of p
// starts, or len(p) when p ends on a character boundary. Bytes that can
// never become valid are left to the encoder.
func incompleteTail(p []byte) int {
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				return i
			}
			return len(p)
		}
	}
	return len(p)
}
