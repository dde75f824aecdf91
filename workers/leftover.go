package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
)

// removeLab destroys the lab of id (a session's or a review lab's) for
// good. A runtime that removed the lab's nodes but kept another part of
// it (lab.LeftoverError) does not fail it: what it kept is put on record
// (store.NoteLeftovers) for the reaper to retry, so an engine that will
// not let go of a network never holds a session in archiving. A removal
// that leaves nothing drops the lab's records. audit says whether id is a
// session's lab: that session's audit log hears of it (a claimed warm
// lab's id is not its session's). It returns how many parts the runtime
// kept.
func (h *Handlers) removeLab(ctx context.Context, id, auditTo string) (int, error) {
	audit := auditTo != ""
	err := h.o.Runtime.Destroy(ctx, id)
	kept, isLeftover := lab.Leftovers(err)
	if err != nil && !isLeftover {
		return 0, err
	}
	added, dropped, nerr := h.o.Store.NoteLeftovers(ctx, h.o.RuntimeName, id, kept)
	if nerr != nil {
		// Unrecorded, a leftover would be forgotten: fail, and the rerun
		// records it.
		return 0, errors.Join(nerr, err)
	}
	h.o.Observer.Leftovers(added, dropped)
	if added > 0 {
		h.log.Warn("lab removed but the runtime kept part of it; the reaper will retry", "lab", id, "err", err)
		if audit {
			list := make([]map[string]any, 0, len(kept))
			for _, l := range kept {
				list = append(list, map[string]any{"kind": l.Kind, "name": l.Name, "subnet": l.Subnet, "error": l.Err})
			}
			_ = h.o.Store.Audit(ctx, auditTo, store.AuditEntry{Actor: "worker", Action: "lab-leftover",
				Detail: map[string]any{"runtime": h.o.RuntimeName, "leftovers": list}})
		}
	}
	if dropped > 0 && len(kept) == 0 {
		h.log.Info("leftovers of a lab are gone now", "lab", id, "count", dropped)
		if audit {
			_ = h.o.Store.Audit(ctx, auditTo, store.AuditEntry{Actor: "worker", Action: "lab-leftover-cleared",
				Detail: map[string]any{"runtime": h.o.RuntimeName, "count": dropped}})
		}
	}
	return len(kept), nil
}

// retryLeftovers tries once more to remove every lab with leftovers of
// this worker's runtime on record, unless the lab's id is live again (a
// record outlives nothing it should not: a live lab is never destroyed
// here). It returns the labs it looked at and, among them, those now gone.
func (h *Handlers) retryLeftovers(ctx context.Context) (tried map[string]bool, gone []string, err error) {
	all, err := h.o.Store.Leftovers(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("reap leftovers: %w", err)
	}
	tried = map[string]bool{}
	var errs []error
	for _, l := range all {
		if l.Runtime != h.o.RuntimeName || tried[l.SessionID] {
			continue
		}
		tried[l.SessionID] = true
		if rv, err := h.o.Store.Review(ctx, l.SessionID); err == nil && rv.Status.Live() {
			continue
		}
		sess, gerr := h.o.Store.Get(ctx, l.SessionID)
		if gerr == nil && !sess.Status.Terminal() {
			continue
		}
		auditTo := ""
		if gerr == nil {
			auditTo = sess.ID
		}
		kept, err := h.removeLab(ctx, l.SessionID, auditTo)
		if err != nil {
			errs = append(errs, fmt.Errorf("reap leftovers of %s: %w", l.SessionID, err))
			continue
		}
		if kept == 0 {
			gone = append(gone, l.SessionID)
		}
	}
	return tried, gone, errors.Join(errs...)
}
