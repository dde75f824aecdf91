package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
)

// labnetWait is how long `labnet down` waits for the lab's containers to
// leave the network (the poststop task runs as the nodes stop), and how
// long `labnet up -plan` waits for the nodes' containers to run.
const labnetWait = 2 * time.Minute

// labnetEvery is how often `labnet watch` looks for replaced nodes.
const labnetEvery = 2 * time.Second

// labnetState is what `labnet up -plan` leaves for `labnet watch` once it
// has wired the lab: the lab, and the container it wired for each node.
type labnetState struct {
	Plan       lab.Spec          `json:"plan"`
	Containers map[string]string `json:"containers"`
}

// labnet makes or removes a Nomad lab's network on the client it runs on.
// The session's job runs it as its lifecycle tasks:
//
//	examlab labnet up -session ID [-exam ID] [-subnet-pool CIDR] [-subnet-prefix N] [-grader-tools NAME [-grader-busybox PATH] [-grader-holder PATH]]
//	examlab labnet up -session ID [-exam ID] -plan FILE [-state FILE] [-alloc ID] [-wait 2m] [-grader-tools NAME [-grader-busybox PATH] [-grader-holder PATH]]
//	examlab labnet up -session ID -await FILE [-wait 2m]
//	examlab labnet watch -session ID [-state FILE] [-alloc ID] [-every 2s] [-thaw-after 30m]
//	examlab labnet watch -session ID [-exam ID] -plan FILE -state FILE [-alloc ID] [-wait 2m] [-grader-tools NAME [-grader-busybox PATH] [-grader-holder PATH]]
//	examlab labnet down -session ID [-wait 2m]
//	examlab labnet freeze|thaw|limit -session ID -alloc ID
//	examlab labnet capture|logs -session ID -alloc ID -node NAME
//
// Without -plan, up creates a flat lab's session network before the nodes
// start. With -plan (a segmented lab's spec, lab.Spec as JSON), it runs once
// the nodes run: it finds their containers, makes the lab's switch, wires
// them into their segments and prepares them (files, setup), then leaves
// what it did in the -state file. Watch, beside the nodes for the lab's
// life, waits for that file, then wires and prepares every node container
// that replaces one (a node restarted after a crash, or reset): Nomad
// starts it with no network, as it did the first. Today's jobs (render 6)
// give the plan to watch instead, which starts before the nodes, wires
// and prepares each as it comes to run and leaves the -state file, or,
// beside it in FILE.failed, why it could not; up -await, run once the
// nodes run, waits for either and ends 0 or with that reason (see
// wireAsTheyCome). Up -plan and watch -state remain for jobs registered
// before. With -grader-tools, up (or watch -plan)
// first makes and fills the volume of the grader's tools that the nodes
// mount, from this client's busybox and, when the volume is named for it,
// this examlab, the nodes' terminal holder (see graderTools). Down removes the
// network or the switch, whichever the lab has. A failure exits non-zero
// with a one-line reason on stderr: it is what `nomad alloc logs` shows,
// and what the runtime quotes.
//
// Freeze, thaw, capture and logs are what the Nomad runtime runs with
// alloc exec in the lab's labnet-watch task (see nomad.RunAgent): they
// pause and resume the lab's node containers, stream a node's changes,
// read from its writable layer on this client, to stdout, and stream a
// node's logs, which this client's engine keeps (Nomad collects none).
// Watch without -state (a flat lab's) has nothing to rewire and keeps the
// task running for them.
// Every watch also thaws a node it has seen frozen for longer than
// -thaw-after: the worker that froze it for a capture is gone; and holds
// every node container, the first and each that replaces one, to the cpus
// its examlab.cpu-limit label names (limit does that once), since the
// docker driver's own hard limit would be what the node reserves.
func labnet(ctx context.Context, args []string) error {
	if len(args) > 0 && nomad.AgentVerb(args[0]) {
		agent, err := nomad.NewLabAgent(nomad.AgentOptions{DockerHost: os.Getenv("DOCKER_HOST")})
		if err != nil {
			return err
		}
		if err := nomad.RunAgent(ctx, agent, args, os.Stdin, os.Stdout, os.Stderr); err != nil {
			return agentError{err: oneLine(err), code: nomad.AgentExitCode(err)}
		}
		return nil
	}
	if len(args) == 0 || (args[0] != "up" && args[0] != "down" && args[0] != "watch") {
		fmt.Fprintln(os.Stderr, "usage: examlab labnet up|watch|down|freeze|thaw|limit|capture|logs -session ID [flags]")
		return flag.ErrHelp
	}
	verb := args[0]
	def := config.Default()
	fs := flag.NewFlagSet("labnet "+verb, flag.ContinueOnError)
	session := fs.String("session", "", "session id (required)")
	examID := fs.String("exam", "", "exam id, kept as a label on the network or switch (up)")
	pool := fs.String("subnet-pool", def.SubnetPool, "pool a flat lab's subnet is carved from (up)")
	prefix := fs.Int("subnet-prefix", def.SubnetPrefix, "prefix length of a flat lab's subnet (up)")
	plan := fs.String("plan", "", "a segmented lab's spec, as JSON: wire and prepare its running nodes (up, watch)")
	state := fs.String("state", "", "where up -plan or watch -plan leaves what it wired (and watch -plan, beside it in FILE.failed, why it could not)")
	await := fs.String("await", "", "the state file watch -plan leaves: wait for it, and fail with the reason it leaves instead (up)")
	alloc := fs.String("alloc", os.Getenv("NOMAD_ALLOC_ID"), "the allocation whose node containers to wire (up -plan, watch; default: NOMAD_ALLOC_ID)")
	wait := fs.Duration("wait", labnetWait, "how long to wait for the nodes' containers to run (up -plan, watch -plan), for the lab to be wired (up -await) or for the containers to leave the network (down)")
	every := fs.Duration("every", labnetEvery, "how often to look for replaced node containers (watch)")
	thawAfter := fs.Duration("thaw-after", nomad.DefaultThawAfter, "thaw a node frozen for longer than this: its capture's worker is gone (watch)")
	host := fs.String("docker-host", os.Getenv("DOCKER_HOST"), "Docker Engine API address (default: DOCKER_HOST, else the local socket)")
	tools := fs.String("grader-tools", "", "the grader's tools volume the nodes mount: make and fill it from -grader-busybox and, when it is named for it, -grader-holder (up, watch -plan)")
	busybox := fs.String("grader-busybox", def.GraderBusybox, "the static busybox on this client the grader's tools come from (up, watch -plan)")
	holder := fs.String("grader-holder", selfBinary, "the static examlab the grader's tools carry as the nodes' terminal holder, when the job's volume is named for it; default this very binary (up, watch -plan)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *session == "" {
		return errors.New("labnet: -session is required")
	}
	rt, err := docker.New(docker.Options{Host: *host, SubnetPool: *pool, SubnetPrefix: *prefix, GraderBusybox: *busybox, Holder: *holder})
	if err != nil {
		return err
	}
	if *await != "" {
		if verb != "up" || *plan != "" {
			return errors.New("labnet: -await is for up, without -plan")
		}
		return oneLine(awaitLab(ctx, *session, *await, *wait))
	}
	if verb == "up" && *tools != "" {
		if err := graderTools(ctx, rt, *session, *tools, *busybox, *holder); err != nil {
			return oneLine(err)
		}
	}
	switch {
	case verb == "watch":
		agent, err := nomad.NewLabAgent(nomad.AgentOptions{DockerHost: *host})
		if err != nil {
			return err
		}
		guard := agent.NewFreezeGuard(*session, *alloc, *thawAfter)
		tend := func() {
			holdLimits(ctx, agent, *session, *alloc)
			guardLab(ctx, guard, *session)
		}
		if *plan != "" {
			if *state == "" {
				return errors.New("labnet watch: -plan needs -state, where labnet up -await looks")
			}
			st, wired, err := wireAsTheyCome(ctx, rt, tend, *session, *examID, *alloc, *plan, *state, toolsFill{name: *tools, busybox: *busybox, holder: *holder}, *wait)
			if err != nil || !wired {
				return oneLine(err)
			}
			return oneLine(rewireLab(ctx, rt, tend, *session, *alloc, st, *every))
		}
		if *state == "" {
			// A flat lab's: Nomad restarts its nodes on their network, so
			// there is nothing to rewire; the task is there for the agent
			// verbs, run beside it, its guard and the nodes' limits.
			fmt.Printf("lab %s: ready for freeze, thaw and capture\n", *session)
			for tend(); sleepCtx(ctx, *every) == nil; {
				tend()
			}
			return nil
		}
		return oneLine(watchLab(ctx, rt, tend, *session, *alloc, *state, *every))
	case verb == "up" && *plan != "":
		return oneLine(wireLab(ctx, rt, *session, *examID, *alloc, *plan, *state, *wait))
	case verb == "up":
		n, err := rt.LabnetUp(ctx, *session, *examID)
		if err != nil {
			return err
		}
		fmt.Printf("network %s (%s) subnet %s\n", n.Name, n.ID[:12], n.Subnet)
		return nil
	}
	// A lab has a network or a switch, never both; down removes either.
	if err := errors.Join(rt.RemoveSwitch(ctx, *session), rt.LabnetDown(ctx, *session, *wait)); err != nil {
		return oneLine(err)
	}
	fmt.Printf("network of session %s removed\n", *session)
	return nil
}

