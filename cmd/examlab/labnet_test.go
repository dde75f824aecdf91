package main

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// These tests run `examlab labnet` as a segmented Nomad lab's lifecycle
// tasks do on a client, with the node containers the client's docker
// driver would start made by testlab instead. They need the local Docker
// engine and the lab image (`make image`); their sessions start with "c".

// labnetTimeout bounds each labnet step.
const labnetTimeout = 2 * time.Minute

// twoNodes is a segmented lab: a and b on one segment; b's setup leaves a
// file, or with fail set exits 3.
func twoNodes(t *testing.T, fail bool) lab.Spec {
	t.Helper()
	setup := "echo prepared > /root/b-ready"
	if fail {
		setup = "echo 'no licence' >&2; exit 3"
	}
	ex, err := exam.Parse([]byte(`
id: two-nodes
title: Two nodes
duration: 30m
tasks: [{id: t1, title: Ping, kind: text, prompt: Ping b from a.}]
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 64, cpus: 0.25, pids: 64}
    capabilities: [NET_RAW]
  networks: [{name: lan, subnet: 10.1.0.0/24}]
  nodes:
    - name: a
      role: branch
      interfaces: [{network: lan, address: 10.1.0.1/24}]
    - name: b
      role: branch
      interfaces: [{network: lan, address: 10.1.0.2/24}]
      setup: "` + setup + `"
`))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 11)
	rand.Read(b)
	id := "c"
	for _, c := range b {
		id += string("abcdefghijklmnopqrstuvwxyz0123456789"[int(c)%36])
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// client plays the Nomad client of the lab's job: it starts each node task
// as the docker driver would, in allocation alloc, and writes the plan
// where labnet-up's template would. It returns the plan's path.
func client(t *testing.T, eng *testlab.Engine, spec lab.Spec, alloc string) string {
	t.Helper()
	return clientWith(t, eng, spec, alloc, jobspecs.NomadOptions{})
}

// clientWith is client for the job rendered with opts.
func clientWith(t *testing.T, eng *testlab.Engine, spec lab.Spec, alloc string, opts jobspecs.NomadOptions) string {
	t.Helper()
	startNodes(t, eng, spec, alloc, opts)
	return planFile(t, eng, spec)
}

// startNodes starts each node task of the job rendered with opts as the
// docker driver would, in allocation alloc.
func startNodes(t *testing.T, eng *testlab.Engine, spec lab.Spec, alloc string, opts jobspecs.NomadOptions) {
	t.Helper()
	job, err := jobspecs.NomadJob(spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range job.TaskGroups[0].Tasks {
		if task.Lifecycle == nil {
			// Named as the runtime's exec finds a node, not as Nomad names it.
			eng.NomadTask(t, lab.ContainerName(spec.SessionID, task.Name), task, alloc)
		}
	}
}

// planFile writes the plan where the lab's template would and returns its
// path; the lab's labnet down runs when the test ends.
func planFile(t *testing.T, eng *testlab.Engine, spec lab.Spec) string {
	t.Helper()
	plan, err := jobspecs.Plan(spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "lab.json")
	if err := os.WriteFile(path, plan, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
		defer cancel()
		if err := labnet(ctx, []string{"down", "-session", spec.SessionID, "-wait", "1s"}); err != nil {
			t.Errorf("labnet down: %v", err)
		}
		for _, c := range eng.Containers(t, spec.SessionID) {
			if c.Labels[lab.LabelPart] == lab.PartSwitch {
				t.Errorf("labnet down left the switch %v", c.Names)
			}
		}
	})
	return path
}

// run runs a script in a node's container.
func run(t *testing.T, eng *testlab.Engine, spec lab.Spec, node, script string) (string, int) {
	t.Helper()
	return eng.Exec(t, lab.ContainerName(spec.SessionID, node), "sh", "-c", script)
}

// TestLabnetWiresAndRewiresANomadLab runs labnet up -plan on a client's
// node containers, then labnet watch while a node's container is replaced,
// as Nomad replaces it on a reset or after a crash.
func TestLabnetWiresAndRewiresANomadLab(t *testing.T) {
	eng := testlab.NewEngine(t)
	spec := twoNodes(t, false)
	const alloc = "alloc-1"
	plan := client(t, eng, spec, alloc)
	state := filepath.Join(t.TempDir(), "labnet.json")
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()

	if err := labnet(ctx, []string{"up", "-session", spec.SessionID, "-plan", plan, "-state", state, "-alloc", alloc, "-wait", "30s"}); err != nil {
		t.Fatalf("labnet up: %v", err)
	}
	if out, code := run(t, eng, spec, "a", "ping -c1 -W2 b && "+lab.ReadyCheck(spec.Nodes[0])); code != 0 {
		t.Fatalf("a is not wired or cannot ping b (exit %d):\n%s", code, out)
	}
	if out, code := run(t, eng, spec, "b", "cat /root/b-ready && "+lab.ReadyCheck(spec.Nodes[1])); code != 0 || !strings.HasPrefix(out, "prepared") {
		t.Fatalf("b's setup did not run (exit %d):\n%s", code, out)
	}
	var sw int
	for _, c := range eng.Containers(t, spec.SessionID) {
		if c.Labels[lab.LabelPart] == lab.PartSwitch {
			sw++
			if c.Labels[lab.LabelManaged] != "" || c.Labels[jobspecs.LabelRuntime] != "nomad" {
				t.Errorf("switch labels %v: want runtime nomad and no %s", c.Labels, lab.LabelManaged)
			}
		}
	}
	if sw != 1 {
		t.Errorf("%d switches, want 1", sw)
	}

	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- labnet(wctx, []string{"watch", "-session", spec.SessionID, "-state", state, "-alloc", alloc, "-every", "200ms"})
	}()
	replaceB(t, eng, spec, alloc)
	if out, code := run(t, eng, spec, "a", "ping -c1 -W2 b"); code != 0 {
		t.Errorf("a cannot ping b's new container (exit %d):\n%s", code, out)
	}
	stop()
	if err := <-watched; err != nil {
		t.Errorf("labnet watch ended with %v, want nil once stopped", err)
	}
}

