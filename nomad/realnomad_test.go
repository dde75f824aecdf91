package nomad_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/testlab"
)

// skipWithoutNomad is the message the real-cluster tests skip with.
const skipWithoutNomad = "NOMAD_ADDR is not set: these tests need a real Nomad agent with the docker and raw_exec " +
	"drivers and the lab image on its client. Start one with `sudo nomad agent -config nomad/agent/dev.hcl`, build " +
	"examlab where its client can run it, then run: NOMAD_ADDR=http://127.0.0.1:4646 " +
	"EXAMLAB_NOMAD_LABNET=$PWD/bin/examlab go test ./nomad -run Real (see nomad/README.md)"

// realRuntime returns a runtime on the cluster NOMAD_ADDR names, or skips.
// The Nomad client reads NOMAD_ADDR, NOMAD_TOKEN and the rest itself;
// EXAMLAB_NOMAD_LABNET and EXAMLAB_NOMAD_DATACENTERS are what the platform
// would read from its config.
func realRuntime(t testing.TB) (*nomad.Runtime, *api.Client) {
	t.Helper()
	if os.Getenv("NOMAD_ADDR") == "" {
		t.Skip(skipWithoutNomad)
	}
	requireDocker(t)
	tools := realTools(t)
	opts := jobspecs.NomadOptions{Labnet: os.Getenv("EXAMLAB_NOMAD_LABNET"), GraderTools: tools.Name()}
	if dcs := os.Getenv("EXAMLAB_NOMAD_DATACENTERS"); dcs != "" {
		opts.Datacenters = strings.Split(dcs, ",")
	}
	rt, err := nomad.New(nomad.Options{Job: opts})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.Ping(ctx); err != nil {
		t.Fatalf("NOMAD_ADDR=%s is set but the cluster does not answer: %v", os.Getenv("NOMAD_ADDR"), err)
	}
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return rt, client
}

// realTools names the grader's tools as the platform would, after this
// host's busybox and the examlab the client runs, which are the client's
// (this host is the client): with the terminal holder when that examlab is
// a static build (make build).
func realTools(t testing.TB) docker.ToolsNames {
	t.Helper()
	labnet := os.Getenv("EXAMLAB_NOMAD_LABNET")
	if labnet == "" {
		labnet = jobspecs.DefaultNomadLabnet
	}
	names, err := docker.ToolsNamesFor(docker.DefaultGraderBusybox, labnet)
	if err != nil || names.Bare == "" {
		t.Fatalf("these tests need %s (Debian's busybox-static) for the grader's tools: %v", docker.DefaultGraderBusybox, err)
	}
	return names
}

// TestRealNomadLifecycle is the full flow against a real Nomad agent: login,
// start, all eight running, exec hostname in tokyo, ping a peer by name,
// another session unreachable, submit, tars and manifest, job purged.
func TestRealNomadLifecycle(t *testing.T) {
	rt, client := realRuntime(t)
	lifecycle(t, rt, func(t *testing.T, jobID string) {
		_, _, err := client.Jobs().Info(jobID, nil)
		if err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("job %s after submit: err = %v, want 404 (purged)", jobID, err)
		} else {
			t.Logf("job %s purged", jobID)
		}
	})
}

// TestRealNomadLab runs the runtime contract suite (lab/labtest) against a
// real Nomad agent whose client runs on this host's engine.
func TestRealNomadLab(t *testing.T) {
	rt, client := realRuntime(t)
	eng := testlab.NewEngine(t)
	labtest.Run(t, labtest.Harness{
		Runtime: rt,
		Inventory: func(t testing.TB, sessionID string) labtest.Inventory {
			inv := engineInventory(t, eng, sessionID)
			job, _, err := client.Jobs().Info(jobspecs.JobName(sessionID), nil)
			switch {
			case err == nil:
				inv.Others = append(inv.Others, "job "+*job.ID)
			case !strings.Contains(err.Error(), "404"):
				t.Fatalf("look up job of %s: %v", sessionID, err)
			}
			return inv
		},
		Crash: func(t testing.TB, sessionID, node string) {
			for _, c := range eng.Containers(t, sessionID) {
				if c.Labels[lab.LabelNode] == node && c.State == "running" {
					eng.Stop(t, c.ID)
				}
			}
			// The client restarts the task after the job's restart delay;
			// return once the cluster has seen it die.
			waitNotRunning(t, rt, sessionID, node)
		},
		Network:     true,
		Containers:  true,
		NotExported: []string{"dev", "secrets", "alloc", "local"},
	})
}

