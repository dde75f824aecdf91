package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/examlab/examlab/holder"
	"github.com/examlab/examlab/lab"
)

// Held shells. In a node with the platform's tools the relay does not run
// the shell itself: it execs the holder's attach (DefaultHolder), which
// starts the node's holder when there is none, and speaks the holder's
// protocol through that exec. The shell, its pty and a scrollback of
// ReplayBytes live in the node, so a relay that restarts, or another
// relay, attaches to the same shell: the candidate gets the scrollback,
// and the recording goes on in the same file from where the last relay
// marked it stopped (see continueRecording). One relay holds a shell at a
// time; a new attach takes it over and the old relay's connection closes
// with CloseReplaced.

var (
	errReplaced   = errors.New("another relay attached to the terminal")
	errHolderLost = errors.New("the exec to the terminal's holder ended")
)

// validHoldTag is what a holder may report as its terminal's tag: the
// relay's own newTag form, so a fake holder cannot feed the hangup or the
// store anything else.
var validHoldTag = regexp.MustCompile(`^[0-9a-f]{8,64}$`)

// heldProc is a held shell seen through an attach exec: it reads output
// frames, writes input frames and passes resizes in the stream.
type heldProc struct {
	exec lab.Process
	conn *holder.Conn
	read atomic.Int64 // output bytes read after the scrollback
}

var _ lab.Process = (*heldProc)(nil)

func (p *heldProc) Read(b []byte) (int, error) {
	n, err := p.conn.Read(b)
	p.read.Add(int64(n))
	return n, err
}

func (p *heldProc) Write(b []byte) (int, error) {
	if err := p.conn.Input(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (p *heldProc) CloseWrite() error { return p.exec.CloseWrite() }

func (p *heldProc) Resize(_ context.Context, sz lab.Size) error {
	return p.conn.Resize(sz.Rows, sz.Cols)
}

// Wait reports how the holder ended the attach: the shell's exit code, or
// errReplaced, or errHolderLost when the exec ended without a word.
func (p *heldProc) Wait(context.Context) (int, error) {
	exit, replaced := p.conn.Ended()
	switch {
	case exit != nil:
		return exit.Code, nil
	case replaced:
		return -1, errReplaced
	}
	return -1, errHolderLost
}

func (p *heldProc) Close() error { return p.exec.Close() }

// holdCommand is the exec that attaches to node's held shell.
func (r *Relay) holdCommand(node string) []string {
	cmd := []string{r.o.Holder, "hold", "attach", "-name", node,
		"-ring", strconv.Itoa(r.o.ReplayBytes), "-grace", r.o.Grace.String(), "--"}
	return append(cmd, r.o.Shell...)
}

// startHeld attaches to the node's held shell, starting it when there is
// none, and opens or continues its recording. holder.ErrNoHolder means the
// node has no holder; the caller runs the shell itself then.
func (s *shell) startHeld(dir string, size lab.Size) error {
	slow := time.AfterFunc(startTimeout, s.cancel)
	defer slow.Stop()
	exec, err := s.r.o.Runner.Exec(s.ctx, s.labID(), s.key.node, lab.ExecRequest{
		Cmd: s.r.holdCommand(s.key.node),
		Env: []string{"TERM=xterm-256color", tagVar + "=" + s.tag},
	})
	switch {
	case errors.Is(err, lab.ErrNotFound), errors.Is(err, lab.ErrNotRunning), s.ctx.Err() != nil:
		return fmt.Errorf("start shell in %s: %w", s.key.node, err)
	case err != nil:
		// A runtime may refuse a missing binary outright rather than in
		// the exec's output; the shell of the relay's own exec is tried.
		return fmt.Errorf("start shell in %s: %w: %v", s.key.node, holder.ErrNoHolder, err)
	}
	conn := holder.NewConn(exec, exec)
	fail := func(err error) error {
		exec.Close()
		if s.ctx.Err() != nil && !errors.Is(err, holder.ErrNoHolder) {
			return fmt.Errorf("start shell in %s: no answer within %s", s.key.node, startTimeout)
		}
		return fmt.Errorf("start shell in %s: %w", s.key.node, err)
	}
	if err := conn.Hello(holder.Hello{Rows: size.Rows, Cols: size.Cols}); err != nil {
		return fail(err)
	}
	att, err := conn.Attached()
	if err != nil {
		return fail(err)
	}
	if att.Tag == "" || !validHoldTag.MatchString(att.Tag) {
		return fail(fmt.Errorf("%w: tag %q", holder.ErrProtocol, att.Tag))
	}
	scroll := make([]byte, att.End-att.Start)
	if _, err := io.ReadFull(conn, scroll); err != nil {
		return fail(fmt.Errorf("read scrollback: %w", err))
	}
	slow.Stop()

	rec, err := s.heldRecording(dir, size, att, scroll)
	if err != nil {
		exec.Close()
		return err
	}
	if att.Tag != s.tag {
		// The shell was started by an earlier relay under its tag.
		s.r.noteShellTag(s.key.session, s.tag, false)
		s.tag = att.Tag
		s.r.noteShell(s, true)
	}
	s.ring.Write(scroll)
	s.held = &heldProc{exec: exec, conn: conn}
	s.proc, s.rec, s.resumed = s.held, rec, !att.Fresh
	s.r.log.Info("terminal attached", "session", s.key.session, "node", s.key.node, "recording", rec.name,
		"resumed", s.resumed, "scrollback", len(scroll))
	go s.pump()
	return nil
}

// heldRecording opens the recording of a held shell: a new one for a
// fresh shell, else the shell's recording continued from where the last
// relay marked it stopped, recording only the part of the scrollback it
// has not. What cannot be told exactly is said in a marker.
func (s *shell) heldRecording(dir string, size lab.Size, att holder.Attached, scroll []byte) (*recorder, error) {
	now := time.Now()
	var rec *recorder
	var mark castMark
	if !att.Fresh {
		var err error
		if rec, mark, err = continueRecording(dir, s.key.node, att.Tag, s.r.o.MaxRecordingBytes); err != nil {
			s.r.log.Warn("continue terminal recording", "session", s.key.session, "node", s.key.node, "err", err)
		}
	}
	if rec == nil {
		var err error
		rec, err = createRecording(dir, s.key.node, size, s.started, s.key.session+" "+s.key.node, s.r.o.MaxRecordingBytes)
		if err != nil {
			return nil, err
		}
		rec.offset = att.Start
		if !att.Fresh && att.Start > 0 {
			rec.Marker(now, fmt.Sprintf("attached to a shell started earlier; its first %d bytes of output are not recorded", att.Start))
		}
		rec.Output(now, scroll)
	} else {
		from := mark.offset
		switch {
		case mark.kind == markAttached:
			rec.Marker(now, fmt.Sprintf("the last relay stopped without closing this recording; output after offset %d may repeat", mark.offset))
		case from < att.Start:
			rec.Marker(now, fmt.Sprintf("%d bytes of output written while no relay was attached are not recorded", att.Start-from))
		case from > att.End:
			rec.Marker(now, "the shell's output offsets went back; the scrollback is not recorded again")
			from = att.End
		}
		from = min(max(from, att.Start), att.End)
		rec.offset = from
		rec.Resize(now, size)
		rec.Output(now, scroll[from-att.Start:])
	}
	rec.Marker(now, holdMark(markAttached, att.Tag, att.End))
	return rec, nil
}
