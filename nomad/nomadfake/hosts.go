package nomadfake

import (
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/nomad/api"
)

// clientState is the fake client's node status as the servers see it.
type clientState struct {
	status string // "" means ready
	since  time.Time
}

// node is the fake client's node record. The caller must not hold mu.
func (s *Server) node() *api.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodeLocked()
}

func (s *Server) nodeLocked() *api.Node {
	n := &api.Node{ID: s.nodeID, Name: "fake-client", Datacenter: "dc1", Status: api.NodeStatusReady,
		SchedulingEligibility: api.NodeSchedulingEligible}
	if s.host.status != "" {
		n.Status = s.host.status
	}
	if !s.host.since.IsZero() {
		n.StatusUpdatedAt = s.host.since.Unix()
	}
	return n
}

// SetClientStatus sets the fake client's node status as the servers
// report it: api.NodeStatusReady, NodeStatusDown or NodeStatusDisconnected.
// Only the node changes; the allocations on it keep their status (see
// LoseAllocs and DisconnectAllocs), as in the moment before Nomad's
// servers act on a client's missed heartbeats.
func (s *Server) SetClientStatus(status string) error {
	switch status {
	case api.NodeStatusReady, api.NodeStatusDown, api.NodeStatusDisconnected, api.NodeStatusInit:
	default:
		return fmt.Errorf("nomadfake: unknown node status %q", status)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.host = clientState{status: status, since: time.Now()}
	s.bump()
	return nil
}

// LoseAlloc plays the servers declaring the session's live allocation lost
// with its client: client status lost, desired status stop, as Nomad
// marks it, and nothing placed in its stead (the job's reschedule and
// disconnect policies forbid it). The lab's containers and network are
// removed, as they went with the host; LoseAlloc returns once they are.
func (s *Server) LoseAlloc(sessionID string) error {
	s.mu.Lock()
	a := s.liveAlloc(sessionID)
	if a == nil {
		s.mu.Unlock()
		return fmt.Errorf("nomadfake: session %s has no live allocation", sessionID)
	}
	a.ClientStatus, a.ClientDescription = api.AllocClientStatusLost, "alloc is lost since its node is down"
	a.DesiredStatus, a.DesiredDescription = api.AllocDesiredStatusStop, "alloc is lost since its node is down"
	a.ModifyTime = time.Now().UnixNano()
	a.ModifyIndex = s.bump()
	s.mu.Unlock()
	// The task states stay the last the client reported, as in Nomad;
	// the containers are gone all the same.
	if a.placed != nil {
		<-a.placed
	}
	s.mu.Lock()
	a.torn = true
	s.mu.Unlock()
	if err := s.teardownDocker(s.ctx, a); err != nil {
		return fmt.Errorf("nomadfake: remove the lost lab of %s: %w", sessionID, err)
	}
	return nil
}

// DisconnectAlloc plays the servers marking the session's live allocation
// unknown, its client having missed its heartbeats: the job's disconnect
// block keeps it (desired status run) and its lab keeps running on the
// client. ReconnectAlloc undoes it.
func (s *Server) DisconnectAlloc(sessionID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.liveAlloc(sessionID)
	if a == nil || a.ClientStatus != api.AllocClientStatusRunning {
		return fmt.Errorf("nomadfake: session %s has no running allocation", sessionID)
	}
	a.ClientStatus, a.ClientDescription = api.AllocClientStatusUnknown, "alloc is unknown since its node is disconnected"
	a.ModifyTime = time.Now().UnixNano()
	a.ModifyIndex = s.bump()
	return nil
}

// ReconnectAlloc plays the client coming back: the unknown allocation of
// the session runs again, as the job's reconcile keep_original says.
func (s *Server) ReconnectAlloc(sessionID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.liveAlloc(sessionID)
	if a == nil || a.ClientStatus != api.AllocClientStatusUnknown {
		return fmt.Errorf("nomadfake: session %s has no unknown allocation", sessionID)
	}
	a.ClientStatus, a.ClientDescription = api.AllocClientStatusRunning, "Tasks are running"
	a.ModifyTime = time.Now().UnixNano()
	a.ModifyIndex = s.bump()
	return nil
}

// liveAlloc is the session's allocation the scheduler wants running. The
// caller holds mu.
func (s *Server) liveAlloc(sessionID string) *allocation {
	var live *allocation
	for _, a := range s.allocs {
		if a.session == sessionID && a.DesiredStatus == api.AllocDesiredStatusRun && (live == nil || a.CreateIndex > live.CreateIndex) {
			live = a
		}
	}
	return live
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	n := s.node()
	s.reply(w, []*api.NodeListStub{{ID: n.ID, Name: n.Name, Datacenter: n.Datacenter, Status: n.Status,
		SchedulingEligibility: n.SchedulingEligibility, CreateIndex: 1, ModifyIndex: 1}})
}

// jobIDMatches is the one filter expression the fake's allocations list
// takes: a job id prefix, anchored, as the runtime sends it.
var jobIDMatches = regexp.MustCompile(`^JobID matches "\^([A-Za-z0-9_-]+)"$`)

// listAllocs lists allocations, filtered by a JobID prefix expression and
// without task states when asked (task_states=false). Any other filter is
// refused, as Nomad refuses one it cannot parse, so the runtime cannot
// rely on a filter the fake does not understand.
func (s *Server) listAllocs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prefix := ""
	if f := q.Get("filter"); f != "" {
		m := jobIDMatches.FindStringSubmatch(f)
		if m == nil {
			fail(w, http.StatusBadRequest, "nomadfake: filter %q not served (only JobID matches \"^prefix\")", f)
			return
		}
		prefix = m[1]
	}
	states := q.Get("task_states") != "false"
	s.mu.Lock()
	out := []*api.AllocationListStub{}
	for _, a := range s.allocs {
		if !strings.HasPrefix(a.JobID, prefix) {
			continue
		}
		st := stub(a.Allocation)
		if !states {
			st.TaskStates = nil
		}
		out = append(out, st)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, k int) bool { return out[i].CreateIndex > out[k].CreateIndex })
	s.reply(w, out)
}
