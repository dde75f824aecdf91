package docker

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/examlab/examlab/lab"
)

var _ lab.Process = (*execProcess)(nil)

type execCreate struct {
	AttachStdin  bool     `json:"AttachStdin"`
	AttachStdout bool     `json:"AttachStdout"`
	AttachStderr bool     `json:"AttachStderr"`
	Tty          bool     `json:"Tty"`
	Env          []string `json:"Env,omitempty"`
	Cmd          []string `json:"Cmd"`
}

type execStart struct {
	Detach bool `json:"Detach"`
	Tty    bool `json:"Tty"`
}

// Exec starts req.Cmd in the node and returns the process with its stdin and
// output attached over one hijacked connection. The connection lives until
// Close is called or ctx is done.
//
// The start is noted in the runtime's gate (lab.ExecGate) from before the
// exec is created until the engine reports the process running or ended,
// so that a capture never pauses the node while the process starts; see
// settleStart.
//
// API 1.41 has no ConsoleSize on exec create (it came in 1.42), so the
// initial terminal size is applied with a resize right after start.
func (r *Runtime) Exec(ctx context.Context, sessionID, node string, req lab.ExecRequest) (lab.Process, error) {
	if len(req.Cmd) == 0 {
		return nil, fmt.Errorf("exec in %s: empty command", node)
	}
	note, err := r.beginStart(ctx, sessionID)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", node, err)
	}
	defer note.done(ctx)
	c, err := r.node(ctx, sessionID, node)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", node, err)
	}
	if !c.State.Running || c.State.Restarting {
		return nil, fmt.Errorf("exec in %s: %w (%s)", node, lab.ErrNotRunning, c.State.Status)
	}
	var created struct {
		ID string `json:"Id"`
	}
	body := execCreate{AttachStdin: true, AttachStdout: true, AttachStderr: true, Tty: req.TTY, Env: req.Env, Cmd: req.Cmd}
	if err := r.client.do(ctx, http.MethodPost, "/containers/"+c.ID+"/exec", nil, body, &created); err != nil {
		if statusOf(err) == http.StatusConflict {
			// The engine answers 409 when the container stopped meanwhile.
			return nil, fmt.Errorf("exec in %s: %w: %v", node, lab.ErrNotRunning, err)
		}
		return nil, fmt.Errorf("exec in %s: %w", node, err)
	}
	note.created(created.ID)
	conn, br, err := r.client.hijack(ctx, "/exec/"+created.ID+"/start", execStart{Tty: req.TTY})
	if err != nil {
		note.startFailed(err)
		return nil, fmt.Errorf("exec in %s: start: %w", node, err)
	}
	p := &execProcess{client: r.client, id: created.ID, tty: req.TTY, conn: conn}
	if req.TTY {
		p.out = br
	} else {
		p.out = newDemuxReader(br)
	}
	p.stop = context.AfterFunc(ctx, func() { conn.Close() })
	if req.TTY && req.Size.Rows > 0 && req.Size.Cols > 0 {
		if err := p.Resize(ctx, req.Size); err != nil {
			p.Close()
			return nil, fmt.Errorf("exec in %s: %w", node, err)
		}
	}
	return p, nil
}

// startNote is the gate's note of one exec start (lab.ExecGate), from
// before the exec is created until the engine says how the start went.
type startNote struct {
	r      *Runtime
	end    func(settled bool) // nil: an exec the gate does not see
	execID string             // "" until created, and once known never started
}

// beginStart notes an exec start into lab labID; "" notes nothing (a
// lab's switch, which no capture pauses).
func (r *Runtime) beginStart(ctx context.Context, labID string) (*startNote, error) {
	n := &startNote{r: r}
	if labID == "" {
		return n, nil
	}
	end, err := r.gate.BeginExec(ctx, labID)
	if err != nil {
		return nil, err
	}
	n.end = end
	return n, nil
}

// created records the exec's id: from now on a start may be under way.
func (n *startNote) created(id string) { n.execID = id }

// startFailed records why the start request failed: an engine that
// answered with an error, or could not be reached, started nothing.
func (n *startNote) startFailed(err error) {
	if statusOf(err) != 0 || errors.Is(err, lab.ErrUnavailable) {
		n.execID = ""
	}
}

// done ends the note once the start is over: at once when nothing was
// started, else when the engine says so (settleStart).
func (n *startNote) done(ctx context.Context) {
	switch {
	case n.end == nil:
	case n.execID == "":
		n.end(true)
	default:
		go n.r.settleStart(context.WithoutCancel(ctx), n.execID, n.end)
	}
}

