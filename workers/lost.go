package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// labHealther is what a runtime that can tell many labs' health at once
// offers (the Nomad runtime: two requests for every lab of the cluster).
// A runtime without it is asked Status lab by lab.
type labHealther interface {
	LabHealth(ctx context.Context, sessionIDs []string) (map[string]lab.NodeStatus, error)
}

// statusTimeout bounds one Status call of the sweep's lab-by-lab path.
const statusTimeout = 5 * time.Second

// LostChange is what one lost-lab sweep changed in one session.
type LostChange struct {
	SessionID string
	// State is lab.StateLost or lab.StateUnknown when the clock was
	// paused (or the trouble changed), lab.StateRunning when the lab came
	// back and the clock resumed.
	State  lab.State
	Reason string
	// Credit is the time added to the deadline when the clock resumed.
	Credit time.Duration
}

// LostSweep is the periodic lost-lab sweep (see LostSweepOnce).
func (h *Handlers) LostSweep(ctx context.Context, _ *asynq.Task) error {
	_, err := h.LostSweepOnce(ctx)
	return err
}

// LostSweepOnce checks the lab of every ready session once, and brings
// the node states of ready sessions' and review labs' records up to date
// with the runtime where they changed. A lab whose
// host is lost or stopped reporting is marked so on the session, every
// node lost or unknown with the runtime's reason, and the candidate's
// clock is paused; a paused lab that runs again resumes the clock, and
// the paused time is credited to the deadline. Both are audit-logged.
// Sessions whose fresh lab an admin asked for are left to the
// re-provision, which credits the time when the fresh lab is ready.
func (h *Handlers) LostSweepOnce(ctx context.Context) ([]LostChange, error) {
	rerr := h.syncReviews(ctx)
	changes, err := h.sweepSessions(ctx)
	return changes, errors.Join(err, rerr)
}

// sweepSessions is LostSweepOnce's part for sessions.
func (h *Handlers) sweepSessions(ctx context.Context) ([]LostChange, error) {
	ready, err := h.readySessions(ctx)
	if err != nil || len(ready) == 0 {
		return nil, err
	}
	verdicts, nodes, err := h.labVerdicts(ctx, ready)
	if err != nil {
		return nil, err
	}
	var changes []LostChange
	var errs []error
	for _, sum := range ready {
		v, ok := verdicts[sum.ID]
		if !ok {
			continue
		}
		var ch *LostChange
		switch {
		case v.State == lab.StateLost || v.State == lab.StateUnknown:
			ch, err = h.pauseClock(ctx, sum.ID, v)
		case v.State == lab.StateRunning && sum.LabState != "":
			ch, err = h.resumeClock(ctx, sum.ID)
		default:
			// Nothing for the clock: the record's nodes still follow the
			// lab, for the API reads nothing else.
			err = h.syncNodes(ctx, sum.ID, sum.UpdatedAt, v, nodes[sum.ID])
		}
		if err != nil {
			errs = append(errs, err)
		}
		if ch != nil {
			changes = append(changes, *ch)
		}
	}
	return changes, errors.Join(errs...)
}

// readySessions lists every ready session.
func (h *Handlers) readySessions(ctx context.Context) ([]store.Summary, error) {
	var out []store.Summary
	for off := 0; ; {
		page, err := h.o.Store.List(ctx, store.ListQuery{Status: []session.State{session.StateReady}, Sort: "created", Offset: off, Limit: 500})
		if err != nil {
			return nil, fmt.Errorf("lost-lab sweep: list ready sessions: %w", err)
		}
		out = append(out, page.Sessions...)
		off += len(page.Sessions)
		if len(page.Sessions) == 0 || off >= page.Total {
			return out, nil
		}
	}
}

