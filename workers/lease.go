package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/scheduler"
)

// errSuperseded ends a run whose lease another run took over: the session
// is in a later round, which that run carries on.
var errSuperseded = errors.New("another run of the operation took over")

// holdLease takes the session's lease for op (scheduler.LeaseProvision)
// in round and renews it until stop, in the background. The context it
// returns is cancelled, with errSuperseded as its cause, when a renewal
// finds the lease taken over. A renewal that cannot reach Redis keeps the
// run going: should the lease run out meanwhile, the sweep restarts the
// operation and this run stops at its next renewal.
func (h *Handlers) holdLease(ctx context.Context, op, id string, round int) (context.Context, func(), error) {
	l, err := h.o.Store.TakeLease(ctx, op, id, round, h.o.LeaseTTL)
	if err != nil {
		return nil, nil, err
	}
	wctx, stop := h.keepRenewed(ctx, h.o.LeaseRenew, l.Renew, "work lease "+op+" of "+id)
	return wctx, func() {
		stop()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer rcancel()
		if err := l.Release(rctx); err != nil {
			// It runs out by itself; the sweep then finds the session
			// past this round, or done, and only drops it.
			h.log.Warn("release work lease", "op", op, "session", id, "err", err)
		}
	}, nil
}

// keepRenewed calls renew every every until stop, and cancels the context
// it returns, with errSuperseded as its cause, once renew reports the
// claim lost. A renewal that fails (Redis unreachable) is tried again at
// the next tick.
func (h *Handlers) keepRenewed(ctx context.Context, every time.Duration, renew func(context.Context) (bool, error), what string) (context.Context, func()) {
	wctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			rctx, rcancel := context.WithTimeout(wctx, every)
			held, err := renew(rctx)
			rcancel()
			switch {
			case err != nil && wctx.Err() == nil:
				h.log.Warn("renew", "what", what, "err", err)
			case !held:
				h.log.Warn("lost; stopping this run", "what", what)
				cancel(errSuperseded)
				return
			}
		}
	}()
	return wctx, func() {
		cancel(nil)
		<-done
	}
}

// superseded reports whether ctx ended because another run took over.
func superseded(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errSuperseded)
}

// RestartOnce is one pass of the sweep for provisions whose worker is
// gone: each run-out provision lease is claimed (one sweep acts on it)
// and its provision restarted in a new round (scheduler.RestartProvision).
// It returns the sessions it restarted. A lease of a round the session
// has left — parked, submitted, restarted already — is only dropped.
func (h *Handlers) RestartOnce(ctx context.Context) ([]string, error) {
	leases, err := h.o.Store.ExpiredLeases(ctx, scheduler.LeaseProvision, 100)
	if err != nil {
		return nil, err
	}
	var restarted []string
	var errs []error
	for _, e := range leases {
		claim, ok, err := h.o.Store.ClaimLease(ctx, e, scheduler.LeaseClaim)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue // another sweep has it, or its holder came back
		}
		did, err := scheduler.RestartProvision(ctx, h.o.Store, h.o.Enqueuer, e.ID, e.Round, h.o.Now())
		if err != nil {
			// The claim runs out and a later pass tries again; the
			// admission sweep enqueues a recorded round's provision.
			errs = append(errs, err)
			if !did {
				continue
			}
		}
		if did {
			restarted = append(restarted, e.ID)
			h.log.Warn("the worker provisioning a lab stopped; provision restarted", "session", e.ID, "from_round", e.Round)
		}
		if err := claim.Release(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return restarted, errors.Join(errs...)
}

// RunRestarts runs RestartOnce now and every every until ctx ends: every
// worker process does, so that a provision left by a dead worker is
// restarted within seconds of any worker running.
func (h *Handlers) RunRestarts(ctx context.Context, every time.Duration) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		if _, err := h.RestartOnce(pctx); err != nil && ctx.Err() == nil {
			h.log.Warn("restart provisions of stopped workers", "err", fmt.Errorf("sweep: %w", err))
		}
		cancel()
		t.Reset(every)
	}
}