// graderTools makes and fills the volume of the grader's tools the lab's
// nodes mount, from this client's busybox and, when the job's volume is
// named for it, this very examlab (holder, /proc/self/exe unless told),
// which the relay runs in the nodes as the terminal holder: a shell there
// outlives a relay restart. A job rendered before the holder joined the
// tools names the volume of busybox alone, and gets that. Any other name
// is refused: the client would give the nodes a volume whose content its
// name does not say. A flat lab's labnet-up runs before the nodes start; a
// segmented lab's agent while they start, when the engine has made the
// volume empty for them, and the nodes see it filled before the lab is
// ready.
func graderTools(ctx context.Context, rt *docker.Runtime, session, want, busybox, holder string) error {
	names, err := rt.FillGraderTools(ctx, want)
	switch {
	case errors.Is(err, docker.ErrNoBusybox):
		return fmt.Errorf("labnet up %s: no grader busybox at %s on this client (install busybox-static)", session, busybox)
	case errors.Is(err, docker.ErrToolsMismatch) && names.With == "":
		return fmt.Errorf("labnet up %s: the job mounts the tools volume %s; this client's busybox %s makes %s, and its examlab %s cannot join it (%v): install the same busybox-static and static examlab build (make build) on every client and the platform",
			session, want, busybox, names.Bare, holder, names.NoHolder)
	case errors.Is(err, docker.ErrToolsMismatch):
		return fmt.Errorf("labnet up %s: the job mounts the tools volume %s; this client's busybox %s and examlab make %s (%s with busybox alone): install the same busybox-static and examlab build on every client and the platform",
			session, want, busybox, names.With, names.Bare)
	case err != nil:
		return fmt.Errorf("labnet up %s: %w", session, err)
	case want == names.With:
		fmt.Printf("grader's tools in volume %s, with the terminal holder\n", want)
	default:
		fmt.Printf("grader's tools in volume %s, without the terminal holder: the job's shells end when the relay restarts\n", want)
	}
	return nil
}

