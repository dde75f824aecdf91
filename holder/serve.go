package holder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults of zero Options fields.
const (
	DefaultRingBytes = 256 << 10
	DefaultGrace     = 2 * time.Minute
	// MaxRingBytes bounds the scrollback whatever the command line says.
	MaxRingBytes = 4 << 20
)

// Named timeouts of the holder.
const (
	helloTimeout  = 10 * time.Second       // for an attach's hello
	writeTimeout  = 2 * time.Second        // for the notices to a replaced attach
	takeoverWait  = 2 * time.Second        // for a blocked write to the old attach
	drainTimeout  = 500 * time.Millisecond // for the last output once the shell exited
	hangupTimeout = 3 * time.Second        // for the shell to go after a hangup
)

// TagVar marks every process of one terminal in the node's environment.
const TagVar = "EXAMLAB_TERMINAL"

// Options configure Serve.
type Options struct {
	// Listener accepts attaches; Serve closes it when it returns.
	Listener net.Listener
	// Shell is the command run on the pty. Required.
	Shell []string
	// Env is the shell's environment; nil means this process's.
	Env []string
	// Size is the pty's size until the first attach says otherwise.
	Rows, Cols uint16
	// RingBytes bounds the scrollback; default DefaultRingBytes.
	RingBytes int
	// Grace is how long the shell waits without an attach before it is
	// hung up; default DefaultGrace.
	Grace time.Duration
	// Started, when set, is called once the shell runs and attaches are
	// served.
	Started func()
}

// server is one held shell and its current attach.
type server struct {
	o      Options
	tag    string
	master *os.File
	cmd    *exec.Cmd

	mu     sync.Mutex
	ring   *Ring
	end    int64 // output offset: bytes the shell ever wrote
	cur    *attach
	fresh  bool // no attach has been served yet
	grace  *time.Timer
	closed bool

	// live mirrors cur for the input path, which must never wait on the
	// output lock: Ctrl-C reaches the shell while output is blocked.
	live atomic.Pointer[attach]
	inMu sync.Mutex // orders input from a replaced attach and its successor
	gone chan struct{}
}

// attach is one connected relay.
type attach struct {
	conn net.Conn
	wmu  sync.Mutex
}

func (a *attach) write(kind byte, p []byte) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return WriteFrame(a.conn, kind, p)
}