// settleStart ends the gate's note of exec id's start once the engine
// reports the process running with a pid, or ended, or the exec gone.
// The engine answers the start request before it starts the process, so
// the answer alone says nothing; a start whose outcome stays unknown
// (the engine does not answer) leaves its note to lapse.
func (r *Runtime) settleStart(ctx context.Context, id string, end func(settled bool)) {
	ctx, cancel := context.WithTimeout(ctx, lab.ExecStartTTL)
	defer cancel()
	delay := 5 * time.Millisecond
	for {
		var st struct {
			Running  bool `json:"Running"`
			ExitCode *int `json:"ExitCode"`
			Pid      int  `json:"Pid"`
		}
		err := r.client.do(ctx, http.MethodGet, "/exec/"+id+"/json", nil, nil, &st)
		switch {
		case isNotFound(err):
			end(true) // the container went, and the exec with it
			return
		case err == nil && (st.ExitCode != nil || (st.Running && st.Pid > 0)):
			end(true)
			return
		}
		if sleep(ctx, delay) != nil {
			end(false)
			return
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// execProcess is a command running in a container, attached through a
// hijacked engine connection.
type execProcess struct {
	client *client
	id     string
	tty    bool
	conn   net.Conn
	out    io.Reader
	stop   func() bool

	closeOnce sync.Once
	closeErr  error
}

// Read returns the process's output: the raw terminal stream with a TTY,
// stdout and stderr merged without one.
func (p *execProcess) Read(b []byte) (int, error) { return p.out.Read(b) }

// Write feeds the process's stdin.
func (p *execProcess) Write(b []byte) (int, error) { return p.conn.Write(b) }

// CloseWrite half-closes the connection, which the engine passes on to the
// process as end of input.
func (p *execProcess) CloseWrite() error {
	if cw, ok := p.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("close exec input: connection cannot half-close")
}

// Resize sets the process's terminal size; without a TTY it does nothing.
func (p *execProcess) Resize(ctx context.Context, sz lab.Size) error {
	if !p.tty {
		return nil
	}
	q := url.Values{"h": {strconv.Itoa(int(sz.Rows))}, "w": {strconv.Itoa(int(sz.Cols))}}
	if err := p.client.do(ctx, http.MethodPost, "/exec/"+p.id+"/resize", q, nil, nil); err != nil {
		return fmt.Errorf("resize exec terminal: %w", err)
	}
	return nil
}

// Wait polls the engine until the process has ended and returns its exit
// code. The engine may report the process running for a moment after its
// output stream closed, hence the poll.
func (p *execProcess) Wait(ctx context.Context) (int, error) {
	delay := 10 * time.Millisecond
	for {
		var st struct {
			Running  bool `json:"Running"`
			ExitCode *int `json:"ExitCode"`
		}
		if err := p.client.do(ctx, http.MethodGet, "/exec/"+p.id+"/json", nil, nil, &st); err != nil {
			if isNotFound(err) {
				// The container went away and took the exec with it.
				return -1, fmt.Errorf("wait for exec: %w", lab.ErrNotFound)
			}
			return -1, fmt.Errorf("wait for exec: %w", err)
		}
		if !st.Running && st.ExitCode != nil {
			return *st.ExitCode, nil
		}
		if err := sleep(ctx, delay); err != nil {
			return -1, fmt.Errorf("wait for exec: %w", err)
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// Close drops the connection. A process that ignores the hangup keeps
// running in the container.
func (p *execProcess) Close() error {
	p.closeOnce.Do(func() {
		p.stop()
		p.closeErr = p.conn.Close()
	})
	return p.closeErr
}

// Stream kinds of the engine's multiplexed stream.
const (
	streamStdin  = 0
	streamStdout = 1
	streamStderr = 2
	streamSystem = 3
)

// demuxReader turns the engine's multiplexed stream (an 8-byte header
// naming the stream and a big-endian payload length, then the payload) into
// stdout and stderr merged in arrival order.
type demuxReader struct {
	r      *bufio.Reader
	remain uint32 // payload bytes left in the current frame
	hdr    [8]byte
}

// Demux reads the engine's multiplexed stream of a container without a
// TTY (its logs, an exec's output) as stdout and stderr merged in arrival
// order; a frame of the engine's own error ends it with that error.
func Demux(r io.Reader) io.Reader { return newDemuxReader(r) }

func newDemuxReader(r io.Reader) *demuxReader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	return &demuxReader{r: br}
}

func (d *demuxReader) Read(b []byte) (int, error) {
	for d.remain == 0 {
		if _, err := io.ReadFull(d.r, d.hdr[:]); err != nil {
			if err == io.ErrUnexpectedEOF {
				return 0, fmt.Errorf("read output: truncated frame header")
			}
			return 0, err
		}
		size := binary.BigEndian.Uint32(d.hdr[4:])
		switch d.hdr[0] {
		case streamStdin, streamStdout, streamStderr:
			d.remain = size
		case streamSystem:
			msg := make([]byte, min(size, 64<<10))
			_, _ = io.ReadFull(d.r, msg)
			return 0, fmt.Errorf("engine stream error: %s", msg)
		default:
			return 0, fmt.Errorf("read output: unknown stream %d", d.hdr[0])
		}
	}
	if uint32(len(b)) > d.remain {
		b = b[:d.remain]
	}
	n, err := d.r.Read(b)
	d.remain -= uint32(n)
	if err == io.EOF && d.remain > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