// wireLab wires and prepares the running nodes of the segmented lab whose
// spec is in the file plan, and leaves what it did in the file state, if
// one is named.
func wireLab(ctx context.Context, rt *docker.Runtime, session, examID, alloc, plan, state string, wait time.Duration) error {
	spec, err := readPlan(session, plan)
	if err != nil {
		return fmt.Errorf("labnet up %s: %w", session, err)
	}
	names := make([]string, len(spec.Nodes))
	for i, n := range spec.Nodes {
		names[i] = n.Name
	}
	nodes, err := rt.NodeContainers(ctx, session, alloc, names, wait)
	if err != nil {
		return fmt.Errorf("labnet up %s: %w", session, err)
	}
	if err := rt.PrepareLab(ctx, spec, nodes, switchLabels(spec, examID)); err != nil {
		return fmt.Errorf("labnet up %s: %w", session, err)
	}
	fmt.Printf("lab %s wired: %d nodes on %d segments, switch %s\n", session, len(spec.Nodes), len(spec.Segments), lab.SwitchName(session))
	if state == "" {
		return nil
	}
	if err := leaveFile(state, labnetState{Plan: spec, Containers: nodes}); err != nil {
		return fmt.Errorf("labnet up %s: leave the state: %w", session, err)
	}
	return nil
}

