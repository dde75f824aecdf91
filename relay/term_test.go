package relay_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// Named timeouts of the terminal tests.
const (
	dialTimeout   = 10 * time.Second
	outputTimeout = 20 * time.Second
	closeTimeout  = 15 * time.Second
)

// screenKeep is how much recent output a test terminal keeps to search.
const screenKeep = 1 << 20

// dialOpts say how a test terminal presents itself.
type dialOpts struct {
	cookie    string // Cookie header value, e.g. examlab_session=…
	bearer    string
	origin    string
	firstAuth string // sent as the first frame's token
	rows      int
	cols      int
}

// term is a test client of one terminal WebSocket.
type term struct {
	t  testing.TB
	ws *websocket.Conn

	wmu sync.Mutex

	mu       sync.Mutex
	screen   bytes.Buffer // recent output, at most screenKeep
	total    int64        // output bytes ever received
	counted  byte         // a byte value to count in the output
	count    int64
	controls []map[string]any
	changed  chan struct{}

	gate   chan struct{} // reads wait while paused
	paused bool

	closed    chan struct{}
	closeCode int
	closeText string
}

// dial opens a terminal; it fails the test if the handshake itself fails.
func dial(t testing.TB, url string, o dialOpts) *term {
	t.Helper()
	tm, resp, err := tryDial(t, url, o)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	return tm
}

func tryDial(t testing.TB, url string, o dialOpts) (*term, *http.Response, error) {
	h := http.Header{}
	if o.cookie != "" {
		h.Set("Cookie", o.cookie)
	}
	if o.bearer != "" {
		h.Set("Authorization", "Bearer "+o.bearer)
	}
	if o.origin != "" {
		h.Set("Origin", o.origin)
	}
	if o.rows > 0 {
		url += "?rows=" + strconv.Itoa(o.rows) + "&cols=" + strconv.Itoa(o.cols)
	}
	d := websocket.Dialer{HandshakeTimeout: dialTimeout}
	ws, resp, err := d.Dial(url, h)
	if err != nil {
		return nil, resp, err
	}
	tm := &term{t: t, ws: ws, changed: make(chan struct{}), gate: make(chan struct{}), closed: make(chan struct{})}
	close(tm.gate)
	t.Cleanup(func() { ws.Close() })
	if o.firstAuth != "" {
		tm.sendJSON(map[string]any{"type": "auth", "token": o.firstAuth})
	}
	go tm.readLoop()
	return tm, resp, nil
}

func (tm *term) readLoop() {
	defer close(tm.closed)
	for {
		tm.mu.Lock()
		gate := tm.gate
		tm.mu.Unlock()
		<-gate
		typ, data, err := tm.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			tm.mu.Lock()
			if errors.As(err, &ce) {
				tm.closeCode, tm.closeText = ce.Code, ce.Text
			} else {
				tm.closeCode, tm.closeText = -1, err.Error()
			}
			tm.notifyLocked()
			tm.mu.Unlock()
			return
		}
		tm.mu.Lock()
		switch typ {
		case websocket.BinaryMessage:
			tm.total += int64(len(data))
			if tm.counted != 0 {
				tm.count += int64(bytes.Count(data, []byte{tm.counted}))
			}
			tm.screen.Write(data)
			if over := tm.screen.Len() - screenKeep; over > 0 {
				tm.screen.Next(over)
			}
		case websocket.TextMessage:
			var m map[string]any
			if json.Unmarshal(data, &m) != nil {
				tm.t.Errorf("relay sent a text frame that is not JSON: %q", data)
			}
			tm.controls = append(tm.controls, m)
		}
		tm.notifyLocked()
		tm.mu.Unlock()
	}
}

func (tm *term) notifyLocked() {
	close(tm.changed)
	tm.changed = make(chan struct{})
}

// pause stops reading, so output backs up in the relay.
func (tm *term) pause() {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if !tm.paused {
		tm.paused = true
		tm.gate = make(chan struct{})
	}
}

func (tm *term) resume() {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if tm.paused {
		tm.paused = false
		close(tm.gate)
	}
}

func (tm *term) send(s string) {
	tm.t.Helper()
	tm.wmu.Lock()
	defer tm.wmu.Unlock()
	if err := tm.ws.WriteMessage(websocket.BinaryMessage, []byte(s)); err != nil {
		tm.t.Fatalf("send %q: %v", s, err)
	}
}

func (tm *term) sendJSON(v any) {
	tm.t.Helper()
	tm.wmu.Lock()
	defer tm.wmu.Unlock()
	if err := tm.ws.WriteJSON(v); err != nil {
		tm.t.Fatalf("send %v: %v", v, err)
	}
}

// until waits for cond over the state, failing the test after timeout.
func (tm *term) until(what string, timeout time.Duration, cond func() bool) {
	tm.t.Helper()
	deadline := time.After(timeout)
	for {
		tm.mu.Lock()
		ok := cond()
		ch := tm.changed
		tm.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			tm.mu.Lock()
			defer tm.mu.Unlock()
			tail := tm.screen.String()
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			tm.t.Fatalf("waited %s for %s; close %d %q; controls %v; screen ends %q", timeout, what, tm.closeCode, tm.closeText, tm.controls, tail)
		}
	}
}

// waitReady waits for the relay's ready message and returns it.
func (tm *term) waitReady() map[string]any {
	tm.t.Helper()
	var ready map[string]any
	tm.until("the ready message", outputTimeout, func() bool {
		for _, m := range tm.controls {
			if m["type"] == "ready" {
				ready = m
				return true
			}
		}
		return false
	})
	return ready
}

// waitLine waits until text appears on a line of its own in the output,
// which the echo of the command that prints it does not satisfy. The line
// starts after a newline or, when the shell switched a terminal mode just
// before, after a carriage return.
func (tm *term) waitLine(text string) {
	tm.t.Helper()
	afterNL, afterCR := []byte("\n"+text+"\r\n"), []byte("\r"+text+"\r\n")
	tm.until("output line "+strconv.Quote(text), outputTimeout, func() bool {
		b := tm.screen.Bytes()
		return bytes.Contains(b, afterNL) || bytes.Contains(b, afterCR)
	})
}

// waitClose waits for the connection to end and returns the close code and
// reason.
func (tm *term) waitClose() (int, string) {
	tm.t.Helper()
	select {
	case <-tm.closed:
	case <-time.After(closeTimeout):
		tm.t.Fatalf("connection still open after %s; controls %v", closeTimeout, tm.controls)
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.closeCode, tm.closeText
}

// drop cuts the connection without a close frame, as a network blip would.
func (tm *term) drop() {
	tm.ws.UnderlyingConn().Close()
	<-tm.closed
}

func (tm *term) screenText() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.screen.String()
}
