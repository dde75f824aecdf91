package docker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/examlab/examlab/lab"
)

// Destroy removes every container and network of the session. Destroying a
// lab that is already gone succeeds.
func (r *Runtime) Destroy(ctx context.Context, sessionID string) error {
	// An empty or malformed id must never widen the label filter below.
	if !lab.ValidSessionID(sessionID) {
		return fmt.Errorf("destroy lab: invalid session id %q", sessionID)
	}
	// A provision racing the destroy can add a container after the first
	// sweep; sweep until one finds nothing.
	for pass := 0; pass < 5; pass++ {
		found, err := r.sweep(ctx, sessionID)
		if err != nil {
			return fmt.Errorf("destroy lab %s: %w", sessionID, err)
		}
		if !found {
			return nil
		}
	}
	return fmt.Errorf("destroy lab %s: resources keep reappearing", sessionID)
}

// sweep removes the session's containers, then its networks, and reports
// whether there was anything to remove.
func (r *Runtime) sweep(ctx context.Context, sessionID string) (bool, error) {
	list, err := r.client.listContainers(ctx, sessionFilter(sessionID))
	if err != nil {
		return false, err
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, c := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.client.removeContainer(ctx, c.ID); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return true, err
	}
	nets, err := r.client.listNetworks(ctx, sessionFilter(sessionID))
	if err != nil {
		return true, err
	}
	for _, n := range nets {
		if err := r.client.removeNetwork(ctx, n.ID); err != nil {
			return true, err
		}
	}
	return len(list) > 0 || len(nets) > 0, nil
}
