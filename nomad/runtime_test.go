package nomad_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/nomad/nomadfake"
	"github.com/examlab/examlab/testlab"
)

// TestLabThroughNomad provisions a lab through the fake Nomad API onto real
// containers and uses every runtime method on it: the job registered once
// and only if absent, placement watched with blocking queries, exec with
// and without a TTY, the filesystem export, logs, a node reset, and a
// destroy that purges the job and leaves nothing on the engine.
func TestLabThroughNomad(t *testing.T) {
	env := newFakeEnv(t)
	eng := testlab.NewEngine(t)
	spec := newLab(t, env.rt)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	jobID := jobspecs.JobName(spec.SessionID)

	if err := env.rt.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
	regs := env.fake.Registers()
	if len(regs) != 1 {
		t.Fatalf("%d register requests, want 1", len(regs))
	}
	if r := regs[0]; !r.EnforceIndex || r.JobModifyIndex != 0 || r.Err != "" || len(r.Problems) > 0 {
		t.Errorf("register: enforce=%v index=%d err=%q problems=%v; want only-if-absent and accepted",
			r.EnforceIndex, r.JobModifyIndex, r.Err, r.Problems)
	}
	// Placement was watched with blocking queries, not a tight poll.
	var allocPolls, blocked int
	for _, r := range env.fake.Requests() {
		if r.Method == "GET" && r.Path == "/v1/job/"+jobID+"/allocations" {
			allocPolls++
			if r.Index > 0 {
				blocked++
			}
		}
	}
	if allocPolls == 0 || blocked < allocPolls-1 || allocPolls > 40 {
		t.Errorf("%d allocation queries, %d of them blocking: want every one after the first to block, and few", allocPolls, blocked)
	}

	// A retried provision registers nothing and places nothing new.
	if err := env.rt.Provision(ctx, spec); err != nil {
		t.Fatalf("second provision: %v", err)
	}
	if n := len(env.fake.Registers()); n != 1 {
		t.Errorf("a retried provision registered again: %d registers", n)
	}

	nodes, err := env.rt.Status(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !lab.AllRunning(nodes) || len(nodes) != len(spec.Nodes) {
		t.Fatalf("status after provision: %+v", nodes)
	}
	alloc := nodes[0].AllocID
	for _, n := range nodes {
		if n.AllocID == "" || n.AllocID != alloc || n.ClientNode != "fake-client" || n.Container != n.Name+"-"+alloc {
			t.Errorf("node %s: alloc %q client %q container %q", n.Name, n.AllocID, n.ClientNode, n.Container)
		}
	}
	if cs := eng.Containers(t, spec.SessionID); len(cs) != len(spec.Nodes) {
		t.Errorf("engine has %d containers for the session: %s", len(cs), testlab.Summary(cs))
	}

	t.Run("exec", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, execTimeout)
		defer cancel()
		out, code, err := lab.Output(ctx, env.rt, spec.SessionID, "tokyo", "hostname")
		if err != nil || code != 0 || strings.TrimSpace(out) != "tokyo" {
			t.Errorf("hostname in tokyo = %q, exit %d, %v", out, code, err)
		}
		if out, code, err := lab.Output(ctx, env.rt, spec.SessionID, "tokyo", "ping", "-c1", "-W3", "osaka"); err != nil || code != 0 {
			t.Errorf("tokyo cannot ping osaka by name: exit %d %v\n%s", code, err, out)
		}
		if _, code, _ := lab.Output(ctx, env.rt, spec.SessionID, "tokyo", "sh", "-c", "exit 7"); code != 7 {
			t.Errorf("exit code = %d, want 7", code)
		}
		p, err := env.rt.Exec(ctx, spec.SessionID, "osaka", lab.ExecRequest{Cmd: []string{"printenv", "EXAMLAB_X"}, Env: []string{"EXAMLAB_X=42"}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		p.Close()
		if strings.TrimSpace(string(b)) != "42" {
			t.Errorf("env not passed: %q", b)
		}
	})

	t.Run("tty", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, execTimeout)
		defer cancel()
		before := len(env.fake.Execs())
		p, err := env.rt.Exec(ctx, spec.SessionID, "kyoto", lab.ExecRequest{Cmd: []string{"/bin/sh"}, TTY: true, Size: lab.Size{Rows: 30, Cols: 100}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var mu sync.Mutex
		var screen bytes.Buffer
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := p.Read(buf)
				mu.Lock()
				screen.Write(buf[:n])
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		waitScreen := func(want string) {
			t.Helper()
			for ctx.Err() == nil {
				mu.Lock()
				ok := strings.Contains(screen.String(), want)
				mu.Unlock()
				if ok {
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(screenPoll):
				}
			}
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("terminal never showed %q; screen:\n%s", want, screen.String())
		}
		if _, err := io.WriteString(p, "stty size\n"); err != nil {
			t.Fatal(err)
		}
		waitScreen("30 100")
		if err := p.Resize(ctx, lab.Size{Rows: 41, Cols: 132}); err != nil {
			t.Fatal(err)
		}
		// The size and the keystrokes travel in separate frames from
		// separate senders, so ask until the new size shows.
		for i := 0; ; i++ {
			if _, err := io.WriteString(p, "stty size\n"); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			ok := strings.Contains(screen.String(), "41 132")
			mu.Unlock()
			if ok || i == 100 {
				break
			}
			time.Sleep(4 * screenPoll)
		}
		waitScreen("41 132")
		if _, err := io.WriteString(p, "exit 3\n"); err != nil {
			t.Fatal(err)
		}
		if code, err := p.Wait(ctx); err != nil || code != 3 {
			t.Errorf("wait = %d, %v; want 3", code, err)
		}
		execs := env.fake.Execs()[before:]
		if len(execs) != 1 || !execs[0].TTY || execs[0].Task != "kyoto" {
			t.Fatalf("exec sessions recorded: %+v", execs)
		}
		var sizes []api.TerminalSize
		var typed strings.Builder
		for _, f := range execs[0].Frames {
			if f.TTYSize != nil {
				sizes = append(sizes, *f.TTYSize)
			}
			if f.Stdin != nil {
				typed.Write(f.Stdin.Data)
			}
		}
		if !slices.Equal(sizes, []api.TerminalSize{{Height: 30, Width: 100}, {Height: 41, Width: 132}}) {
			t.Errorf("tty size frames = %v, want the initial size then the resize", sizes)
		}
		if !strings.HasPrefix(typed.String(), "stty size\n") || !strings.HasSuffix(typed.String(), "stty size\nexit 3\n") {
			t.Errorf("stdin frames carried %q", typed.String())
		}
	})

	t.Run("not a node", func(t *testing.T) {
		for _, node := range []string{jobspecs.NomadLabnetUp, jobspecs.NomadLabnetDown, "nowhere", "../tokyo"} {
			if _, err := env.rt.Exec(ctx, spec.SessionID, node, lab.ExecRequest{Cmd: []string{"id"}}); !errors.Is(err, lab.ErrNotFound) {
				t.Errorf("exec in %q: err = %v, want ErrNotFound", node, err)
			}
		}
		if _, err := env.rt.Exec(ctx, newSessionID(t), "tokyo", lab.ExecRequest{Cmd: []string{"id"}}); !errors.Is(err, lab.ErrNotFound) {
			t.Errorf("exec in another session: err = %v, want ErrNotFound", err)
		}
	})

	t.Run("export and logs", func(t *testing.T) {
		if _, code, err := lab.Output(ctx, env.rt, spec.SessionID, "phoenix", "sh", "-c", "echo answer-42 > /root/work.txt"); err != nil || code != 0 {
			t.Fatalf("write work file: %d %v", code, err)
		}
		var tarball bytes.Buffer
		if err := env.rt.ExportFS(ctx, spec.SessionID, "phoenix", &tarball); err != nil {
			t.Fatal(err)
		}
		entries := tarEntries(t, &tarball)
		if entries["root/work.txt"] != "answer-42\n" {
			t.Errorf("archive holds root/work.txt = %q", entries["root/work.txt"])
		}
		if _, ok := entries["etc/debian_version"]; !ok {
			t.Errorf("archive lacks etc/debian_version (%d entries)", len(entries))
		}
		for name := range entries {
			for _, skip := range []string{"proc/", "sys/", "dev/", "secrets/"} {
				if strings.HasPrefix(name, skip) {
					t.Errorf("archive holds %s from a pseudo or task filesystem", name)
				}
			}
		}
		var logs bytes.Buffer
		if err := env.rt.Logs(ctx, spec.SessionID, "phoenix", &logs); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "phoenix") {
			t.Errorf("phoenix's log does not mention it: %q", logs.String())
		}
	})

	t.Run("reset node", func(t *testing.T) {
		if _, code, err := lab.Output(ctx, env.rt, spec.SessionID, "g1", "touch", "/root/mark"); err != nil || code != 0 {
			t.Fatalf("touch: %d %v", code, err)
		}
		if err := env.rt.ResetNode(ctx, spec, "g1"); err != nil {
			t.Fatal(err)
		}
		if _, code, _ := lab.Output(ctx, env.rt, spec.SessionID, "g1", "test", "-e", "/root/mark"); code == 0 {
			t.Error("g1 kept /root/mark across a reset")
		}
	})

	t.Run("labs", func(t *testing.T) {
		labs, err := env.rt.Labs(ctx)
		if err != nil || !slices.Contains(labs, spec.SessionID) {
			t.Errorf("labs = %v, %v; want %s among them", labs, err, spec.SessionID)
		}
	})

	if err := env.rt.Destroy(ctx, spec.SessionID); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if err := env.rt.Destroy(ctx, spec.SessionID); err != nil {
		t.Errorf("second destroy: %v", err)
	}
	dereg := env.fake.Deregisters()
	if len(dereg) == 0 || !dereg[0].Purge || dereg[0].JobID != jobID {
		t.Errorf("deregisters = %+v, want a purge of %s", dereg, jobID)
	}
	if env.fake.Job(jobID) != nil {
		t.Errorf("job %s still registered after destroy", jobID)
	}
	if cs := eng.Containers(t, spec.SessionID); len(cs) != 0 {
		t.Errorf("containers left after destroy: %s", testlab.Summary(cs))
	}
	if nets := eng.Networks(t, spec.SessionID); len(nets) != 0 {
		t.Errorf("networks left after destroy: %+v", nets)
	}
	nodes, err = env.rt.Status(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.State != lab.StatePending {
			t.Errorf("node %s after destroy: %s", n.Name, n.State)
		}
	}
	if u := env.fake.Unknown(); len(u) > 0 {
		t.Errorf("the runtime called endpoints the fake does not serve: %v", u)
	}
}

