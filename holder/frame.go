// Package holder keeps a terminal's shell alive inside a lab node, apart
// from the relay that shows it: a small process in the node owns the
// shell's pty and its recent output, and relays attach to it one at a
// time over the node's exec channel. A relay that restarts, or a second
// relay, attaches to the same shell and gets its scrollback.
//
// In the node the platform's own binary runs from the grader's tools
// volume as `examlab hold attach`: it connects to the holder's unix socket
// (starting the holder first when there is none) and pipes the exec's
// stdin and stdout to it unchanged. The relay speaks the frame protocol of
// this file with the holder through that pipe; Conn is its side.
//
// # Protocol
//
// Every message is a frame: one kind byte, a big-endian uint32 payload
// length, the payload (at most MaxFrame bytes).
//
//	relay → holder  'h' hello {"rows":R,"cols":C}   first frame, once
//	                'i' typed bytes
//	                'r' resize: rows, cols as big-endian uint16s
//	holder → relay  'H' attached {"tag":…,"fresh":…,"start":S,"end":E}
//	                'o' output bytes; the first E-S of them are the
//	                    scrollback, output offsets S up to E
//	                'x' the shell ended {"code":N}; the holder exits
//	                'k' another attach took the terminal over
//
// Output offsets count every byte the shell ever wrote, so a relay that
// recorded up to offset X knows which part of a later scrollback it has
// not recorded yet.
package holder

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame kinds.
const (
	KindHello    = 'h'
	KindInput    = 'i'
	KindResize   = 'r'
	KindAttached = 'H'
	KindOutput   = 'o'
	KindExit     = 'x'
	KindReplaced = 'k'
)

// MaxFrame bounds one frame's payload, both ways.
const MaxFrame = 64 << 10

// maxHello bounds the hello and attached messages.
const maxHello = 4 << 10

// ErrProtocol is a frame that is not one of the protocol's.
var ErrProtocol = errors.New("terminal holder protocol error")

// WriteFrame writes one frame in a single Write, so that frames of
// writers sharing w under a lock never interleave.
func WriteFrame(w io.Writer, kind byte, p []byte) error {
	if len(p) > MaxFrame {
		return fmt.Errorf("write frame: %d bytes is over %d: %w", len(p), MaxFrame, ErrProtocol)
	}
	b := make([]byte, 5+len(p))
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:5], uint32(len(p)))
	copy(b[5:], p)
	_, err := w.Write(b)
	return err
}

// readHeader reads a frame's kind and length, refusing unknown kinds and
// lengths over MaxFrame before any payload is read.
func readHeader(r io.Reader, kinds string) (byte, int, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:1]); err != nil {
		return 0, 0, err
	}
	if !containsByte(kinds, h[0]) {
		return 0, 0, fmt.Errorf("read frame: kind %q: %w", h[0], ErrProtocol)
	}
	if _, err := io.ReadFull(r, h[1:]); err != nil {
		return 0, 0, noEOF(err)
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > MaxFrame {
		return 0, 0, fmt.Errorf("read frame: %d bytes is over %d: %w", n, MaxFrame, ErrProtocol)
	}
	return h[0], int(n), nil
}

// readFrame reads a whole frame into a new buffer.
func readFrame(r io.Reader, kinds string) (byte, []byte, error) {
	k, n, err := readHeader(r, kinds)
	if err != nil {
		return 0, nil, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, noEOF(err)
	}
	return k, p, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func containsByte(s string, b byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return true
		}
	}
	return false
}

// resizePayload encodes a terminal size.
func resizePayload(rows, cols uint16) []byte {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:2], rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return b[:]
}

// Hello is the relay's first frame.
type Hello struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Attached is the holder's answer to a hello.
type Attached struct {
	// Tag is the terminal's mark in its processes' environment
	// (EXAMLAB_TERMINAL), the same for every attach to one shell.
	Tag string `json:"tag"`
	// Fresh says the shell was started for this attach.
	Fresh bool `json:"fresh"`
	// Start and End are the output offsets of the scrollback that follows.
	Start int64 `json:"start"`
	End   int64 `json:"end"`
}

// Exit tells how the shell ended.
type Exit struct {
	Code int `json:"code"`
}
