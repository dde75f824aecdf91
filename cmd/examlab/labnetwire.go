package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/lab"
)

// failedSuffix names the file, beside the state, in which watch -plan
// leaves why it could not wire or prepare the lab.
const failedSuffix = ".failed"

// wirePoll is how often watch -plan looks for node containers while the
// lab comes up: each node is wired as soon as it runs.
const wirePoll = 50 * time.Millisecond

// toolsFill is the grader's tools volume a job's nodes mount ("" for
// none), and what this client fills it from (see graderTools).
type toolsFill struct {
	name, busybox, holder string
}

// readPlan reads and checks a segmented lab's plan.
func readPlan(session, plan string) (lab.Spec, error) {
	var spec lab.Spec
	b, err := os.ReadFile(plan)
	if err != nil {
		return spec, fmt.Errorf("read the plan: %w", err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return spec, fmt.Errorf("decode the plan %s: %w", plan, err)
	}
	switch {
	case spec.SessionID != session:
		return spec, fmt.Errorf("the plan is session %q's", session)
	case !spec.Segmented():
		return spec, errors.New("the plan has no segments to wire")
	}
	return spec, nil
}

// wireAsTheyCome is a segmented lab's agent while the lab comes up. It
// starts before the nodes (a prestart sidecar): it fills the grader's
// tools and brings up the lab's switch while the engine starts the nodes,
// then wires and prepares each node's container as soon as it runs,
// several at once, rather than all of them after the last has started.
// Once every node is done it leaves the state, which labnet up -await is
// waiting for; if one cannot be, it leaves the reason beside it instead
// and tends the lab until it is stopped. A state already there (the agent
// restarted) is the lab wired before: nothing is done twice. It reports
// whether the lab is wired; when not, the lab has stopped.
func wireAsTheyCome(ctx context.Context, rt *docker.Runtime, tend func(), session, examID, alloc, plan, state string, tools toolsFill, wait time.Duration) (labnetState, bool, error) {
	var st labnetState
	if b, err := os.ReadFile(state); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			return st, false, fmt.Errorf("labnet watch %s: decode the state %s: %w", session, state, err)
		}
		return st, true, nil
	}
	spec, err := readPlan(session, plan)
	if err != nil {
		return st, false, fmt.Errorf("labnet watch %s: %w", session, err)
	}
	wired, err := wireNodes(ctx, rt, tend, spec, examID, alloc, tools, wait)
	if err != nil {
		if ctx.Err() != nil {
			return st, false, nil // the lab stopped while it came up
		}
		if lerr := os.WriteFile(state+failedSuffix, []byte(oneLine(err).Error()+"\n"), 0o600); lerr != nil {
			return st, false, fmt.Errorf("labnet watch %s: %w; and leaving why: %w", session, err, lerr)
		}
		fmt.Fprintln(os.Stderr, "examlab:", oneLine(fmt.Errorf("labnet watch %s: %w", session, err)))
		for tend(); sleepCtx(ctx, labnetEvery) == nil; {
			tend()
		}
		return st, false, nil
	}
	st = labnetState{Plan: spec, Containers: wired}
	if err := leaveFile(state, st); err != nil {
		return st, false, fmt.Errorf("labnet watch %s: leave the state: %w", session, err)
	}
	fmt.Printf("lab %s wired: %d nodes on %d segments, switch %s\n", session, len(spec.Nodes), len(spec.Segments), lab.SwitchName(session))
	return st, true, nil
}

// wireNodes fills the grader's tools, starts the switch, and wires and
// prepares every node of spec as its container comes to run, within wait.
// The nodes that came up since the last wiring are wired together, by one
// script in the switch, while those wired before are still being
// prepared. It returns the container it wired for each node.
func wireNodes(ctx context.Context, rt *docker.Runtime, tend func(), spec lab.Spec, examID, alloc string, tools toolsFill, wait time.Duration) (map[string]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	labels := switchLabels(spec, examID)
	// Events of the work in flight: tools filled, a batch wired (with
	// what prepares it), a batch prepared.
	type event struct {
		batch   []string
		prepare func(context.Context) error
		wired   bool
		err     error
		since   time.Time
	}
	events := make(chan event, 2*len(spec.Nodes)+1)
	pending := len(spec.Nodes)
	if tools.name != "" {
		pending++
		go func() {
			events <- event{err: graderTools(ctx, rt, spec.SessionID, tools.name, tools.busybox, tools.holder)}
		}()
	}
	if err := rt.StartSwitch(ctx, spec.SessionID, labels); err != nil {
		return nil, err
	}
	wired := make(map[string]string, len(spec.Nodes))
	var queue []string // running, not yet wired
	wiring := false
	deadline := time.Now().Add(wait)
	lastTend := time.Time{}
	tick := time.NewTicker(wirePoll)
	defer tick.Stop()
	for pending > 0 {
		if time.Since(lastTend) >= labnetEvery {
			// The nodes are held to their limits from their start.
			tend()
			lastTend = time.Now()
		}
		running, err := rt.RunningNodeContainers(ctx, spec.SessionID, alloc)
		if err != nil {
			return nil, err
		}
		var missing []string
		for _, n := range spec.Nodes {
			if _, ok := wired[n.Name]; ok {
				continue
			}
			id, ok := running[n.Name]
			if !ok {
				missing = append(missing, n.Name)
				continue
			}
			wired[n.Name] = id
			queue = append(queue, n.Name)
		}
		if len(missing) > 0 && time.Now().After(deadline) {
			return nil, fmt.Errorf("find node containers of %s: no running container for %s after %s", spec.SessionID, strings.Join(missing, ", "), wait)
		}
		for waiting := true; waiting && pending > 0; {
			if !wiring && len(queue) > 0 {
				batch := queue
				queue = nil
				wiring = true
				refs := make(map[string]string, len(batch))
				for _, n := range batch {
					refs[n] = wired[n]
				}
				go func() {
					since := time.Now()
					prepare, err := rt.WireNodes(ctx, spec, refs, labels)
					events <- event{batch: batch, prepare: prepare, wired: true, err: err, since: since}
				}()
			}
			select {
			case e := <-events:
				switch {
				case e.err != nil:
					return nil, e.err
				case e.wired:
					wiring = false
					go func() { events <- event{batch: e.batch, err: e.prepare(ctx), since: e.since} }()
				default:
					pending -= max(len(e.batch), 1)
					if len(e.batch) > 0 {
						fmt.Printf("%s: wired and prepared in %s\n", strings.Join(e.batch, " "), time.Since(e.since).Round(10*time.Millisecond))
					}
				}
			case <-tick.C:
				waiting = false
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return wired, nil
}

// awaitLab is a segmented lab's labnet-up beside an agent that wires the
// lab as it comes up (render 6): a poststart task, it ends once the agent
// has left the state, 0 when the lab is wired and prepared, else with the
// reason the agent left. The lab is ready only once it has exited 0.
func awaitLab(ctx context.Context, session, state string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		if b, err := os.ReadFile(state + failedSuffix); err == nil {
			return fmt.Errorf("labnet up %s: %s", session, strings.TrimSpace(string(b)))
		}
		if _, err := os.Stat(state); err == nil {
			fmt.Printf("lab %s wired\n", session)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("labnet up %s: the lab's agent did not wire it within %s", session, wait)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("labnet up %s: %w", session, err)
		}
	}
}
