package labtest

import (
	"bufio"
	"context"
	"io"
	"sync"

	"github.com/examlab/examlab/lab"
)

var _ lab.Process = (*memProcess)(nil)

// memProcess is a built-in command running in a Memory node. Its input and
// output are unbounded buffers, as a kernel's socket buffers would be big
// enough for a test: writing input the command never reads, or not reading
// its output, never blocks.
type memProcess struct {
	stdin  *pipe
	out    *pipe
	tty    bool
	cancel context.CancelFunc
	done   chan struct{}
	code   int

	mu   sync.Mutex
	size lab.Size
}

func (m *Memory) startProcess(n *memNode, req lab.ExecRequest) *memProcess {
	ctx, cancel := context.WithCancel(context.Background())
	p := &memProcess{stdin: newPipe(), out: newPipe(), tty: req.TTY, cancel: cancel, done: make(chan struct{}), size: req.Size}
	sh := &shell{m: m, node: n, env: envMap(req.Env), cwd: "/root", size: p.termSize}
	var in io.Reader = p.stdin
	var out io.Writer = p.out
	if req.TTY {
		// The terminal's line discipline: input is echoed, and line ends
		// go out as CR LF.
		out = &crlfWriter{w: p.out}
		cooked := newPipe()
		go func() {
			defer cooked.Close()
			buf := make([]byte, 512)
			for {
				n, err := p.stdin.Read(buf)
				for _, c := range buf[:n] {
					if c == 0x04 { // ^D: end of input
						return
					}
					out.Write([]byte{c})
					cooked.Write([]byte{c})
				}
				if err != nil {
					return
				}
			}
		}()
		in = cooked
		sh.tty = true
	}
	sh.stdin = bufio.NewReader(in)
	sh.stdout, sh.stderr = out, out
	go func() {
		p.code = sh.main(ctx, req.Cmd)
		p.out.Close()
		p.stdin.Break()
		close(p.done)
	}()
	return p
}

func (p *memProcess) termSize() (lab.Size, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size, p.tty
}

func (p *memProcess) Read(b []byte) (int, error)  { return p.out.Read(b) }
func (p *memProcess) Write(b []byte) (int, error) { return p.stdin.Write(b) }
func (p *memProcess) CloseWrite() error           { p.stdin.Close(); return nil }

func (p *memProcess) Resize(ctx context.Context, sz lab.Size) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		p.size = sz
	}
	return nil
}

func (p *memProcess) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
		return p.code, nil
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

// Close hangs up: the command is cancelled and its input ends.
func (p *memProcess) Close() error {
	p.cancel()
	p.stdin.Close()
	return nil
}

// pipe is an unbounded in-memory pipe: writes never block; reads block
// until there is data or the writing side has closed.
type pipe struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool // no more writes: reads drain what is left, then EOF
	broken bool // the reading side is gone: writes fail
}

func newPipe() *pipe {
	p := &pipe{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *pipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.broken {
		return 0, io.ErrClosedPipe
	}
	p.buf = append(p.buf, b...)
	p.cond.Broadcast()
	return len(b), nil
}

func (p *pipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && !p.closed {
		p.cond.Wait()
	}
	if len(p.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	return n, nil
}

// Close ends the writes.
func (p *pipe) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.cond.Broadcast()
}

// Break ends the reads: nobody will read what is written from now on.
func (p *pipe) Break() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.broken, p.closed = true, true
	p.buf = nil
	p.cond.Broadcast()
}

// crlfWriter turns line feeds into CR LF, as a terminal's output does.
type crlfWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (c *crlfWriter) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]byte, 0, len(b)+8)
	for _, x := range b {
		if x == '\n' {
			out = append(out, '\r')
		}
		out = append(out, x)
	}
	if _, err := c.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
