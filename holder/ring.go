package holder

// Ring keeps the most recent output of a shell, up to its capacity, for
// replay when a connection reattaches: the holder's scrollback, and the
// relay's replay for a reconnect to the same relay. It is not safe for
// concurrent use; its owner's lock guards it.
type Ring struct {
	buf  []byte
	next int  // where the next byte goes
	full bool // buf has wrapped at least once
}

// NewRing returns an empty ring of size bytes.
func NewRing(size int) *Ring { return &Ring{buf: make([]byte, size)} }

// Write keeps p, dropping the oldest bytes beyond the capacity.
func (r *Ring) Write(p []byte) {
	if len(p) >= len(r.buf) {
		copy(r.buf, p[len(p)-len(r.buf):])
		r.next, r.full = 0, true
		return
	}
	n := copy(r.buf[r.next:], p)
	if n < len(p) {
		copy(r.buf, p[n:])
		r.full = true
	}
	r.next = (r.next + len(p)) % len(r.buf)
	if r.next == 0 && len(p) > 0 {
		r.full = true
	}
}

// Len is how many bytes a replay would return.
func (r *Ring) Len() int {
	if r.full {
		return len(r.buf)
	}
	return r.next
}

// Bytes returns a copy of the kept output, oldest first.
func (r *Ring) Bytes() []byte {
	if !r.full {
		return append([]byte(nil), r.buf[:r.next]...)
	}
	out := make([]byte, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...)
}