// Serve runs the shell on a new pty and serves attaches until the shell
// ends, it is hung up after Grace without an attach, or ctx ends (which
// hangs the shell up too). It returns the shell's exit code.
func Serve(ctx context.Context, o Options) (int, error) {
	if len(o.Shell) == 0 || o.Listener == nil {
		return -1, errors.New("serve terminal: shell and listener are required")
	}
	defer o.Listener.Close()
	if o.RingBytes <= 0 {
		o.RingBytes = DefaultRingBytes
	}
	o.RingBytes = min(o.RingBytes, MaxRingBytes)
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	if o.Rows == 0 || o.Cols == 0 {
		o.Rows, o.Cols = 24, 80
	}
	env := o.Env
	if env == nil {
		env = os.Environ()
	}
	master, slave, err := openPTY()
	if err != nil {
		return -1, err
	}
	defer master.Close()
	_ = setSize(master, o.Rows, o.Cols)
	unignoreHangup()
	cmd := exec.Command(o.Shell[0], o.Shell[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		slave.Close()
		return -1, fmt.Errorf("start shell %s: %w", o.Shell[0], err)
	}
	slave.Close()
	s := &server{o: o, master: master, cmd: cmd, ring: NewRing(o.RingBytes), fresh: true, gone: make(chan struct{})}
	for _, kv := range env {
		if len(kv) > len(TagVar)+1 && kv[:len(TagVar)+1] == TagVar+"=" {
			s.tag = kv[len(TagVar)+1:]
		}
	}
	s.grace = time.AfterFunc(o.Grace, s.hangup)

	pumped := make(chan struct{})
	go func() { defer close(pumped); s.pump() }()
	go s.accept()
	stop := context.AfterFunc(ctx, s.hangup)
	defer stop()
	if o.Started != nil {
		o.Started()
	}

	werr := cmd.Wait()
	code := 0
	if werr != nil {
		var ee *exec.ExitError
		if !errors.As(werr, &ee) {
			return -1, fmt.Errorf("wait for shell: %w", werr)
		}
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	// Output the shell wrote just before it went is still in the pty;
	// jobs it left behind may hold the pty open, so the wait is bounded.
	select {
	case <-pumped:
	case <-time.After(drainTimeout):
	}
	s.mu.Lock()
	s.closed = true
	s.grace.Stop()
	cur := s.cur
	s.cur = nil
	s.live.Store(nil)
	s.mu.Unlock()
	o.Listener.Close()
	if cur != nil {
		b, _ := json.Marshal(Exit{Code: code})
		_ = cur.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		_ = cur.write(KindExit, b)
		cur.conn.Close()
	}
	close(s.gone)
	return code, nil
}

// hupSink takes the hangups the holder itself would otherwise ignore.
var hupSink = make(chan os.Signal, 1)

// unignoreHangup makes sure the shell starts able to be hung up. A
// process started with SIGHUP ignored (under nohup, say) hands that on
// to every child it execs, and its shell would then outlive a hangup
// until it is killed. A signal the holder catches is reset to its default
// in the shell; the holder, in a session of its own, drops it.
func unignoreHangup() {
	if signal.Ignored(syscall.SIGHUP) {
		signal.Notify(hupSink, syscall.SIGHUP)
	}
}

// hangup ends the shell as a dropped line would: SIGHUP to its process
// group, then SIGKILL for a shell that ignores it.
func (s *server) hangup() {
	pid := s.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGHUP)
	_ = syscall.Kill(pid, syscall.SIGHUP)
	select {
	case <-s.gone:
	case <-time.After(hangupTimeout):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// pump reads the shell's output into the scrollback and on to the
// current attach. A write to the attach blocks while the relay does not
// read, which is what slows a flooding shell down; without an attach the
// scrollback keeps only the most recent output.
func (s *server) pump() {
	buf := make([]byte, 32<<10)
	for {
		n, err := s.master.Read(buf)
		if n > 0 {
			s.mu.Lock()
			s.ring.Write(buf[:n])
			s.end += int64(n)
			if c := s.cur; c != nil {
				if werr := c.write(KindOutput, buf[:n]); werr != nil {
					// The relay is gone; the shell waits for the next.
					s.dropLocked(c)
				}
			}
			s.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// dropLocked forgets attach c and starts the grace period.
func (s *server) dropLocked(c *attach) {
	if s.cur != c {
		return
	}
	c.conn.Close()
	s.cur = nil
	s.live.Store(nil)
	if !s.closed {
		s.grace.Reset(s.o.Grace)
	}
}

func (s *server) accept() {
	for {
		conn, err := s.o.Listener.Accept()
		if err != nil {
			return
		}
		go s.serveConn(conn)
	}
}

// serveConn reads an attach's hello, takes the terminal over from the
// current attach, sends the scrollback and then passes input on.
func (s *server) serveConn(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(helloTimeout))
	kind, p, err := readFrame(conn, string([]byte{KindHello}))
	var h Hello
	if err != nil || kind != KindHello || json.Unmarshal(p, &h) != nil {
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	a := &attach{conn: conn}
	if !s.takeOver(a, h) {
		conn.Close()
		return
	}
	for {
		kind, n, err := readHeader(conn, string([]byte{KindInput, KindResize}))
		if err != nil {
			break
		}
		if !s.input(a, kind, n) {
			break
		}
	}
	s.mu.Lock()
	s.dropLocked(a)
	s.mu.Unlock()
}

// takeOver makes a the current attach: the old one is told and closed,
// then a gets the scrollback, all under the output lock so that a sees
// each byte once. It reports false when the shell has ended.
func (s *server) takeOver(a *attach, h Hello) bool {
	// An old attach whose relay stopped reading holds the output lock in
	// a blocked write; a deadline in the past frees it.
	if !tryLockFor(&s.mu, takeoverWait) {
		s.mu.Lock()
		old := s.cur
		s.mu.Unlock()
		if old != nil {
			_ = old.conn.SetWriteDeadline(time.Now())
		}
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if old := s.cur; old != nil {
		_ = old.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		_ = old.write(KindReplaced, nil)
		old.conn.Close()
	}
	s.grace.Stop()
	s.cur = a
	s.live.Store(a)
	if h.Rows > 0 && h.Cols > 0 {
		_ = setSize(s.master, h.Rows, h.Cols)
	}
	back := s.ring.Bytes()
	msg, _ := json.Marshal(Attached{Tag: s.tag, Fresh: s.fresh, Start: s.end - int64(len(back)), End: s.end})
	s.fresh = false
	if err := a.write(KindAttached, msg); err != nil {
		s.dropLocked(a)
		return false
	}
	for len(back) > 0 {
		n := min(len(back), MaxFrame)
		if err := a.write(KindOutput, back[:n]); err != nil {
			s.dropLocked(a)
			return false
		}
		back = back[n:]
	}
	return true
}

// input handles one frame of attach a whose header has been read: typed
// bytes go to the shell, a resize to the pty. Frames of a replaced attach
// are dropped. It reports false when the attach should end.
func (s *server) input(a *attach, kind byte, n int) bool {
	p := make([]byte, n)
	if _, err := io.ReadFull(a.conn, p); err != nil {
		// A frame cut short (the relay went mid-paste) is dropped whole.
		return false
	}
	s.inMu.Lock()
	defer s.inMu.Unlock()
	if s.live.Load() != a {
		return false
	}
	switch kind {
	case KindInput:
		if _, err := s.master.Write(p); err != nil {
			return false
		}
	case KindResize:
		if len(p) != 4 {
			return false
		}
		rows, cols := uint16(p[0])<<8|uint16(p[1]), uint16(p[2])<<8|uint16(p[3])
		if rows > 0 && cols > 0 {
			_ = setSize(s.master, rows, cols)
		}
	}
	return true
}

// tryLockFor locks mu unless that takes longer than d.
func tryLockFor(mu *sync.Mutex, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if mu.TryLock() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