// leaveFile writes v as JSON to path, whole or not at all: whoever waits
// for the file starts on its appearance.
func leaveFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// switchLabels are the labels of a Nomad lab's switch. Not
// examlab.managed: that marks what the one-host runtime owns and reaps,
// and this switch is the Nomad lab's.
func switchLabels(spec lab.Spec, examID string) map[string]string {
	if examID == "" {
		examID = spec.ExamID
	}
	return map[string]string{
		lab.LabelSession:      spec.SessionID,
		lab.LabelExam:         examID,
		jobspecs.LabelRuntime: "nomad",
	}
}

// watchLab waits for the state `labnet up -plan` leaves, then, every
// interval until ctx ends, wires and prepares each node container that has
// replaced the one wired before. A node that cannot be wired is reported
// on stderr and left alone until its container is replaced again: its
// setup is never run twice in one container.
func watchLab(ctx context.Context, rt *docker.Runtime, tend func(), session, alloc, state string, every time.Duration) error {
	var st labnetState
	for {
		// The nodes run, and are held to their limits, while labnet-up
		// wires them.
		tend()
		b, err := os.ReadFile(state)
		if err == nil {
			if err := json.Unmarshal(b, &st); err != nil {
				return fmt.Errorf("labnet watch %s: decode the state %s: %w", session, state, err)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("labnet watch %s: %w", session, err)
		}
		if sleepCtx(ctx, every) != nil {
			return nil // the lab stopped before it was wired
		}
	}
	return rewireLab(ctx, rt, tend, session, alloc, st, every)
}

// rewireLab is a segmented lab's agent once the lab is wired: every
// interval until ctx ends, it wires and prepares each node container that
// has replaced the one st holds.
func rewireLab(ctx context.Context, rt *docker.Runtime, tend func(), session, alloc string, st labnetState, every time.Duration) error {
	if st.Plan.SessionID != session {
		return fmt.Errorf("labnet watch %s: the state is session %q's", session, st.Plan.SessionID)
	}
	fmt.Printf("watching the %d nodes of lab %s\n", len(st.Plan.Nodes), session)
	known := st.Containers
	for sleepCtx(ctx, every) == nil {
		tend()
		running, err := rt.RunningNodeContainers(ctx, session, alloc)
		if err != nil {
			fmt.Fprintln(os.Stderr, "examlab:", oneLine(fmt.Errorf("labnet watch %s: %w", session, err)))
			continue
		}
		for _, n := range st.Plan.Nodes {
			id, ok := running[n.Name]
			if !ok || id == known[n.Name] {
				continue
			}
			known[n.Name] = id
			err := rt.PrepareLab(ctx, st.Plan, map[string]string{n.Name: id}, switchLabels(st.Plan, ""))
			if err != nil {
				fmt.Fprintln(os.Stderr, "examlab:", oneLine(fmt.Errorf("labnet watch %s: %w", session, err)))
				continue
			}
			fmt.Printf("node %s: container %.12s wired\n", n.Name, id)
		}
	}
	return nil
}

// holdLimits holds the lab's nodes to their CPU limits, and says which it
// set (a node just started or replaced).
func holdLimits(ctx context.Context, agent *nomad.LabAgent, session, alloc string) {
	set, err := agent.HoldLimits(ctx, session, alloc)
	if len(set) > 0 {
		fmt.Printf("cpu limits set on %s\n", strings.Join(set, " "))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "examlab:", oneLine(fmt.Errorf("labnet watch %s: %w", session, err)))
	}
}

// guardLab thaws the lab's nodes frozen for too long, and says so.
func guardLab(ctx context.Context, guard *nomad.FreezeGuard, session string) {
	thawed, err := guard.Check(ctx, time.Now())
	if len(thawed) > 0 {
		fmt.Fprintf(os.Stderr, "examlab: labnet watch %s: thawed %s, frozen too long: the capture that froze them never ended\n", session, strings.Join(thawed, " "))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "examlab:", oneLine(fmt.Errorf("labnet watch %s: %w", session, err)))
	}
}

// agentError carries an agent verb's exit status (see nomad.AgentExitCode).
type agentError struct {
	err  error
	code int
}

func (e agentError) Error() string { return e.err.Error() }
func (e agentError) ExitCode() int { return e.code }

// sleepCtx waits d, or until ctx ends, which it reports.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// oneLine puts an error on one line: a joined error or a setup's output
// has several, and an operator reading the task's log (or the runtime
// quoting its last line) must see all of the reason together.
func oneLine(err error) error {
	if err == nil {
		return nil
	}
	lines := strings.FieldsFunc(err.Error(), func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return errors.New(strings.Join(lines, " | "))
}
