package relay

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	// floor is the time of the last event a previous relay wrote to a
	// continued recording: event times never go back.
	floor float64
	// offset is the holder's output offset recorded up to (held shells).
	offset int64
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
	// The lock tells a relay continuing this shell's recording to wait
	// until this one has written its last event.
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
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
	r.offset += int64(len(p))
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
	line.WriteString(strconv.FormatFloat(max(at.Sub(r.start).Seconds(), r.floor), 'f', 6, 64))
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

// Offset is the holder's output offset the recording has reached.
func (r *recorder) Offset() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.offset
}

// Marks a held shell's recording carries, so that the relay that attaches
// next knows where this one stopped: "attached shell=TAG offset=N" when a
// relay attaches, "detached shell=TAG offset=N" when it lets go of a shell
// that lives on in its node.
const (
	markAttached = "attached"
	markDetached = "detached"
)

func holdMark(kind, tag string, offset int64) string {
	return kind + " shell=" + tag + " offset=" + strconv.FormatInt(offset, 10)
}

// castMark is the last holder mark found in a recording.
type castMark struct {
	kind   string
	tag    string
	offset int64
}

func parseHoldMark(label string) (castMark, bool) {
	f := strings.Fields(label)
	if len(f) != 3 || (f[0] != markAttached && f[0] != markDetached) ||
		!strings.HasPrefix(f[1], "shell=") || !strings.HasPrefix(f[2], "offset=") {
		return castMark{}, false
	}
	n, err := strconv.ParseInt(strings.TrimPrefix(f[2], "offset="), 10, 64)
	if err != nil || n < 0 {
		return castMark{}, false
	}
	return castMark{kind: f[0], tag: strings.TrimPrefix(f[1], "shell="), offset: n}, true
}

// castTail bounds how much of a recording's end is read for its last mark.
const castTail = 256 << 10

// recordingLockWait bounds the wait for the relay that records a shell to
// let go of its file when another relay takes the shell over.
const recordingLockWait = 10 * time.Second

// latestRecording names the newest of node's recordings in dir, "" when
// there is none.
func latestRecording(dir, node string) string {
	latest := ""
	for i := 1; i < 10000; i++ {
		name := node + ".cast"
		if i > 1 {
			name = node + "." + strconv.Itoa(i) + ".cast"
		}
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return latest
		}
		latest = name
	}
	return latest
}

// continueRecording reopens node's newest recording when it is the one of
// the held shell tag, once the relay recording it now has let go of it
// (or recordingLockWait has passed). It returns the recording's last mark;
// nil when the newest recording is another shell's or there is none.
func continueRecording(dir, node, tag string, limit int64) (*recorder, castMark, error) {
	name := latestRecording(dir, node)
	if name == "" {
		return nil, castMark{}, nil
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, castMark{}, fmt.Errorf("continue recording %s: %w", name, err)
	}
	deadline := time.Now().Add(recordingLockWait)
	for syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	start, last, mark, size, err := readCastEnd(path)
	if err != nil || mark.tag != tag {
		f.Close()
		return nil, castMark{}, err
	}
	rec := &recorder{f: f, w: bufio.NewWriterSize(f, 64<<10), name: name, start: start, limit: limit,
		written: size, floor: last, offset: mark.offset}
	return rec, mark, nil
}

// readCastEnd reads a recording's header time, its last event's time, its
// last holder mark and its size.
func readCastEnd(path string) (start time.Time, last float64, mark castMark, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return start, 0, mark, 0, fmt.Errorf("read recording: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	head, err := br.ReadBytes('\n')
	var h castHeader
	if err != nil || json.Unmarshal(head, &h) != nil {
		return start, 0, mark, 0, fmt.Errorf("read recording %s: no header", filepath.Base(path))
	}
	start = time.Unix(h.Timestamp, 0)
	fi, err := f.Stat()
	if err != nil {
		return start, 0, mark, 0, fmt.Errorf("read recording: %w", err)
	}
	size = fi.Size()
	from := max(int64(len(head)), size-castTail)
	buf := make([]byte, size-from)
	if _, err := f.ReadAt(buf, from); err != nil && err != io.EOF {
		return start, 0, mark, 0, fmt.Errorf("read recording: %w", err)
	}
	for _, line := range bytes.Split(buf, []byte{'\n'}) {
		var ev [3]json.RawMessage
		var at float64
		var kind, data string
		if json.Unmarshal(line, &ev) != nil || json.Unmarshal(ev[0], &at) != nil ||
			json.Unmarshal(ev[1], &kind) != nil || json.Unmarshal(ev[2], &data) != nil {
			continue // the cut at the front, or a torn last line
		}
		last = max(last, at)
		if kind == "m" {
			if m, ok := parseHoldMark(data); ok {
				mark = m
			}
		}
	}
	return start, last, mark, size, nil
}