// waitNotRunning waits until the runtime no longer reports node running.
func waitNotRunning(t testing.TB, rt *nomad.Runtime, sessionID, node string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: sessionID})
	if err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		st, err := rt.Status(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st {
			if n.Name == node && n.State != lab.StateRunning {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the cluster still runs %s after its container was stopped", node)
}

// crashRewireTimeout bounds how long a crashed node of a segmented lab
// takes to be back and wired: the job's restart delay, labnet-watch's
// interval and the wiring.
const crashRewireTimeout = time.Minute

// TestRealNomadSegmentedLab runs the three-segment lab on a real Nomad
// agent: its labnet-up (EXAMLAB_NOMAD_LABNET) wires the nodes on the client
// from the job's plan, labnet-watch wires a node Nomad restarts (reset, or
// after a crash), and labnet-down removes the switch.
func TestRealNomadSegmentedLab(t *testing.T) {
	rt, _ := realRuntime(t)
	eng := testlab.NewEngine(t)
	spec := segmentedLab(t, rt, nil)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	start := time.Now()
	if err := rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Logf("lab %s wired and ready in %s", spec.SessionID, time.Since(start).Round(time.Millisecond))
	checkSegmentedLab(t, rt, spec)
	t.Run("every node has the grader's tools, read-only", func(t *testing.T) { checkGraderTools(t, rt, spec) })
	t.Run("a reset node is wired and prepared again", func(t *testing.T) { checkSegmentedReset(t, rt, spec) })
	t.Run("a node Nomad restarts after a crash is wired again", func(t *testing.T) {
		for _, c := range eng.Containers(t, spec.SessionID) {
			if c.Labels[lab.LabelNode] == "osaka" && c.State == "running" {
				eng.Stop(t, c.ID)
			}
		}
		// The client restarts the task after the job's restart delay, and
		// labnet-watch wires the fresh container.
		start := time.Now()
		for {
			out, code, err := lab.Output(ctx, rt, spec.SessionID, "tokyo", "ping", "-c1", "-W1", "osaka")
			if err == nil && code == 0 {
				t.Logf("osaka back and reachable %s after its crash", time.Since(start).Round(time.Second))
				break
			}
			if time.Since(start) > crashRewireTimeout {
				t.Fatalf("tokyo cannot ping osaka %s after its crash: exit %d %v\n%s", crashRewireTimeout, code, err, out)
			}
			time.Sleep(time.Second)
		}
	})
	if err := rt.Destroy(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	// The switch carries the session's label like the nodes; nothing of
	// the lab may be left on the client.
	if left := eng.Containers(t, spec.SessionID); len(left) > 0 {
		t.Errorf("destroy left %s", testlab.Summary(left))
	}
}

// TestRealNomadSegmentedSetupFailure makes osaka's setup fail on a real
// agent: the provision error names the node and quotes the setup, read
// from labnet-up's stderr through the alloc fs API.
func TestRealNomadSegmentedSetupFailure(t *testing.T) {
	rt, _ := realRuntime(t)
	spec := segmentedLab(t, rt, failingSetup)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	checkSetupFailure(t, rt.Provision(ctx, spec))
}

// TestRealNomadFlatGraderTools: a flat lab's nodes have the grader's tools
// too, filled by its prestart labnet-up before they start.
func TestRealNomadFlatGraderTools(t *testing.T) {
	rt, _ := realRuntime(t)
	spec := segmentedLab(t, rt, func(ex *exam.Exam) { *ex = *labtest.Flatten(ex) })
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	checkGraderTools(t, rt, spec)
}

// checkGraderTools runs the grader's busybox and its applets in every node
// of a lab, finds the terminal holder beside them when the client's
// examlab is a static build, and fails to write under /.examlab.
func checkGraderTools(t *testing.T, rt *nomad.Runtime, spec lab.Spec) {
	t.Helper()
	holder := realTools(t).With != ""
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	for _, n := range spec.Nodes {
		out, code, err := lab.Output(ctx, rt, spec.SessionID, n.Name, "/.examlab/busybox", "sh", "-c",
			"PATH=/.examlab/bin; ip -4 addr >/dev/null && echo tools; [ -x /.examlab/examlab ] && echo holder; "+
				"touch /.examlab/x 2>&1; rm -f /.examlab/bin/ip 2>&1")
		if err != nil || !strings.Contains(out, "tools") || strings.Count(out, "Read-only file system") != 2 || code == 0 {
			t.Errorf("%s: the grader's tools are missing or writable (exit %d, %v):\n%s", n.Name, code, err, out)
		}
		if strings.Contains(out, "holder") != holder {
			t.Errorf("%s: the terminal holder is there: %v, want %v (a static EXAMLAB_NOMAD_LABNET):\n%s", n.Name, !holder, holder, out)
		}
	}
}

// TestRealNomadCaptureChanges captures what a candidate changed on a real
// agent, on a flat and a segmented lab: EXAMLAB_NOMAD_LABNET's agent in
// labnet-watch freezes the lab, reads tokyo's writable layer on the client
// and thaws the lab, also when the capture's stream breaks.
func TestRealNomadCaptureChanges(t *testing.T) {
	rt, _ := realRuntime(t)
	for _, flat := range []bool{false, true} {
		name := "segmented"
		if flat {
			name = "flat"
		}
		t.Run(name, func(t *testing.T) {
			edit := func(*exam.Exam) {}
			if flat {
				edit = func(ex *exam.Exam) { *ex = *labtest.Flatten(ex) }
			}
			checkCaptureChanges(t, rt, segmentedLab(t, rt, edit), nil)
		})
	}
}
