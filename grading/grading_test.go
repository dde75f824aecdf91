package grading_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// These tests grade real labs on the Docker engine (DOCKER_HOST, else the
// local socket), with the lab image of `make image` and the grader's
// busybox of Debian's busybox-static (`make deps`). Their sessions' ids
// start with "t", like the docker package's, and their labs are destroyed
// when they end.

// Named timeouts.
const (
	provisionTimeout = 3 * time.Minute
	execTimeout      = 30 * time.Second
	// gradeTimeout bounds one grading of the shipped exam: its slowest
	// node's checks' timeouts added up, and more.
	gradeTimeout = 2 * time.Minute
)

func newRuntime(t testing.TB) *docker.Runtime {
	t.Helper()
	rt, err := docker.New(docker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.Ping(ctx); err != nil {
		t.Fatalf("these tests need a running Docker engine: %v", err)
	}
	return rt
}

func newSessionID(t testing.TB) string {
	t.Helper()
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[0] = 't'
	for i := 1; i < len(b); i++ {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// startLab provisions ex's lab for a new session, destroyed when the test
// ends.
func startLab(t testing.TB, rt *docker.Runtime, ex *exam.Exam) string {
	t.Helper()
	spec, err := lab.NewSpec(ex, lab.Session{ID: newSessionID(t), Candidate: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rt.Destroy(ctx, spec.SessionID); err != nil {
			t.Errorf("destroy %s: %v", spec.SessionID, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return spec.SessionID
}

// candidate runs cmd in node with the node's own tools, as the candidate's
// terminal would, and fails the test unless it exits 0.
func candidate(t testing.TB, rt lab.Runner, sid, node string, cmd ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	out, code, err := lab.Output(ctx, rt, sid, node, cmd...)
	if err != nil || code != 0 {
		t.Fatalf("%s: %q: exit %d, %v\n%s", node, cmd, code, err, out)
	}
	return out
}

func gradeLab(t testing.TB, rt grading.Runner, ex *exam.Exam, sid string, opts grading.Options) *grading.Results {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), gradeTimeout)
	defer cancel()
	res, err := grading.Grade(ctx, rt, ex, sid, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// summary lists every check's outcome for a failure message.
func summary(res *grading.Results) string {
	var b strings.Builder
	for _, tr := range res.Tasks {
		for _, c := range tr.Checks {
			b.WriteString("  " + tr.ID + " / " + c.Name + ": ")
			if c.Passed {
				b.WriteString("passed")
			} else {
				b.WriteString("failed")
			}
			fmt.Fprintf(&b, " exit %d %s output %q\n", c.ExitCode, c.Error, strings.TrimSpace(c.Output))
		}
	}
	return b.String()
}

// solveShippedExam does what a candidate who knows the answers of t3, t4
// and t6 does, with the node's own tools.
func solveShippedExam(t testing.TB, rt lab.Runner, sid string) {
	t.Helper()
	candidate(t, rt, sid, "g1", "ip", "route", "add", "192.168.20.0/24", "via", "10.0.0.2")
	candidate(t, rt, sid, "g2", "ip", "route", "add", "192.168.10.0/24", "via", "10.0.0.1")
	candidate(t, rt, sid, "kyoto", "ip", "route", "replace", "default", "via", "192.168.30.1")
	candidate(t, rt, sid, "phoenix", "sh", "-c",
		`nohup sh -c 'while :; do echo "hello from phoenix" | nc -l -N 8080; done' >/dev/null 2>&1 &`)
	// The listener is up once the kernel lists it.
	for range 50 {
		if out := candidate(t, rt, sid, "phoenix", "cat", "/proc/net/tcp"); strings.Contains(out, ":1F90 ") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("phoenix's listener on 8080 never came up")
}

// TestShippedExam grades a fresh lab of the shipped exam, where every check
// fails, then the same lab after the candidate's right commands, where
// every check passes; t5 scores by the answer given.
func TestShippedExam(t *testing.T) {
	rt := newRuntime(t)
	ex := exam.Default()
	sid := startLab(t, rt, ex)
	t5, _ := ex.Task("t5-diagnosis")
	wrong := t5.Options[0]

	res := gradeLab(t, rt, ex, sid, grading.Options{Answers: map[string]string{"t5-diagnosis": wrong}})
	for _, tr := range res.Tasks {
		for _, c := range tr.Checks {
			if c.Passed || c.Error != "" {
				t.Errorf("on a fresh lab %s / %q passed %v (%s); want every check to run and fail:\n%s", tr.ID, c.Name, c.Passed, c.Error, summary(res))
			}
		}
	}
	if res.Score != 0 || res.MaxScore != 100 {
		t.Errorf("fresh lab with t5 wrong: %d of %d, want 0 of 100", res.Score, res.MaxScore)
	}

	solveShippedExam(t, rt, sid)
	start := time.Now()
	res = gradeLab(t, rt, ex, sid, grading.Options{Answers: map[string]string{"t5-diagnosis": t5.Correct, "t1-addressing": "a plan"}})
	t.Logf("the shipped exam's checks took %s on one lab", time.Since(start).Round(time.Millisecond))
	for _, tr := range res.Tasks {
		for _, c := range tr.Checks {
			if !c.Passed {
				t.Errorf("after the right commands %s / %q failed:\n%s", tr.ID, c.Name, summary(res))
			}
		}
	}
	want := map[string]int{"t1-addressing": 0, "t2-reachability": 0, "t3-routing": 25, "t4-service": 15, "t5-diagnosis": 10, "t6-troubleshooting": 30}
	for _, tr := range res.Tasks {
		if tr.Points != want[tr.ID] {
			t.Errorf("%s scored %d, want %d", tr.ID, tr.Points, want[tr.ID])
		}
	}
	if res.Score != 80 {
		t.Errorf("score %d, want 80: everything but the manually marked t1 and t2", res.Score)
	}
	if tr := task(t, res, "t1-addressing"); !tr.Manual || tr.Answer != "a plan" {
		t.Errorf("t1 = %+v, want left for manual marking with its answer", tr)
	}
}

// graderExam is a two-node flat lab whose checks use the tools a candidate
// would replace: sysctl, ping, cat and a shell. b's default TTL is 65, a's
// the kernel's 64; nothing answers at 192.0.2.1.
const graderExam = `
id: grader
title: Grader
duration: 30m
tasks:
  - id: t1
    title: TTL
    kind: command
    prompt: Make 65 the default TTL.
    checks:
      - {name: ttl on a, node: a, run: sysctl -n net.ipv4.ip_default_ttl, expect: {output: '^65$'}, points: 1}
      - {name: ttl on b, node: b, run: sysctl -n net.ipv4.ip_default_ttl, expect: {output: '^65$'}, points: 1}
  - id: t2
    title: Reach
    kind: command
    prompt: Reach.
    checks:
      - {name: a reaches b, node: a, run: ping -c1 -W2 b, points: 1, timeout: 5s}
      - {name: a reaches 192.0.2.1, node: a, run: ping -c1 -W1 192.0.2.1, points: 1}
  - id: t3
    title: Mark
    kind: command
    prompt: Leave a mark.
    checks:
      - {name: the mark, node: a, run: cat /root/mark, expect: {output: '^done$'}, points: 1}
      - {name: a shell test, node: b, run: 'test -f /root/mark && echo yes', expect: {output: yes}, points: 1}
  - id: t4
    title: Pick
    kind: choice
    prompt: Pick.
    options: [one, two]
    correct: two
    points: 3
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 64, cpus: 0.25, pids: 128}
    capabilities: [NET_RAW, DAC_OVERRIDE, FOWNER, CHOWN, KILL]
  nodes:
    - {name: a, role: branch}
    - {name: b, role: branch, sysctls: {net.ipv4.ip_default_ttl: "65"}}
`

// fakes replace the node's own tools with ones that print success, as a
// candidate who is root in the node might: sysctl says 65, ping prints a
// reply, cat prints "done", and /bin/sh (dash) is a script that prints
// what the checks look for and exits 0. They are installed with bash, as
// the node's sh is then no shell.
const fakes = `set -e
fake() { printf '#!/bin/bash\n%s\n' "$2" > "$1.fake"; chmod 755 "$1.fake"; mv -f "$1.fake" "$1"; }
fake "$(command -v sysctl)" 'echo 65; exit 0'
fake "$(command -v ping)" 'echo "64 bytes from 192.0.2.1: icmp_seq=1 ttl=64 time=0.1 ms"; exit 0'
fake "$(command -v cat)" 'echo done; exit 0'
fake /usr/bin/test 'exit 0'
fake /usr/bin/sh.real 'echo done; echo yes; echo 65; exit 0'
mv -f /usr/bin/sh.real "$(readlink -f /bin/sh)"
`

func grade4(t *testing.T, rt grading.Runner, ex *exam.Exam, sid string) *grading.Results {
	t.Helper()
	return gradeLab(t, rt, ex, sid, grading.Options{Tasks: []string{"t1", "t2", "t3", "t4"}, Answers: map[string]string{"t4": "two"}})
}

// TestTamperedNodeDoesNotFoolChecks grades a lab, replaces sysctl, ping,
// cat, test and /bin/sh in its nodes with fakes that report success, and
// grades it again: the checks run the grader's own tools, so their results
// are the same.
func TestTamperedNodeDoesNotFoolChecks(t *testing.T) {
	rt := newRuntime(t)
	ex, err := exam.Parse([]byte(graderExam))
	if err != nil {
		t.Fatal(err)
	}
	sid := startLab(t, rt, ex)
	before := grade4(t, rt, ex, sid)
	want := map[string]bool{"ttl on a": false, "ttl on b": true, "a reaches b": true, "a reaches 192.0.2.1": false, "the mark": false, "a shell test": false}
	for name, passed := range want {
		if c := check(t, before, name); c.Passed != passed || c.Error != "" {
			t.Fatalf("before tampering %q passed %v, want %v:\n%s", name, c.Passed, passed, summary(before))
		}
	}

	for _, node := range []string{"a", "b"} {
		candidate(t, rt, sid, node, "bash", "-c", fakes)
		// The fakes fool the node's own tools.
		for _, tc := range []struct {
			cmd  []string
			want string
		}{
			{[]string{"sysctl", "-n", "net.ipv4.ip_default_ttl"}, "65"},
			{[]string{"ping", "-c1", "192.0.2.1"}, "64 bytes"},
			{[]string{"cat", "/root/mark"}, "done"},
			{[]string{"sh", "-c", "exit 3"}, "done"},
			{[]string{"test", "-f", "/root/mark"}, ""},
		} {
			if out := candidate(t, rt, sid, node, tc.cmd...); !strings.Contains(out, tc.want) {
				t.Fatalf("the fakes are not in place in %s: %q printed %q", node, tc.cmd, out)
			}
		}
	}
	after := grade4(t, rt, ex, sid)
	for name := range want {
		b, a := check(t, before, name), check(t, after, name)
		if a.Passed != b.Passed || a.ExitCode != b.ExitCode || a.Error != "" {
			t.Errorf("%q: before tampering passed %v exit %d, after passed %v exit %d (%s)", name, b.Passed, b.ExitCode, a.Passed, a.ExitCode, a.Error)
		}
		if name != "a reaches b" && a.Output != b.Output {
			// ping's round-trip times differ from run to run.
			t.Errorf("%q: output before %q, after %q", name, b.Output, a.Output)
		}
	}
	if after.Score != before.Score || after.Score != 2+3 {
		t.Errorf("score before %d, after %d; want 5 both times", before.Score, after.Score)
	}
}

// TestCheckTimeouts: a check that hangs is killed at its timeout, with its
// children, and scores 0 "timed out"; the grading does not wait for it.
func TestCheckTimeouts(t *testing.T) {
	rt := newRuntime(t)
	ex, err := exam.Parse([]byte(strings.Replace(graderExam, "  - id: t4\n", `  - id: t5
    title: Hang
    kind: command
    prompt: Hang.
    checks:
      - {name: hangs, node: a, run: 'sleep 600 & sleep 601', timeout: 2s, points: 1}
      - {name: floods until killed, node: b, run: 'yes', timeout: 2s, points: 1}
      - {name: after the hang, node: a, run: 'echo fine', expect: {output: '^fine$'}, points: 1}
  - id: t4
`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	sid := startLab(t, rt, ex)
	start := time.Now()
	res := gradeLab(t, rt, ex, sid, grading.Options{Tasks: []string{"t5"}})
	took := time.Since(start)
	for _, name := range []string{"hangs", "floods until killed"} {
		c := check(t, res, name)
		if !c.TimedOut || c.Error != "timed out" || c.Points != 0 || c.Passed {
			t.Errorf("%s = %+v, want 0 points, timed out", name, c)
		}
		// Not a speed check: the node's watchdog ends it at 2s, and only
		// the grader's own backstop (timeout + 15s grace) would end it
		// later. The bound leaves room for a loaded engine's exec latency.
		if c.DurationMS < 2000 || c.DurationMS > 7000 {
			t.Errorf("%s took %dms, want its 2s timeout, ended by the node and not by the grader's backstop", name, c.DurationMS)
		}
	}
	if c := check(t, res, "floods until killed"); len(c.Output) != grading.MaxOutput || !c.Truncated {
		t.Errorf("the flood kept %d bytes, truncated %v", len(c.Output), c.Truncated)
	}
	if c := check(t, res, "after the hang"); !c.Passed {
		t.Errorf("the check after the hang = %+v, want it to run and pass", c)
	}
	if took > 6*time.Second {
		t.Errorf("grading took %s, want about the 2s timeout", took)
	}
	// Nothing of the checks is left in the nodes: the snippets' sleeps,
	// their shells and the watchdogs' sleeps are gone.
	for _, node := range []string{"a", "b"} {
		ps := candidate(t, rt, sid, node, "sh", "-c", `for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done`)
		for _, left := range []string{"sleep 600", "sleep 601", "sleep 2", "yes", "examlab-check", "watchdog"} {
			if strings.Contains(ps, left) {
				t.Errorf("%s still runs %q after the grading:\n%s", node, left, ps)
			}
		}
	}
}

// TestOutputFloodInANode: a check printing a gigabyte keeps 4 KiB, reads
// the rest away, and passes on its exit code; the grader's memory does not
// grow with it.
func TestOutputFloodInANode(t *testing.T) {
	rt := newRuntime(t)
	// The node gets a core of its own: at the lab's quarter of a core,
	// yes and head alone take a minute for a gigabyte.
	src := strings.Replace(graderExam, "    - {name: a, role: branch}", "    - {name: a, role: branch, limits: {cpus: 1}}", 1)
	ex, err := exam.Parse([]byte(strings.Replace(src, "  - id: t4\n", `  - id: t5
    title: Flood
    kind: command
    prompt: Flood.
    checks:
      - {name: a gigabyte, node: a, run: 'yes | head -c 1000000000', timeout: 2m, points: 1, expect: {output: '^y(\ny)*'}}
  - id: t4
`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	sid := startLab(t, rt, ex)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res := gradeLab(t, rt, ex, sid, grading.Options{Tasks: []string{"t5"}})
	runtime.ReadMemStats(&after)
	c := check(t, res, "a gigabyte")
	if !c.Passed || c.ExitCode != 0 || len(c.Output) != grading.MaxOutput || !c.Truncated {
		t.Errorf("flood = passed %v, exit %d, kept %d bytes, truncated %v (%s); want a pass keeping %d", c.Passed, c.ExitCode, len(c.Output), c.Truncated, c.Error, grading.MaxOutput)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("1 GB of output read in %dms; the grader allocated %d KiB, its heap went from %d to %d KiB", c.DurationMS, alloc>>10, before.HeapInuse>>10, after.HeapInuse>>10)
	if alloc > 64<<20 {
		t.Errorf("grading a 1 GB flood allocated %d MiB: the output was buffered", alloc>>20)
	}
}

// TestNodeGone: a node removed before grading scores 0 with the reason,
// and the other node's checks run as usual.
func TestNodeGone(t *testing.T) {
	rt := newRuntime(t)
	ex, err := exam.Parse([]byte(graderExam))
	if err != nil {
		t.Fatal(err)
	}
	sid := startLab(t, rt, ex)
	testlab.NewEngine(t).RemoveContainer(t, lab.ContainerName(sid, "b"))
	res := grade4(t, rt, ex, sid)
	for _, name := range []string{"ttl on b", "a shell test"} {
		if c := check(t, res, name); c.Passed || c.Points != 0 || c.Error != "node b is gone" {
			t.Errorf("%s = %+v, want 0 points because node b is gone", name, c)
		}
	}
	// Without b, its name does not resolve and the ping may time out.
	if c := check(t, res, "a reaches b"); c.Passed || c.Points != 0 {
		t.Errorf("a reaches b without b: %+v", c)
	}
	if c := check(t, res, "ttl on a"); c.Error != "" || c.ExitCode != 0 || strings.TrimSpace(c.Output) != "64" {
		t.Errorf("a's check did not run as usual: %+v", c)
	}
	if res.Score != 3 {
		t.Errorf("score %d, want the choice's 3", res.Score)
	}
}