// labVerdicts tells, for each session, one state standing for its whole
// lab: lost, unknown, running, or (absent or another state) nothing to act
// on. A runtime that reports many labs at once is asked once; a session
// it knows no lab of has lost it (the allocation is gone). Otherwise each
// lab's Status is read and summed up by labVerdict, and the nodes read
// are returned too.
func (h *Handlers) labVerdicts(ctx context.Context, ready []store.Summary) (map[string]lab.NodeStatus, map[string][]lab.NodeStatus, error) {
	if lh, ok := h.o.Runtime.(labHealther); ok {
		// The runtime knows labs by their own ids: a session in a claimed
		// warm lab is asked for by its lab's.
		ids := make([]string, len(ready))
		for i, s := range ready {
			ids[i] = summaryLab(s)
		}
		health, err := lh.LabHealth(ctx, ids)
		if err != nil {
			return nil, nil, fmt.Errorf("lost-lab sweep: %w", err)
		}
		got := make(map[string]lab.NodeStatus, len(ready))
		for i, s := range ready {
			v, ok := health[ids[i]]
			if !ok {
				v = lab.NodeStatus{State: lab.StateLost, Detail: "the lab has no allocation on the cluster any more"}
			}
			got[s.ID] = v
		}
		return got, nil, nil
	}
	out := make(map[string]lab.NodeStatus, len(ready))
	read := make(map[string][]lab.NodeStatus, len(ready))
	var errs []error
	for _, sum := range ready {
		spec, err := h.spec(&session.Session{ID: sum.ID, ExamID: sum.ExamID, Email: sum.Email, LabID: sum.LabID})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, statusTimeout)
		nodes, err := h.o.Runtime.Status(sctx, spec)
		cancel()
		if err != nil {
			// The runtime not answering is not a lost lab: the
			// unavailable runtime is told elsewhere (readyz, starts).
			errs = append(errs, fmt.Errorf("lost-lab sweep: status of %s: %w", sum.ID, err))
			continue
		}
		out[sum.ID], read[sum.ID] = labVerdict(nodes), nodes
	}
	return out, read, errors.Join(errs...)
}

// summaryLab is the lab id of an indexed session (session.Session.Lab).
func summaryLab(s store.Summary) string {
	if s.LabID != "" {
		return s.LabID
	}
	return s.ID
}

// labVerdict sums a ready lab's node states up: lost if a node is lost or
// every node is gone (a Docker lab whose containers vanished: missing, or
// pending when its network went too), unknown if a node is, running if
// all run; an empty state otherwise (a node crashed or being reset: not
// the host's doing, and shown by the node states).
func labVerdict(nodes []lab.NodeStatus) lab.NodeStatus {
	missing := 0
	for _, n := range nodes {
		if n.State == lab.StateLost {
			return lab.NodeStatus{State: lab.StateLost, Detail: n.Detail}
		}
		if n.State == lab.StateMissing || n.State == lab.StatePending {
			missing++
		}
	}
	for _, n := range nodes {
		if n.State == lab.StateUnknown {
			return lab.NodeStatus{State: lab.StateUnknown, Detail: n.Detail}
		}
	}
	switch {
	case len(nodes) > 0 && missing == len(nodes):
		return lab.NodeStatus{State: lab.StateLost, Detail: "every node of the lab is gone from the runtime"}
	case lab.AllRunning(nodes):
		return lab.NodeStatus{State: lab.StateRunning}
	}
	return lab.NodeStatus{}
}

// errUnchanged aborts a store update that has nothing to write.
var errUnchanged = errors.New("unchanged")

