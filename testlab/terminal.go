package testlab

import (
	"bytes"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// TerminalTimeout bounds opening a terminal and waiting for one command's
// result in it.
const TerminalTimeout = 20 * time.Second

// Terminal is a candidate's terminal WebSocket, opened the way the exam
// page opens it, for deployment tests that reach examlab over the network.
type Terminal struct {
	ws  *websocket.Conn
	out bytes.Buffer // output since the last probe
}

// OpenTerminal opens node's terminal of session id at base (the API's or a
// relay's URL) with token as bearer and origin as the browser's Origin;
// it is closed when the test ends.
func OpenTerminal(t testing.TB, base, origin, token, id, node string) *Terminal {
	t.Helper()
	h := http.Header{}
	h.Set("Origin", origin)
	h.Set("Authorization", "Bearer "+token)
	dialer := websocket.Dialer{HandshakeTimeout: TerminalTimeout}
	url := "ws" + strings.TrimPrefix(base, "http") + "/ws/session/" + id + "/terminal/" + node
	ws, resp, err := dialer.Dial(url, h)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("open terminal %s: %v %s", url, err, status)
	}
	tm := &Terminal{ws: ws}
	t.Cleanup(tm.Close)
	return tm
}

// Probe runs command in the terminal and returns its exit status. The
// status is printed after a marker the typed line itself does not match
// (the shell echoes "$?", not a number).
func (tm *Terminal) Probe(t testing.TB, name, command string) int {
	t.Helper()
	marker := regexp.MustCompile(`probe-` + regexp.QuoteMeta(name) + `=(\d+)`)
	tm.out.Reset()
	line := command + "; echo probe-" + name + "=$?\r"
	if err := tm.ws.WriteMessage(websocket.BinaryMessage, []byte(line)); err != nil {
		t.Fatalf("terminal write: %v", err)
	}
	tm.ws.SetReadDeadline(time.Now().Add(TerminalTimeout))
	for {
		typ, data, err := tm.ws.ReadMessage()
		if err != nil {
			t.Fatalf("terminal: no result of %q: %v; output:\n%s", command, err, tm.out.String())
		}
		if typ != websocket.BinaryMessage {
			continue // control frames: ready, status
		}
		tm.out.Write(data)
		if m := marker.FindSubmatch(tm.out.Bytes()); m != nil {
			rc, _ := strconv.Atoi(string(m[1]))
			t.Logf("terminal: %s: exit %d", command, rc)
			return rc
		}
	}
}

// Output is what the terminal printed since the last probe began.
func (tm *Terminal) Output() string { return tm.out.String() }

// Close closes the WebSocket.
func (tm *Terminal) Close() { tm.ws.Close() }