// TestLabnetUpNamesTheFailingNode: a failing setup fails labnet up with
// one line naming the node and quoting the setup.
func TestLabnetUpNamesTheFailingNode(t *testing.T) {
	eng := testlab.NewEngine(t)
	spec := twoNodes(t, true)
	plan := client(t, eng, spec, "alloc-2")
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()
	err := labnet(ctx, []string{"up", "-session", spec.SessionID, "-plan", plan, "-alloc", "alloc-2", "-wait", "30s"})
	if err == nil {
		t.Fatal("labnet up succeeded with a failing setup")
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "node b: setup exited 3: no licence") {
		t.Errorf("labnet up: %q, want one line naming b and quoting its setup", msg)
	}
}

// TestLabnetFillsTheGradersTools: a segmented lab's nodes start with the
// tools volume the job names, which the engine makes empty; labnet up
// fills it from the client's busybox before it wires the lab, and refuses
// a job naming the volume of another busybox.
func TestLabnetFillsTheGradersTools(t *testing.T) {
	eng := testlab.NewEngine(t)
	tools, err := docker.ToolsVolumeFor(docker.DefaultGraderBusybox)
	if err != nil || tools == "" {
		t.Fatalf("this test needs %s (busybox-static): %v", docker.DefaultGraderBusybox, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()

	spec := twoNodes(t, false)
	const alloc = "alloc-tools"
	plan := clientWith(t, eng, spec, alloc, jobspecs.NomadOptions{GraderTools: tools})
	other := "examlab-grader-000000000000"
	err = labnet(ctx, []string{"up", "-session", spec.SessionID, "-plan", plan, "-alloc", alloc, "-wait", "30s", "-grader-tools", other})
	if err == nil || !strings.Contains(err.Error(), other) {
		t.Errorf("labnet up with another busybox's volume = %v, want a refusal naming it", err)
	}
	if err := labnet(ctx, []string{"up", "-session", spec.SessionID, "-plan", plan, "-alloc", alloc, "-wait", "30s", "-grader-tools", tools}); err != nil {
		t.Fatalf("labnet up: %v", err)
	}
	for _, node := range []string{"a", "b"} {
		out, code := run(t, eng, spec, node, "/.examlab/busybox sh -c 'PATH=/.examlab/bin; ip route >/dev/null && echo tools' && touch /.examlab/x")
		if !strings.Contains(out, "tools") || code == 0 {
			t.Errorf("%s: the grader's tools are not there, or not read-only (exit %d):\n%s", node, code, out)
		}
	}
}

// TestLabnetWatchWiresNodesAsTheyStart runs a segmented lab as today's
// jobs do: labnet watch -plan starts before any node, the nodes start
// one by one, and labnet up -await ends once the agent has wired and
// prepared them all.
func TestLabnetWatchWiresNodesAsTheyStart(t *testing.T) {
	eng := testlab.NewEngine(t)
	spec := twoNodes(t, false)
	const alloc = "alloc-6"
	plan := planFile(t, eng, spec)
	state := filepath.Join(t.TempDir(), "labnet.json")
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()

	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- labnet(wctx, []string{"watch", "-session", spec.SessionID, "-exam", spec.ExamID, "-plan", plan, "-state", state, "-alloc", alloc, "-wait", "60s", "-every", "200ms"})
	}()
	defer func() {
		stop()
		if err := <-watched; err != nil {
			t.Errorf("labnet watch ended with %v, want nil once stopped", err)
		}
	}()
	// The switch comes up before any node does.
	deadline := time.Now().Add(30 * time.Second)
	for !hasSwitch(t, eng, spec) {
		if time.Now().After(deadline) {
			t.Fatal("labnet watch -plan made no switch before the nodes started")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(state); err == nil {
		t.Fatal("the state was left before any node ran")
	}
	startNodes(t, eng, spec, alloc, jobspecs.NomadOptions{})
	if err := labnet(ctx, []string{"up", "-session", spec.SessionID, "-await", state, "-wait", "60s"}); err != nil {
		t.Fatalf("labnet up -await: %v", err)
	}
	if out, code := run(t, eng, spec, "a", "ping -c1 -W2 b && "+lab.ReadyCheck(spec.Nodes[0])); code != 0 {
		t.Fatalf("a is not wired or cannot ping b (exit %d):\n%s", code, out)
	}
	if out, code := run(t, eng, spec, "b", "cat /root/b-ready && "+lab.ReadyCheck(spec.Nodes[1])); code != 0 || !strings.HasPrefix(out, "prepared") {
		t.Fatalf("b's setup did not run (exit %d):\n%s", code, out)
	}
	if _, err := os.Stat(state + ".failed"); err == nil {
		t.Error("a wired lab left a failure beside its state")
	}

	// Past the start it is the agent that rewires a replaced node.
	replaceB(t, eng, spec, alloc)
}

// TestLabnetAwaitReportsTheAgentsFailure: a setup that fails in the
// agent's hands fails labnet up -await with one line naming the node and
// quoting the setup, as labnet up -plan did.
func TestLabnetAwaitReportsTheAgentsFailure(t *testing.T) {
	eng := testlab.NewEngine(t)
	spec := twoNodes(t, true)
	const alloc = "alloc-7"
	plan := planFile(t, eng, spec)
	state := filepath.Join(t.TempDir(), "labnet.json")
	ctx, cancel := context.WithTimeout(context.Background(), labnetTimeout)
	defer cancel()
	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- labnet(wctx, []string{"watch", "-session", spec.SessionID, "-plan", plan, "-state", state, "-alloc", alloc, "-wait", "60s"})
	}()
	startNodes(t, eng, spec, alloc, jobspecs.NomadOptions{})
	err := labnet(ctx, []string{"up", "-session", spec.SessionID, "-await", state, "-wait", "60s"})
	stop()
	if werr := <-watched; werr != nil {
		t.Errorf("labnet watch ended with %v, want nil: it tends the lab until stopped", werr)
	}
	if err == nil {
		t.Fatal("labnet up -await succeeded with a failing setup")
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "labnet up "+spec.SessionID+": node b: setup exited 3: no licence") {
		t.Errorf("labnet up -await: %q, want one line naming b and quoting its setup", msg)
	}
	if _, serr := os.Stat(state); serr == nil {
		t.Error("a failed lab left the state of a wired one")
	}
}

// TestLabnetAwaitGivesUp: with no agent to leave the state, up -await
// ends at its wait with a reason, not a hang.
func TestLabnetAwaitGivesUp(t *testing.T) {
	state := filepath.Join(t.TempDir(), "labnet.json")
	err := labnet(context.Background(), []string{"up", "-session", "cnothingthere", "-await", state, "-wait", "300ms"})
	if err == nil || !strings.Contains(err.Error(), "the lab's agent did not wire it within 300ms") {
		t.Errorf("labnet up -await with no agent: %v, want the reason it gave up", err)
	}
	if err := labnet(context.Background(), []string{"up", "-session", "cnothingthere", "-await", state, "-plan", state}); err == nil {
		t.Error("labnet up -await -plan was accepted")
	}
}

func hasSwitch(t *testing.T, eng *testlab.Engine, spec lab.Spec) bool {
	t.Helper()
	for _, c := range eng.Containers(t, spec.SessionID) {
		if c.Labels[lab.LabelPart] == lab.PartSwitch {
			return true
		}
	}
	return false
}

// replaceB replaces node b's container, as Nomad does on a reset or after
// a crash, and waits for the running labnet watch to wire and prepare the
// new one.
func replaceB(t *testing.T, eng *testlab.Engine, spec lab.Spec, alloc string) {
	t.Helper()
	job, err := jobspecs.NomadJob(spec, jobspecs.NomadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	name := lab.ContainerName(spec.SessionID, "b")
	eng.RemoveContainer(t, name)
	eng.NomadTask(t, name, job.TaskGroups[0].Tasks[1], alloc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, code := run(t, eng, spec, "b", lab.ReadyCheck(spec.Nodes[1])+" && cat /root/b-ready")
		if code == 0 && strings.HasPrefix(out, "prepared") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("labnet watch did not wire b's new container (exit %d):\n%s", code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
