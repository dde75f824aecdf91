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

// NomadAllocLabel is the label Nomad's docker driver puts on every task
// container: the id of the allocation the task belongs to.
const NomadAllocLabel = "com.hashicorp.nomad.alloc_id"

// nodeContainersPoll is how often NodeContainers looks again while nodes
// are still starting.
const nodeContainersPoll = 250 * time.Millisecond

// NodeContainers finds the running containers of a Nomad lab's nodes on
// this engine (see RunningNodeContainers) and returns each named node's
// container id. It waits up to wait for every one of them to have one; a
// node's container may be starting, or restarting after a crash.
func (r *Runtime) NodeContainers(ctx context.Context, sessionID, allocID string, names []string, wait time.Duration) (map[string]string, error) {
	deadline := time.Now().Add(wait)
	for {
		running, err := r.RunningNodeContainers(ctx, sessionID, allocID)
		if err != nil {
			return nil, err
		}
		out := make(map[string]string, len(names))
		var missing []string
		for _, n := range names {
			if id, ok := running[n]; ok {
				out[n] = id
			} else {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 {
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("find node containers of %s: no running container for %s after %s", sessionID, strings.Join(missing, ", "), wait)
		}
		if err := sleep(ctx, nodeContainersPoll); err != nil {
			return nil, fmt.Errorf("find node containers of %s: waiting for %s: %w", sessionID, strings.Join(missing, ", "), err)
		}
	}
}

// RunningNodeContainers returns the id of each node of a Nomad lab that
// has a running container on this engine now. A Nomad lab's node
// containers carry the session's and the node's labels and
// examlab.runtime=nomad (see jobspecs), and the driver's allocation label:
// when allocID is set only that allocation's containers count. If a node
// has several running containers, the one started last is taken.
func (r *Runtime) RunningNodeContainers(ctx context.Context, sessionID, allocID string) (map[string]string, error) {
	if !lab.ValidSessionID(sessionID) {
		return nil, fmt.Errorf("find node containers: invalid session id %q", sessionID)
	}
	kv := []string{"label", lab.LabelSession + "=" + sessionID, "label", jobspecs.LabelRuntime + "=nomad", "status", "running"}
	if allocID != "" {
		kv = append(kv, "label", NomadAllocLabel+"="+allocID)
	}
	list, err := r.client.listContainers(ctx, filters(kv...))
	if err != nil {
		return nil, fmt.Errorf("find node containers of %s: %w", sessionID, err)
	}
	running := map[string][]string{}
	for _, c := range list {
		if node := c.Labels[lab.LabelNode]; c.State == "running" && node != "" {
			running[node] = append(running[node], c.ID)
		}
	}
	out := make(map[string]string, len(running))
	for node, ids := range running {
		if len(ids) == 1 {
			out[node] = ids[0]
			continue
		}
		id, err := r.newestStarted(ctx, ids)
		if err != nil {
			return nil, fmt.Errorf("find node containers of %s: node %s: %w", sessionID, node, err)
		}
		if id != "" { // else all gone since the list
			out[node] = id
		}
	}
	return out, nil
}

// newestStarted returns the one of the containers ids that started last,
// "" if they are all gone. The list's creation times are in seconds, too
// coarse to tell apart a container from its replacement.
func (r *Runtime) newestStarted(ctx context.Context, ids []string) (string, error) {
	var best string
	var bestAt time.Time
	for _, id := range ids {
		c, err := r.client.inspectContainer(ctx, id)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return "", err
		}
		at, _ := time.Parse(time.RFC3339Nano, c.State.StartedAt)
		if best == "" || at.After(bestAt) {
			best, bestAt = c.ID, at
		}
	}
	return best, nil
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
	return r.execIn(ctx, sessionID, c, node, cmd, stdin, stdout, stderr)
}

// execIn runs cmd without a TTY in container c (named what for errors) and
// copies its stdout and stderr to separate writers. The start is noted in
// the gate of lab labID, which a node's exec must name ("" for a switch,
// which no capture pauses).
func (r *Runtime) execIn(ctx context.Context, labID string, c container, what string, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	node := what
	if !c.State.Running || c.State.Restarting {
		return -1, fmt.Errorf("exec in %s: %w (%s)", node, lab.ErrNotRunning, c.State.Status)
	}
	note, err := r.beginStart(ctx, labID)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", node, err)
	}
	defer note.done(ctx)
	var created struct {
		ID string `json:"Id"`
	}
	body := execCreate{AttachStdin: stdin != nil, AttachStdout: true, AttachStderr: true, Cmd: cmd}
	if err := r.client.do(ctx, http.MethodPost, "/containers/"+c.ID+"/exec", nil, body, &created); err != nil {
		return -1, fmt.Errorf("exec in %s: %w", node, err)
	}
	note.created(created.ID)
	conn, br, err := r.client.hijack(ctx, "/exec/"+created.ID+"/start", execStart{})
	if err != nil {
		note.startFailed(err)
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