// TestRegisterIsConditional checks what Provision writes when a job of the
// session's name is already there or appears while it looks, without
// placing anything: the fake has no capacity, so each provision ends in a
// placement failure after its register decision.
func TestRegisterIsConditional(t *testing.T) {
	tests := []struct {
		name string
		// setup runs against the fake before Provision; it returns the
		// modify index Provision is expected to condition its write on.
		setup func(t *testing.T, env *fakeEnv, spec lab.Spec) (wantIndex uint64)
		// wantWrite: Provision's register is sent; accepted: and accepted.
		wantWrite, accepted bool
		// keep is a meta key the final job must still carry.
		keep string
	}{
		{
			name:      "absent",
			setup:     func(*testing.T, *fakeEnv, lab.Spec) uint64 { return 0 },
			wantWrite: true, accepted: true,
		},
		{
			name: "identical",
			setup: func(t *testing.T, env *fakeEnv, spec lab.Spec) uint64 {
				put(t, env, spec, nil)
				return 0
			},
		},
		{
			name: "stale version is replaced at its index",
			setup: func(t *testing.T, env *fakeEnv, spec lab.Spec) uint64 {
				return put(t, env, spec, func(j *api.Job) { j.Meta[jobspecs.MetaSpec] = "stale" })
			},
			wantWrite: true, accepted: true,
		},
		{
			name: "newer version written meanwhile is kept",
			setup: func(t *testing.T, env *fakeEnv, spec lab.Spec) uint64 {
				idx := put(t, env, spec, func(j *api.Job) { j.Meta[jobspecs.MetaSpec] = "stale" })
				var once sync.Once
				env.fake.OnJobRead(func(string) {
					once.Do(func() {
						put(t, env, spec, func(j *api.Job) {
							j.Meta[jobspecs.MetaSpec] = "operator-edit"
							j.Meta["operator"] = "edited"
						})
					})
				})
				return idx
			},
			wantWrite: true, keep: "operator",
		},
		{
			name: "registered by a concurrent provision",
			setup: func(t *testing.T, env *fakeEnv, spec lab.Spec) uint64 {
				var once sync.Once
				env.fake.OnJobRead(func(string) {
					once.Do(func() { put(t, env, spec, func(j *api.Job) { j.Meta["winner"] = "other" }) })
				})
				return 0
			},
			wantWrite: true, keep: "winner",
		},
		{
			name: "rendered by a newer examlab",
			setup: func(t *testing.T, env *fakeEnv, spec lab.Spec) uint64 {
				put(t, env, spec, func(j *api.Job) {
					j.Meta[jobspecs.MetaSpec] = "future"
					j.Meta[jobspecs.MetaRender] = "99"
				})
				return 0
			},
			keep: jobspecs.MetaRender,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newFakeEnv(t)
			env.fake.NoCapacity("memory")
			spec := newLab(t, env.rt)
			wantIndex := tc.setup(t, env, spec)
			ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
			defer cancel()

			err := env.rt.Provision(ctx, spec)
			if !errors.Is(err, nomad.ErrNotPlaced) || !strings.Contains(err.Error(), "memory exhausted") {
				t.Errorf("provision: err = %v, want ErrNotPlaced naming memory", err)
			}
			regs := env.fake.Registers()
			if !tc.wantWrite {
				if len(regs) != 0 {
					t.Fatalf("provision registered %d times, want none", len(regs))
				}
			} else {
				if len(regs) != 1 {
					t.Fatalf("provision registered %d times, want 1", len(regs))
				}
				r := regs[0]
				if !r.EnforceIndex || r.JobModifyIndex != wantIndex {
					t.Errorf("register conditioned on enforce=%v index=%d, want index %d", r.EnforceIndex, r.JobModifyIndex, wantIndex)
				}
				if (r.Err == "") != tc.accepted {
					t.Errorf("register accepted=%v (%q), want %v", r.Err == "", r.Err, tc.accepted)
				}
			}
			job := env.fake.Job(jobspecs.JobName(spec.SessionID))
			if job == nil {
				t.Fatal("no job registered")
			}
			if tc.keep != "" && job.Meta[tc.keep] == "" {
				t.Errorf("the job lost meta %s: overwritten", tc.keep)
			}
			if tc.accepted {
				want, _ := env.rt.Job(spec)
				if job.Meta[jobspecs.MetaSpec] != want.Meta[jobspecs.MetaSpec] {
					t.Errorf("job spec %s, want ours %s", job.Meta[jobspecs.MetaSpec], want.Meta[jobspecs.MetaSpec])
				}
			}
		})
	}
}

