package docker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// LabNetwork is a session's network as labnet reports it.
type LabNetwork struct {
	ID     string
	Name   string
	Subnet string
}

// LabnetUp creates the session's internal lab network on this engine, or
// returns the one already there: the same isolated bridge the one-host
// runtime gives its labs (see labBridgeOptions), with a subnet from the
// runtime's pool. It is what a Nomad lab's prestart task runs on the client
// the lab was placed on, before the nodes join the network by name.
//
// The network carries the session's labels but not LabelManaged, which
// marks what the one-host runtime owns and reaps: a Nomad lab on an engine
// shared with a one-host examlab is not that runtime's to remove.
func (r *Runtime) LabnetUp(ctx context.Context, sessionID, examID string) (LabNetwork, error) {
	if !lab.ValidSessionID(sessionID) {
		return LabNetwork{}, fmt.Errorf("labnet up: invalid session id %q", sessionID)
	}
	labels := map[string]string{
		lab.LabelSession:      sessionID,
		jobspecs.LabelRuntime: "nomad",
	}
	if examID != "" {
		labels[lab.LabelExam] = examID
	}
	n, err := r.ensureNetwork(ctx, sessionID, labels)
	if err != nil {
		return LabNetwork{}, fmt.Errorf("labnet up %s: %w", sessionID, err)
	}
	out := LabNetwork{ID: n.ID, Name: n.Name}
	if len(n.IPAM.Config) > 0 {
		out.Subnet = n.IPAM.Config[0].Subnet
	}
	return out, nil
}

// labnetPoll is how often LabnetDown looks again while containers are
// still leaving the network.
const labnetPoll = 250 * time.Millisecond

// LabnetDown removes the session's lab network. The nodes' containers may
// still be on their way out when a Nomad lab's poststop task runs, so it
// waits up to wait for the network's endpoints to go before removing it.
// A network that is already gone is not an error; one that belongs to
// another session is never touched.
func (r *Runtime) LabnetDown(ctx context.Context, sessionID string, wait time.Duration) error {
	if !lab.ValidSessionID(sessionID) {
		return fmt.Errorf("labnet down: invalid session id %q", sessionID)
	}
	deadline := time.Now().Add(wait)
	nets, err := r.client.networksNamed(ctx, lab.NetworkName(sessionID))
	if err != nil {
		return fmt.Errorf("labnet down %s: %w", sessionID, err)
	}
	var errs []error
	for _, n := range nets {
		if n.Labels[lab.LabelSession] != sessionID {
			errs = append(errs, fmt.Errorf("labnet down %s: network %s belongs to session %q", sessionID, n.Name, n.Labels[lab.LabelSession]))
			continue
		}
		if err := r.removeWhenEmpty(ctx, n.ID, deadline); err != nil {
			errs = append(errs, fmt.Errorf("labnet down %s: %w", sessionID, err))
		}
	}
	return errors.Join(errs...)
}

// removeWhenEmpty removes a network once no container is attached to it,
// or at the deadline whatever the engine then says.
func (r *Runtime) removeWhenEmpty(ctx context.Context, id string, deadline time.Time) error {
	for {
		var n network
		err := r.client.do(ctx, http.MethodGet, "/networks/"+id, nil, nil, &n)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("inspect network %s: %w", id, err)
		}
		late := time.Now().After(deadline)
		if len(n.Containers) == 0 || late {
			err := r.client.removeNetwork(ctx, id)
			// The engine may list no containers a moment before it lets
			// go of their endpoints.
			if err == nil || late || !strings.Contains(err.Error(), "active endpoints") {
				return err
			}
		}
		if err := sleep(ctx, labnetPoll); err != nil {
			return fmt.Errorf("wait for network %s to empty: %w", id, err)
		}
	}
}

// ExecStreams runs cmd without a TTY in a session's node and copies its
// stdout and stderr to separate writers, as Nomad's alloc exec delivers
// them (Exec merges the two, which is what a terminal wants). It returns
// the command's exit code once it has ended. stdin may be nil.
func (r *Runtime) ExecStreams(ctx context.Context, sessionID, node string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(cmd) == 0 {
		return -1, fmt.Errorf("exec in %s: empty command", node)
	}
	c, err := r.node(ctx, sessionID, node)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", node, err)
	}
	return r.execIn(ctx, c, node, cmd, stdin, stdout, stderr)
}

// execIn runs cmd without a TTY in container c (named what for errors) and
// copies its stdout and stderr to separate writers.
func (r *Runtime) execIn(ctx context.Context, c container, what string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	node := what
	if !c.State.Running || c.State.Restarting {
		return -1, fmt.Errorf("exec in %s: %w (%s)", node, lab.ErrNotRunning, c.State.Status)
	}
	var created struct {
		ID string `json:"Id"`
	}
	body := execCreate{AttachStdin: stdin != nil, AttachStdout: true, AttachStderr: true, Cmd: cmd}
	if err := r.client.do(ctx, http.MethodPost, "/containers/"+c.ID+"/exec", nil, body, &created); err != nil {
		return -1, fmt.Errorf("exec in %s: %w", node, err)
	}
	conn, br, err := r.client.hijack(ctx, "/exec/"+created.ID+"/start", execStart{})
	if err != nil {
		return -1, fmt.Errorf("exec in %s: start: %w", node, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if stdin != nil {
		go func() {
			_, _ = io.Copy(conn, stdin)
			if cw, ok := conn.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
		}()
	}
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return -1, fmt.Errorf("exec in %s: read output: %w", node, err)
		}
		size := int64(binary.BigEndian.Uint32(hdr[4:]))
		dst := io.Discard
		switch hdr[0] {
		case streamStdout:
			dst = stdout
		case streamStderr:
			dst = stderr
		}
		if _, err := io.CopyN(dst, br, size); err != nil {
			return -1, fmt.Errorf("exec in %s: copy output: %w", node, err)
		}
	}
	// Wait's poll needs only the engine and the exec id.
	return (&execProcess{client: r.client, id: created.ID}).Wait(ctx)
}
