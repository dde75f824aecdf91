package docker

import (
	"context"
	"fmt"
	"time"

	"github.com/examlab/examlab/lab"
)

// Status reports each node of the spec, in spec order. A node with no
// container is pending before the lab's network exists and missing after.
func (r *Runtime) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	if err := checkSpec(spec); err != nil {
		return nil, fmt.Errorf("lab status: %w", err)
	}
	// A node with no container is pending until the lab's network (or a
	// segmented lab's switch) exists, and missing after.
	absent := lab.StatePending
	if spec.Segmented() {
		_, err := r.client.inspectContainer(ctx, lab.SwitchName(spec.SessionID))
		if err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("lab status %s: %w", spec.SessionID, err)
		}
		if err == nil {
			absent = lab.StateMissing
		}
	} else {
		nets, err := r.client.networksNamed(ctx, lab.NetworkName(spec.SessionID))
		if err != nil {
			return nil, fmt.Errorf("lab status %s: %w", spec.SessionID, err)
		}
		if len(nets) > 0 {
			absent = lab.StateMissing
		}
	}
	out := make([]lab.NodeStatus, 0, len(spec.Nodes))
	for _, n := range spec.Nodes {
		name := lab.ContainerName(spec.SessionID, n.Name)
		st := lab.NodeStatus{Name: n.Name, Container: name}
		c, err := r.client.inspectContainer(ctx, name)
		switch {
		case isNotFound(err):
			st.State = absent
		case err != nil:
			return nil, fmt.Errorf("lab status %s: node %s: %w", spec.SessionID, n.Name, err)
		case c.Config.Labels[lab.LabelSession] != spec.SessionID:
			st.State = lab.StateMissing
			st.Detail = fmt.Sprintf("name taken by session %q", c.Config.Labels[lab.LabelSession])
		default:
			fillStatus(&st, c, lab.NetworkName(spec.SessionID))
			if spec.Segmented() && st.State == lab.StateRunning {
				// Fixed by the exam, the same in every lab.
				st.IP = n.Address
			}
		}
		out = append(out, st)
	}
	return out, nil
}

func fillStatus(st *lab.NodeStatus, c container, netName string) {
	s := c.State
	switch s.Status {
	case "running":
		st.State = lab.StateRunning
	case "paused":
		// Only a snapshot pauses a node, for as long as it is captured.
		st.State = lab.StateRunning
		st.Detail = "paused for a snapshot"
	case "created":
		st.State = lab.StateCreating
	case "restarting":
		st.State = lab.StateFailed
		st.Detail = "restarting"
	case "dead":
		st.State = lab.StateFailed
		st.Detail = "dead"
	case "removing":
		st.State = lab.StateMissing
		st.Detail = "being removed"
	default: // exited
		st.State = lab.StateExited
		st.Detail = fmt.Sprintf("%s, exit code %d", s.Status, s.ExitCode)
	}
	if t, err := time.Parse(time.RFC3339Nano, s.StartedAt); err == nil && !t.IsZero() && t.Year() > 1 {
		st.StartedAt = t
	}
	if ep, ok := c.NetworkSettings.Networks[netName]; ok {
		st.IP = ep.IPAddress
	}
	if s.OOMKilled {
		st.Events = append(st.Events, "killed for lack of memory")
	}
	if s.Error != "" {
		st.Events = append(st.Events, s.Error)
	}
}

// node finds a session's node container, refusing one that carries the
// name but belongs to another session.
func (r *Runtime) node(ctx context.Context, sessionID, node string) (container, error) {
	name := lab.ContainerName(sessionID, node)
	c, err := r.client.inspectContainer(ctx, name)
	if isNotFound(err) {
		return container{}, fmt.Errorf("node %s of session %s: %w", node, sessionID, lab.ErrNotFound)
	}
	if err != nil {
		return container{}, fmt.Errorf("inspect node %s of session %s: %w", node, sessionID, err)
	}
	// Never the lab's switch, whatever name it is asked by: it holds
	// capabilities no candidate may have.
	if c.Config.Labels[lab.LabelSession] != sessionID || c.Config.Labels[lab.LabelManaged] != "true" || c.Config.Labels[lab.LabelPart] != "" {
		return container{}, fmt.Errorf("node %s of session %s: %w", node, sessionID, lab.ErrNotFound)
	}
	return c, nil
}