// put registers the session's job, edited, straight into the fake as an
// operator or another worker would, and returns its modify index.
func put(t *testing.T, env *fakeEnv, spec lab.Spec, edit func(*api.Job)) uint64 {
	t.Helper()
	job, err := env.rt.Job(spec)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(job)
	}
	idx, err := env.fake.Put(job)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestForeignJobIsNotTouched(t *testing.T) {
	env := newFakeEnv(t)
	env.fake.NoCapacity("memory")
	spec := newLab(t, env.rt)
	other := spec
	other.SessionID = spec.SessionID[:8] + "zzzz" // same job name
	idx := put(t, env, other, nil)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()

	if err := env.rt.Provision(ctx, spec); !errors.Is(err, nomad.ErrForeignJob) {
		t.Errorf("provision: err = %v, want ErrForeignJob", err)
	}
	if err := env.rt.Destroy(ctx, spec.SessionID); err != nil {
		t.Errorf("destroy: %v", err)
	}
	if n := len(env.fake.Registers()) + len(env.fake.Deregisters()); n != 0 {
		t.Errorf("%d writes to another session's job", n)
	}
	if job := env.fake.Job(jobspecs.JobName(spec.SessionID)); job == nil || *job.JobModifyIndex != idx {
		t.Error("the other session's job changed")
	}
	nodes, err := env.rt.Status(ctx, spec)
	if err != nil || nodes[0].State != lab.StateMissing {
		t.Errorf("status = %+v, %v; want missing", nodes, err)
	}
}

