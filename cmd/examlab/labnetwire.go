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
const wirePoll = 200 * time.Millisecond

// wireParallel bounds the nodes watch -plan prepares at once.
const wireParallel = 4

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
func wireAsTheyCome(ctx context.Context, rt *docker.Runtime, tend func(), session, examID, alloc, plan, state, tools, busybox string, wait time.Duration) (labnetState, bool, error) {
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
	wired, err := wireNodes(ctx, rt, tend, spec, examID, alloc, tools, busybox, wait)
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
// It returns the container it wired for each node.
func wireNodes(ctx context.Context, rt *docker.Runtime, tend func(), spec lab.Spec, examID, alloc, tools, busybox string, wait time.Duration) (map[string]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	labels := switchLabels(spec, examID)
	type done struct {
		node string
		err  error
	}
	results := make(chan done, len(spec.Nodes)+1)
	pending := len(spec.Nodes)
	if tools != "" {
		pending++
		go func() { results <- done{err: graderTools(ctx, rt, spec.SessionID, tools, busybox)} }()
	}
	if err := rt.StartSwitch(ctx, spec.SessionID, labels); err != nil {
		return nil, err
	}
	sem := make(chan struct{}, wireParallel)
	wired := make(map[string]string, len(spec.Nodes))
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
			go func() {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					results <- done{node: n.Name, err: ctx.Err()}
					return
				}
				defer func() { <-sem }()
				results <- done{node: n.Name, err: rt.PrepareLab(ctx, spec, map[string]string{n.Name: id}, labels)}
			}()
		}
		if len(missing) > 0 && time.Now().After(deadline) {
			return nil, fmt.Errorf("find node containers of %s: no running container for %s after %s", spec.SessionID, strings.Join(missing, ", "), wait)
		}
		for waiting := true; waiting && pending > 0; {
			select {
			case r := <-results:
				if r.err != nil {
					return nil, r.err
				}
				if r.node != "" {
					fmt.Printf("node %s: container %.12s wired\n", r.node, wired[r.node])
				}
				pending--
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
