package relay

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/contrib/websocket"

	"github.com/examlab/examlab/lab"
)

// maxQueuedControl bounds control messages waiting for one client; answers
// like pong are dropped beyond it rather than queued without end.
const maxQueuedControl = 64

// frame is one message queued for a client.
type frame struct {
	kind int // textMessage, binaryMessage or websocket.CloseMessage
	data []byte
	code int // for close frames
}

// client is one WebSocket connection: a candidate driving a shell or an
// admin watching one. Only the writer goroutine writes data frames; close
// and ping control frames may be written from anywhere.
//
// Output waits in a queue bounded in bytes (Options.SendQueueBytes).
// Output that arrives while the writer is busy joins the last queued frame,
// up to the chunk size, so a fast shell's many small reads leave as a few
// large messages while a lone keystroke's echo leaves at once.
type client struct {
	r        *Relay
	ws       *websocket.Conn
	key      termKey
	readOnly bool

	// prelude is written before anything queued: the ready message and the
	// replay, set while attaching so that no live output can overtake them.
	prelude []frame

	qmu      sync.Mutex
	q        []frame
	qBytes   int  // output bytes in q
	qControl int  // control frames in q
	gone     bool // drained: nothing more is queued
	wake     chan struct{}
	space    chan struct{}

	done  chan struct{}
	once  sync.Once
	wrote chan struct{} // closed when the writer has exited

	lastInput atomic.Int64 // unix nanoseconds

	// inMu orders input against the attach: keystrokes and a resize sent
	// before the shell was attached wait in early and earlySize, and reach
	// the shell before anything sent later.
	inMu      sync.Mutex
	early     []byte
	earlySize *lab.Size
}

// maxEarlyInput bounds the keystrokes kept for a shell not attached yet.
const maxEarlyInput = 64 << 10

func (r *Relay) newClient(ws *websocket.Conn, key termKey, readOnly bool) *client {
	c := &client{
		r: r, ws: ws, key: key, readOnly: readOnly,
		wake:  make(chan struct{}, 1),
		space: make(chan struct{}, 1),
		done:  make(chan struct{}),
		wrote: make(chan struct{}),
	}
	c.touch()
	return c
}

func (c *client) touch() { c.lastInput.Store(time.Now().UnixNano()) }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// enqueueData adds output to the queue if it fits (an empty queue takes
// anything) and reports whether it did.
func (c *client) enqueueData(b []byte) bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.gone || (c.qBytes > 0 && c.qBytes+len(b) > c.r.o.SendQueueBytes) {
		return false
	}
	if n := len(c.q); n > 0 && c.q[n-1].kind == binaryMessage && len(c.q[n-1].data)+len(b) <= c.r.chunk {
		c.q[n-1].data = append(c.q[n-1].data, b...)
	} else {
		c.q = append(c.q, frame{kind: binaryMessage, data: append(make([]byte, 0, max(len(b), min(c.r.chunk, 4<<10))), b...)})
	}
	c.qBytes += len(b)
	c.r.addQueued(int64(len(b)))
	c.r.notePeakConn(int64(c.qBytes))
	signal(c.wake)
	return true
}

// sendData queues output for the client, waiting while its queue is full:
// this wait is the relay's flow control. It returns false once the client
// is gone.
func (c *client) sendData(b []byte) bool {
	for {
		if c.closed() {
			return false
		}
		if c.enqueueData(b) {
			return true
		}
		select {
		case <-c.space:
		case <-c.done:
			return false
		}
	}
}

// trySendData queues output without waiting; false when the queue is full.
func (c *client) trySendData(b []byte) bool {
	if c.closed() {
		return true // the viewer is going anyway
	}
	return c.enqueueData(b)
}

// queueControl adds a control or close frame behind the queued output.
func (c *client) queueControl(f frame, force bool) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.gone || (!force && c.qControl >= maxQueuedControl) {
		return
	}
	c.q = append(c.q, f)
	c.qControl++
	signal(c.wake)
}

// sendJSON queues a control message behind the output already queued.
func (c *client) sendJSON(v any) {
	b, _ := json.Marshal(v)
	c.queueControl(frame{kind: textMessage, data: b}, true)
}

// trySendJSON queues an answer (pong, a notice) unless many are waiting:
// the read loop must never wait on a client that does not read.
func (c *client) trySendJSON(v any) {
	b, _ := json.Marshal(v)
	c.queueControl(frame{kind: textMessage, data: b}, false)
}

// sendClose queues a close frame behind everything already queued, so the
// client sees all output and then the reason.
func (c *client) sendClose(code int, reason string) {
	c.queueControl(frame{kind: websocket.CloseMessage, code: code, data: []byte(reason)}, true)
}

// writeJSONNow writes a control message directly; only before the writer
// has started.
func (c *client) writeJSONNow(v any) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(c.r.o.WriteTimeout))
	return c.ws.WriteJSON(v)
}

// closeNow ends the connection at once with code and reason: the close
// frame goes out ahead of any queued output, and the read loop is given a
// moment to receive the peer's answer.
func (c *client) closeNow(code int, reason string) {
	c.once.Do(func() {
		close(c.done)
		if len(reason) > 120 {
			reason = reason[:120]
		}
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
		_ = c.ws.SetReadDeadline(time.Now().Add(closeLinger))
	})
}

// closed reports whether the connection is ending.
func (c *client) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// take removes and returns everything queued.
func (c *client) take() []frame {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	fs := c.q
	c.q = nil
	c.qControl = 0
	return fs
}

// written gives back a written frame's bytes to the queue's budget.
func (c *client) written(n int) {
	c.qmu.Lock()
	c.qBytes -= n
	c.qmu.Unlock()
	c.r.addQueued(-int64(n))
	signal(c.space)
}

// writeLoop writes the prelude, then queued frames, until the client is
// closed or a write fails. Pings share the connection through WriteControl.
func (c *client) writeLoop() {
	defer close(c.wrote)
	defer c.drain()
	write := func(f frame) bool {
		if f.kind == websocket.CloseMessage {
			c.closeNow(f.code, string(f.data))
			return false
		}
		_ = c.ws.SetWriteDeadline(time.Now().Add(c.r.o.WriteTimeout))
		if err := c.ws.WriteMessage(f.kind, f.data); err != nil {
			// A client that cannot take a frame within WriteTimeout is
			// gone; its shell waits for a reattach.
			c.closeNow(CloseGoingAway, "write failed")
			return false
		}
		return true
	}
	for _, f := range c.prelude {
		if !write(f) {
			return
		}
	}
	c.prelude = nil
	ping := time.NewTicker(c.r.o.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-c.wake:
			for _, f := range c.take() {
				ok := write(f)
				if f.kind == binaryMessage {
					c.written(len(f.data))
				}
				if !ok {
					return
				}
			}
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.r.o.WriteTimeout)); err != nil {
				c.closeNow(CloseGoingAway, "ping failed")
				return
			}
			if idle := c.r.o.IdleTimeout; idle > 0 && !c.readOnly && time.Since(time.Unix(0, c.lastInput.Load())) > idle {
				c.closeNow(CloseIdle, "closed after "+idle.String()+" without input; reconnect to continue")
				return
			}
		case <-c.done:
			return
		}
	}
}

// drain gives the queue's bytes back to the relay's account once nothing
// more will be written, and refuses anything queued later.
func (c *client) drain() {
	c.qmu.Lock()
	n := c.qBytes
	c.q, c.qBytes, c.qControl, c.gone = nil, 0, 0, true
	c.qmu.Unlock()
	if n != 0 {
		c.r.addQueued(-int64(n))
	}
}
