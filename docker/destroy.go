package docker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/examlab/examlab/lab"
)

// Destroy removes every container and network of the session. Destroying a
// lab that is already gone succeeds. When the containers are gone but the
// engine refuses to remove a network (it can report active endpoints on a
// network with none left, a fault only a daemon restart clears), Destroy
// returns a *lab.LeftoverError naming the network and the subnet it holds.
func (r *Runtime) Destroy(ctx context.Context, sessionID string) error {
	// An empty or malformed id must never widen the label filter below.
	if !lab.ValidSessionID(sessionID) {
		return fmt.Errorf("destroy lab: invalid session id %q", sessionID)
	}
	// A provision racing the destroy can add a container after the first
	// sweep; sweep until one finds nothing it could remove.
	for pass := 0; pass < 5; pass++ {
		found, kept, err := r.sweep(ctx, sessionID)
		if err != nil {
			return fmt.Errorf("destroy lab %s: %w", sessionID, err)
		}
		if found {
			continue
		}
		if len(kept) > 0 {
			return &lab.LeftoverError{SessionID: sessionID, Leftovers: kept}
		}
		return nil
	}
	return fmt.Errorf("destroy lab %s: resources keep reappearing", sessionID)
}

// sweep removes the session's containers, then its networks. It reports
// whether it removed anything and, when it found no container at all,
// the networks the engine refused to remove.
func (r *Runtime) sweep(ctx context.Context, sessionID string) (bool, []lab.Leftover, error) {
	list, err := r.client.listContainers(ctx, sessionFilter(sessionID))
	if err != nil {
		return false, nil, err
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
		return true, nil, err
	}
	nets, err := r.client.listNetworks(ctx, sessionFilter(sessionID))
	if err != nil {
		return true, nil, err
	}
	var kept []lab.Leftover
	for _, n := range nets {
		err := r.client.removeNetwork(ctx, n.ID)
		if err == nil {
			continue
		}
		// Only the engine's own refusal is a leftover; an engine that
		// cannot be reached has said nothing about the network.
		var ae *apiError
		if !errors.As(err, &ae) {
			return true, nil, err
		}
		if len(list) > 0 {
			// The containers just removed may still be letting go of
			// their endpoints: the next pass asks again.
			continue
		}
		kept = append(kept, lab.Leftover{Kind: lab.LeftoverNetwork, Name: n.Name, ID: n.ID, Subnet: networkSubnet(n), Err: ae.Message})
	}
	return len(list) > 0 || len(nets) > len(kept), kept, nil
}

// networkSubnet is the first IPv4 subnet a network holds.
func networkSubnet(n network) string {
	for _, c := range n.IPAM.Config {
		if p, err := netip.ParsePrefix(c.Subnet); err == nil && p.Addr().Is4() {
			return p.Masked().String()
		}
	}
	return ""
}