// pauseClock marks the session's lab lost or unknown and stops its clock.
// Only a change is written and audit-logged: a lab seen lost sweep after
// sweep is recorded once.
func (h *Handlers) pauseClock(ctx context.Context, id string, v lab.NodeStatus) (*LostChange, error) {
	now := h.o.Now()
	var started bool
	var remaining time.Duration
	sess, err := h.o.Store.Update(ctx, id, func(x *session.Session) error {
		// A fresh lab being made stands in for the lost one: what the
		// runtime says of the old one (gone) is no news.
		if x.Reprovisioning() || x.Trouble.State == v.State && x.Trouble.Reason == v.Detail {
			return errUnchanged
		}
		var err error
		if started, err = x.LabUnusable(v.State, v.Detail, now); err != nil {
			return err
		}
		markNodes(x, v)
		remaining = x.Remaining(now)
		return nil
	})
	if errors.Is(err, errUnchanged) || errors.Is(err, session.ErrNotAllowed) {
		// Unchanged, or no longer ready (submitted meanwhile).
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lost-lab sweep: pause the clock of %s: %w", id, err)
	}
	action := "lab-" + string(v.State)
	h.log.Warn("lab unusable; the candidate's clock is paused", "session", id, "state", v.State, "reason", v.Detail,
		"paused_at", sess.Trouble.Since, "first_seen", started)
	detail := map[string]any{"state": string(v.State), "reason": v.Detail, "paused_at": sess.Trouble.Since,
		"remaining_seconds": int64(remaining / time.Second)}
	if v.AllocID != "" {
		detail["alloc_id"], detail["client"] = v.AllocID, v.ClientNode
	}
	if err := h.o.Store.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: action, Detail: detail}); err != nil {
		return nil, err
	}
	return &LostChange{SessionID: id, State: v.State, Reason: v.Detail}, nil
}

// markNodes shows the lab's trouble on every node of the record.
func markNodes(x *session.Session, v lab.NodeStatus) {
	for i := range x.Nodes {
		n := &x.Nodes[i]
		n.State, n.Detail = v.State, v.Detail
		if v.AllocID != "" {
			n.AllocID, n.ClientNode = v.AllocID, v.ClientNode
		}
	}
}

// resumeClock runs the clock of a session whose lab is back and credits
// the paused time, unless a fresh lab is being made (the re-provision
// credits it when that lab is ready).
func (h *Handlers) resumeClock(ctx context.Context, id string) (*LostChange, error) {
	nodes, err := h.liveStatus(ctx, id)
	if err != nil {
		return nil, err
	}
	if !lab.AllRunning(nodes) {
		return nil, nil // back in the health list, not yet node by node
	}
	return h.credit(ctx, id, nodes, "lab-back", func(x *session.Session) bool { return !x.Reprovisioning() })
}

// liveStatus reads the session's lab node by node.
func (h *Handlers) liveStatus(ctx context.Context, id string) ([]lab.NodeStatus, error) {
	sess, err := h.o.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	spec, err := h.spec(sess)
	if err != nil {
		return nil, err
	}
	nodes, err := h.o.Runtime.Status(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", id, err)
	}
	return nodes, nil
}

// credit resumes a paused clock with the lab's fresh node states and
// audit-logs the time added to the deadline (action, with the numbers).
// ok says whether the session, as read under its lock, is to be resumed.
func (h *Handlers) credit(ctx context.Context, id string, nodes []lab.NodeStatus, action string, ok func(*session.Session) bool) (*LostChange, error) {
	now := h.o.Now()
	var credit time.Duration
	var pausedAt, before time.Time
	sess, err := h.o.Store.Update(ctx, id, func(x *session.Session) error {
		if x.Trouble.Since.IsZero() || !ok(x) {
			return errUnchanged
		}
		pausedAt, before = x.Trouble.Since, x.Deadline
		credit = x.LabBack(now)
		x.Nodes = nodes
		return nil
	})
	if errors.Is(err, errUnchanged) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("resume the clock of %s: %w", id, err)
	}
	h.log.Info("lab usable again; the candidate's clock runs and the paused time is credited", "session", id,
		"credited", credit, "deadline", sess.Deadline)
	detail := map[string]any{"paused_at": pausedAt, "resumed_at": now.UTC(), "credited_seconds": int64(credit / time.Second),
		"deadline_before": before, "deadline": sess.Deadline, "total_credited_seconds": sess.Trouble.CreditedSeconds}
	if err := h.o.Store.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: action, Detail: detail}); err != nil {
		return nil, err
	}
	return &LostChange{SessionID: id, State: lab.StateRunning, Credit: credit}, nil
}

