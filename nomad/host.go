package nomad

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// clientView is what the lost-lab checks need of a Nomad client: from a
// node's full record (Since set) or from the nodes list (Since zero).
type clientView struct {
	Name   string
	Status string
	Since  time.Time
}

// allocHost looks up the client of a live allocation and says whether it
// has lost the lab or stopped reporting (see hostTrouble); "" when the
// lab's host is fine, or the allocation has ended anyway.
func (r *Runtime) allocHost(ctx context.Context, a *api.AllocationListStub) (lab.State, string) {
	if !hostMatters(a) {
		return "", ""
	}
	var cv *clientView
	if a.NodeID != "" {
		// A client that cannot be looked up tells nothing more than the
		// allocation does; the allocation's own status still counts.
		if n, _, err := r.client.Nodes().Info(a.NodeID, r.query(ctx)); err == nil && n != nil {
			cv = &clientView{Name: n.Name, Status: n.Status}
			if n.StatusUpdatedAt > 0 {
				cv.Since = time.Unix(n.StatusUpdatedAt, 0)
			}
		}
	}
	return hostTrouble(a, cv)
}

// hostMatters reports whether the state of the allocation's client says
// anything of the lab: the allocation was meant to run, or was declared
// lost or unknown with its client. One that completed or failed on its
// own has nothing to lose.
func hostMatters(a *api.AllocationListStub) bool {
	switch a.ClientStatus {
	case api.AllocClientStatusLost, api.AllocClientStatusUnknown:
		return true
	case api.AllocClientStatusPending, api.AllocClientStatusRunning:
		return a.DesiredStatus == api.AllocDesiredStatusRun
	}
	return false
}

// hostTrouble maps an allocation and its client (nil when unknown) to the
// state of every node of the lab when the host is the trouble:
//
//   - lab.StateLost when Nomad declared the allocation lost, or its client
//     is down: the lab's containers went with the host, and the job never
//     replaces them (its reschedule and disconnect policies forbid it);
//   - lab.StateUnknown when the allocation is unknown (its client missed
//     its heartbeats, and the job's disconnect block keeps the allocation
//     for a while) or its client is disconnected: the lab may still run,
//     and comes back if the client does.
//
// It returns "" when the host is fine, with the detail an admin reads
// otherwise.
func hostTrouble(a *api.AllocationListStub, c *clientView) (lab.State, string) {
	if !hostMatters(a) {
		return "", ""
	}
	name := clientName(a)
	status := ""
	var since time.Time
	if c != nil {
		if c.Name != "" {
			name = c.Name
		}
		status, since = c.Status, c.Since
	}
	if since.IsZero() && (a.ClientStatus == api.AllocClientStatusLost || a.ClientStatus == api.AllocClientStatusUnknown) && a.ModifyTime > 0 {
		// The list has no client timestamps; the allocation changed
		// status when its client did.
		since = time.Unix(0, a.ModifyTime)
	}
	at := ""
	if !since.IsZero() {
		at = " since " + since.UTC().Format("15:04:05 UTC")
	}
	alloc := "allocation " + shortID(a.ID)
	switch {
	case status == api.NodeStatusDown && a.ClientStatus == api.AllocClientStatusLost:
		return lab.StateLost, fmt.Sprintf("client %s is down%s; %s is lost", name, at, alloc)
	case status == api.NodeStatusDown:
		return lab.StateLost, fmt.Sprintf("client %s is down%s; %s went with it", name, at, alloc)
	case a.ClientStatus == api.AllocClientStatusLost:
		return lab.StateLost, fmt.Sprintf("%s on client %s is lost%s", alloc, name, at)
	case a.ClientStatus == api.AllocClientStatusUnknown:
		return lab.StateUnknown, fmt.Sprintf("client %s stopped reporting%s; %s is unknown until it reconnects", name, at, alloc)
	case status == api.NodeStatusDisconnected:
		return lab.StateUnknown, fmt.Sprintf("client %s is disconnected%s; %s may still run", name, at, alloc)
	}
	return "", ""
}

// labJobsFilter selects the allocations of examlab's lab jobs (named
// exam-{8 chars}) in one list request.
const labJobsFilter = `JobID matches "^exam-"`

// LabHealth reports, for each of the sessions that has a lab on the
// cluster, one status standing for every node of it: lab.StateLost or
// lab.StateUnknown with the reason when its host is the trouble (see
// hostTrouble), lab.StateRunning when its allocation runs on a ready
// client, else the allocation's status as pending, creating or exited.
// Sessions without an allocation are left out. It costs two requests
// however many labs there are — the lab jobs' allocations and the
// clients — which is what lets a sweep watch every ready session every
// few seconds.
func (r *Runtime) LabHealth(ctx context.Context, sessionIDs []string) (map[string]lab.NodeStatus, error) {
	want := make(map[string]string, len(sessionIDs)) // job id -> session
	for _, id := range sessionIDs {
		if lab.ValidSessionID(id) {
			want[jobspecs.JobName(id)] = id
		}
	}
	out := make(map[string]lab.NodeStatus, len(want))
	if len(want) == 0 {
		return out, nil
	}
	q := &api.QueryOptions{Filter: labJobsFilter, Params: map[string]string{"task_states": "false"}}
	stubs, _, err := r.client.Allocations().List(q.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("lab health: list allocations: %w", err)
	}
	nodes, _, err := r.client.Nodes().List(r.query(ctx))
	if err != nil {
		return nil, fmt.Errorf("lab health: list clients: %w", err)
	}
	clients := make(map[string]*clientView, len(nodes))
	for _, n := range nodes {
		clients[n.ID] = &clientView{Name: n.Name, Status: n.Status}
	}
	byJob := map[string][]*api.AllocationListStub{}
	for _, a := range stubs {
		if _, ok := want[a.JobID]; ok {
			byJob[a.JobID] = append(byJob[a.JobID], a)
		}
	}
	for job, allocs := range byJob {
		a := currentAlloc(allocs)
		st := lab.NodeStatus{AllocID: a.ID, ClientNode: clientName(a)}
		c := clients[a.NodeID]
		if state, detail := hostTrouble(a, c); state != "" {
			st.State, st.Detail = state, detail
		} else {
			st.State, st.Detail = allocState(a), "allocation "+a.ClientStatus
		}
		out[want[job]] = st
	}
	return out, nil
}

// allocState is the lab-wide state an allocation's client status stands
// for, when its host is fine.
func allocState(a *api.AllocationListStub) lab.State {
	switch a.ClientStatus {
	case api.AllocClientStatusRunning:
		return lab.StateRunning
	case api.AllocClientStatusPending:
		return lab.StateCreating
	case api.AllocClientStatusFailed:
		return lab.StateFailed
	}
	return lab.StateExited
}