// TestEventsSurface checks that what goes wrong on the cluster reaches the
// session's node states and the provision error.
func TestEventsSurface(t *testing.T) {
	tests := []struct {
		name      string
		arrange   func(*nomadfake.Server)
		node      string
		wantState lab.State
		wantEvent string
		wantErr   string
	}{
		{
			name: "image missing",
			arrange: func(f *nomadfake.Server) {
				f.FailTask("osaka", nomadfake.DriverFailure, "Failed to pull `examlab/node:bookworm`: no registry reachable")
			},
			node: "osaka", wantState: lab.StateFailed, wantEvent: "Driver Failure: Failed to pull", wantErr: "node osaka stopped: Driver Failure",
		},
		{
			name:    "out of memory",
			arrange: func(f *nomadfake.Server) { f.FailTask("g2", nomadfake.OOMKilled, "") },
			node:    "g2", wantState: lab.StateFailed, wantEvent: "killed for lack of memory", wantErr: "node g2 stopped: killed for lack of memory",
		},
		{
			name:    "placement failure",
			arrange: func(f *nomadfake.Server) { f.NoCapacity("memory") },
			node:    "tokyo", wantState: lab.StatePending, wantEvent: "placement failed: 1 of 1 clients evaluated, memory exhausted on 1",
			wantErr: "lab could not be placed",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newFakeEnv(t)
			tc.arrange(env.fake)
			spec := newLab(t, env.rt)
			ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
			defer cancel()
			err := env.rt.Provision(ctx, spec)
			if err == nil {
				t.Fatal("provision succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("provision error %q does not say %q", err, tc.wantErr)
			}
			nodes, err := env.rt.Status(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			var got lab.NodeStatus
			for _, n := range nodes {
				if n.Name == tc.node {
					got = n
				}
			}
			if got.State != tc.wantState {
				t.Errorf("%s is %s, want %s (%+v)", tc.node, got.State, tc.wantState, got)
			}
			found := false
			for _, e := range got.Events {
				found = found || strings.Contains(e, tc.wantEvent)
			}
			if !found {
				t.Errorf("%s events %q lack %q", tc.node, got.Events, tc.wantEvent)
			}
			if tc.wantState != lab.StateFailed {
				return
			}
			// The lab's policy never reschedules it; the worker's next
			// attempt starts it over, on a fresh allocation.
			env.fake.ClearFailures()
			if err := env.rt.Provision(ctx, spec); err != nil {
				t.Fatalf("provision after the failure cleared: %v", err)
			}
			again, err := env.rt.Status(ctx, spec)
			if err != nil || !lab.AllRunning(again) {
				t.Fatalf("status after retry: %+v %v", again, err)
			}
			if again[0].AllocID == got.AllocID {
				t.Errorf("the retry kept the failed allocation %s", got.AllocID)
			}
			if n := len(env.fake.Registers()); n != 1 {
				t.Errorf("the retry registered the job again (%d registers)", n)
			}
		})
	}
}

// TestWriteAnswersWithItsOwnIndex registers through the HTTP API while the
// fake's scheduler races to place the job: the answer's X-Nomad-Index must
// be the write's own index (the job modify index), as Nomad's is, so that
// what the write led to — evaluations, allocations — is indexed after it.
// A later index there made Provision ignore the allocation it had caused.
func TestWriteAnswersWithItsOwnIndex(t *testing.T) {
	env := newFakeEnv(t)
	env.fake.NoCapacity("memory") // scheduling then finishes at once, without containers
	c, err := api.NewClient(&api.Config{Address: env.fake.URL()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		job, err := env.rt.Job(newLab(t, env.rt))
		if err != nil {
			t.Fatal(err)
		}
		resp, wm, err := c.Jobs().Register(job, nil)
		if err != nil {
			t.Fatal(err)
		}
		if wm.LastIndex != resp.JobModifyIndex {
			t.Fatalf("register %d answered at index %d, but the job was written at %d", i, wm.LastIndex, resp.JobModifyIndex)
		}
		ev, _, err := c.Evaluations().Info(resp.EvalID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ev.CreateIndex > wm.LastIndex {
			t.Fatalf("register %d: its evaluation is indexed %d, after the write's %d", i, ev.CreateIndex, wm.LastIndex)
		}
	}
}
