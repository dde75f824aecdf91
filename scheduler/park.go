package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Parking: a provision that finds no room for the lab (lab.ErrNoCapacity)
// or no runtime to ask (lab.ErrUnavailable) does not burn its retries and
// fail the session. The start goes back to its line at its old place, its
// slot is given back, and admission is held (store/park.go): whoever is
// next would fail the same way. The admission sweep (Unhold) lifts the
// hold when the runtime answers again; a lab ending lifts a no-capacity
// hold. Then the parked starts are admitted again in line order, each
// with a provision of its own (the task id carries the session's
// ProvisionRound, which counts its parks).

// noCapacityRetry is how long a no-capacity hold waits for a lab to end
// before the sweep lets one start try again anyway: room may come back
// without examlab seeing it (another job on the cluster ended).
const noCapacityRetry = time.Minute

// pingTimeout bounds the sweep's question to the runtime.
const pingTimeout = 5 * time.Second

// Park sends an admitted session back to the queue for reason
// (session.ParkNoCapacity, session.ParkUnavailable), with the runtime's
// detail for the exam staff, and holds admission. It reports whether this
// call parked it; a session parked already is returned as it is, and one
// no longer provisioning (submitted meanwhile) is not parked.
//
// The keys move first, then the record: should the process die between,
// the admission sweep gives the slot back from the record (still
// provisioning) and the provision's retry parks it again.
func Park(ctx context.Context, st *store.Store, id, reason, detail string, now time.Time) (*session.Session, bool, error) {
	sess, err := st.Get(ctx, id)
	if err != nil {
		return nil, false, err
	}
	if sess.Parked() {
		return sess, false, nil
	}
	if sess.Status != session.StateProvisioning {
		return sess, false, fmt.Errorf("park %s: it is %s: %w", id, sess.Status, session.ErrNotAllowed)
	}
	if err := st.ParkSlot(ctx, sess, reason, detail); err != nil {
		return sess, false, err
	}
	moved := false
	sess, err = st.Update(ctx, id, func(x *session.Session) error {
		moved = !x.Parked()
		return x.Park(reason, detail, now)
	})
	if err != nil {
		return sess, false, fmt.Errorf("park %s: %w", id, err)
	}
	if moved {
		if err := st.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: "parked",
			Detail: map[string]any{"reason": reason, "detail": detail, "parks": sess.Parks}}); err != nil {
			return sess, true, err
		}
	}
	return sess, moved, nil
}

// Unhold is the admission sweep's look at a hold (store.Hold): a hold for
// an unavailable runtime opens once ping answers; a no-capacity hold lets
// one start try again (the probe) when no lab runs that could end, or
// after noCapacityRetry; a probe whose lab is ready, or that left without
// one, passes the probe on to the next in line. It answers what it did
// ("": nothing), for the log; the admission pass that follows (Repair,
// Admit) admits accordingly.
func Unhold(ctx context.Context, st *store.Store, ping func(context.Context) error, now time.Time) (string, error) {
	h, ok, err := st.AdmissionHold(ctx)
	if err != nil || !ok {
		return "", err
	}
	switch h.State {
	case store.HoldProbing:
		sess, err := st.Get(ctx, h.Probe)
		if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrBadID) {
			return "", err
		}
		if err == nil && sess.Status == session.StateProvisioning {
			return "", nil // still coming up
		}
		_, err = st.EndProbe(ctx, h.Probe)
		return "probe ended: the next in line tries", err
	case store.HoldHeld:
		switch h.Reason {
		case session.ParkUnavailable:
			pctx, cancel := context.WithTimeout(ctx, pingTimeout)
			perr := ping(pctx)
			cancel()
			if perr != nil {
				return "", nil
			}
			_, err := st.LiftHold(ctx, h.Reason, true)
			return "the lab runtime answers again: admission open", err
		case session.ParkNoCapacity:
			running, err := st.RunningLabs(ctx)
			if err != nil {
				return "", err
			}
			if running > 0 && now.Sub(h.At) < noCapacityRetry {
				return "", nil // a lab ending lifts it
			}
			_, err = st.LiftHold(ctx, h.Reason, false)
			return "no-capacity hold: one start tries again", err
		}
	}
	return "", nil
}

// LabReady ends an admission probe whose lab came up: there was room, so
// the next start in line tries. Any other session's ready changes nothing.
func LabReady(ctx context.Context, st *store.Store, q provisionQueue, id string, now time.Time) error {
	ended, err := st.EndProbe(ctx, id)
	if err != nil || !ended {
		return err
	}
	_, err = Admit(ctx, st, q, now)
	return err
}