// Reprovision replaces a session's lost lab, on an admin's request: what
// remains of the old lab is destroyed, a fresh lab of the same spec (and
// the same lab id: a session in a claimed warm lab keeps its LabID, whose
// prefix stays reserved until the session's cleanup) is
// provisioned, and once every node runs the clock resumes with the paused
// time credited. Answers, terminal recordings and the audit log are the
// session's, not the lab's, and stay. Run again, it converges: the
// destroy of a gone lab succeeds and the provision is idempotent; once
// the credit is recorded it does nothing.
func (h *Handlers) Reprovision(ctx context.Context, t *asynq.Task) error {
	p, sess, err := h.session(ctx, t)
	if err != nil {
		return err
	}
	if !sess.Reprovisioning() {
		// Done already, or the session was submitted meanwhile.
		return nil
	}
	spec, err := h.spec(sess)
	if err != nil {
		return err
	}
	defer h.clearProgress(ctx, sess.Lab())
	stop := h.watchProgress(ctx, spec)
	if err := h.o.Runtime.Destroy(ctx, sess.Lab()); err != nil {
		stop()
		return fmt.Errorf("reprovision %s: remove the old lab: %w", sess.ID, err)
	}
	pctx, cancel := context.WithTimeout(ctx, h.o.ProvisionTimeout)
	err = h.o.Runtime.Provision(pctx, spec)
	cancel()
	stop()
	if err == nil {
		var nodes []lab.NodeStatus
		if nodes, err = h.o.Runtime.Status(ctx, spec); err == nil && !lab.AllRunning(nodes) {
			err = errors.New("not every node of the fresh lab runs")
		}
		if err == nil {
			_, err = h.credit(ctx, sess.ID, nodes, "lab-reprovisioned", (*session.Session).Reprovisioning)
		}
	}
	if err != nil {
		if lastAttempt(ctx) {
			h.log.Error("reprovision failed; the clock stays paused", "session", sess.ID, "err", err)
			_ = h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "reprovision-failed",
				Detail: map[string]any{"error": err.Error(), "nonce": p.Nonce}})
		}
		return fmt.Errorf("reprovision %s: %w", sess.ID, err)
	}
	return nil
}

// reachableOnly reports whether the session's archive takes only the
// nodes that can still be reached: an admin asked for that, or the lab
// was lost or unknown when the session was submitted (a candidate may
// submit while paused), so asking the runtime for every node would fail
// the archive until it gives up.
func reachableOnly(sess *session.Session) bool {
	return sess.Trouble.ArchiveReachable || sess.Trouble.State != ""
}

// captureNodes splits the lab's nodes for an archive: all of them, but for
// a session archived as far as it can be reached (reachableOnly) only the
// nodes that run; the others are reported missing and not asked for.
func (h *Handlers) captureNodes(ctx context.Context, sess *session.Session, spec lab.Spec) ([]string, []lab.NodeCapture, error) {
	names := make([]string, len(spec.Nodes))
	for i, n := range spec.Nodes {
		names[i] = n.Name
	}
	if !reachableOnly(sess) {
		return names, nil, nil
	}
	nodes, err := h.o.Runtime.Status(ctx, spec)
	if err != nil {
		return nil, nil, fmt.Errorf("which nodes can be reached: %w", err)
	}
	running := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		running[n.Name] = n.State == lab.StateRunning
	}
	var reach []string
	var missing []lab.NodeCapture
	for _, n := range names {
		if running[n] {
			reach = append(reach, n)
		} else {
			missing = append(missing, lab.NodeCapture{Node: n, Missing: true})
		}
	}
	return reach, missing, nil
}
