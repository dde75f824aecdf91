package holder

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrNoHolder is an exec that did not answer as a holder: the node has
// no holder binary (a lab without the platform's tools) or it failed.
var ErrNoHolder = errors.New("no terminal holder answered")

// Conn is the relay's side of an attach, over the exec's output (r) and
// input (w).
type Conn struct {
	r   *bufio.Reader
	w   io.Writer
	wmu sync.Mutex

	remain int // output bytes left in the current frame

	mu       sync.Mutex
	exit     *Exit
	replaced bool
}

// NewConn wraps an exec's output and input.
func NewConn(r io.Reader, w io.Writer) *Conn {
	return &Conn{r: bufio.NewReaderSize(r, 64<<10), w: w}
}

// Hello sends the relay's first frame.
func (c *Conn) Hello(h Hello) error {
	b, _ := json.Marshal(h)
	return c.write(KindHello, b)
}

// Attached reads the holder's answer to the hello. Anything else first
// (an error message of the node's exec) is ErrNoHolder, with what was
// read for the log.
func (c *Conn) Attached() (Attached, error) {
	var a Attached
	first, err := c.r.Peek(1)
	if err != nil {
		return a, fmt.Errorf("%w: %v", ErrNoHolder, err)
	}
	if first[0] != KindAttached {
		said, _ := c.r.Peek(min(c.r.Buffered(), 200))
		return a, fmt.Errorf("%w: the node said %q", ErrNoHolder, said)
	}
	_, p, err := readFrame(c.r, string([]byte{KindAttached}))
	if err != nil {
		return a, fmt.Errorf("read attach answer: %w", err)
	}
	if len(p) > maxHello || json.Unmarshal(p, &a) != nil || a.Start < 0 || a.End < a.Start || a.End-a.Start > MaxRingBytes {
		return a, fmt.Errorf("read attach answer %q: %w", p, ErrProtocol)
	}
	return a, nil
}

// Read returns the shell's output. It ends with io.EOF when the shell
// ended (Exit tells the code), the terminal was taken over (Replaced), or
// the exec ended without a word from the holder.
func (c *Conn) Read(p []byte) (int, error) {
	for c.remain == 0 {
		kind, n, err := readHeader(c.r, string([]byte{KindOutput, KindExit, KindReplaced}))
		if err != nil {
			return 0, err
		}
		switch kind {
		case KindOutput:
			c.remain = n
		case KindExit:
			b := make([]byte, n)
			if _, err := io.ReadFull(c.r, b); err != nil {
				return 0, noEOF(err)
			}
			var e Exit
			if json.Unmarshal(b, &e) != nil {
				return 0, fmt.Errorf("read exit %q: %w", b, ErrProtocol)
			}
			c.mu.Lock()
			c.exit = &e
			c.mu.Unlock()
			return 0, io.EOF
		case KindReplaced:
			if _, err := c.r.Discard(n); err != nil {
				return 0, noEOF(err)
			}
			c.mu.Lock()
			c.replaced = true
			c.mu.Unlock()
			return 0, io.EOF
		}
	}
	if len(p) > c.remain {
		p = p[:c.remain]
	}
	n, err := c.r.Read(p)
	c.remain -= n
	if err == io.EOF && c.remain > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Input sends typed bytes, in frames of at most MaxFrame.
func (c *Conn) Input(p []byte) error {
	for len(p) > 0 {
		n := min(len(p), MaxFrame)
		if err := c.write(KindInput, p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// Resize sends a terminal size.
func (c *Conn) Resize(rows, cols uint16) error {
	return c.write(KindResize, resizePayload(rows, cols))
}

// Ended reports how the holder ended the attach: the shell's exit, or a
// takeover by another attach; neither when the exec just ended.
func (c *Conn) Ended() (exit *Exit, replaced bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exit, c.replaced
}

func (c *Conn) write(kind byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return WriteFrame(c.w, kind, p)
}
