package nomad_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/nomad/nomadfake"
	"github.com/examlab/examlab/testlab"
)

// TestLabThroughNomad runs the runtime contract suite (lab/labtest)
// through the fake Nomad API onto real containers, and checks on the
// suite's labs what is the Nomad runtime's own: the job registered once
// and only if absent, placement watched with blocking queries, one
// allocation running every node, the lifecycle tasks out of reach, the
// task's mounts left out of exports; and once the suite is done, that the
// terminal's keystrokes and sizes travelled as exec frames, that destroy
// purged the jobs, and that the runtime called only what Nomad serves.
func TestLabThroughNomad(t *testing.T) {
	env := newFakeEnv(t)
	eng := testlab.NewEngine(t)
	var labs labtest.Labs
	labtest.Run(t, labtest.Harness{
		Runtime: env.rt,
		Inventory: func(t testing.TB, sessionID string) labtest.Inventory {
			inv := engineInventory(t, eng, sessionID)
			if job := env.fake.Job(jobspecs.JobName(sessionID)); job != nil {
				inv.Others = append(inv.Others, "job "+*job.ID)
			}
			return inv
		},
		Crash: func(t testing.TB, sessionID, node string) {
			if err := env.fake.CrashTask(sessionID, node); err != nil {
				t.Fatal(err)
			}
		},
		Inspect: func(t *testing.T, l labtest.Labs) {
			labs = l
			inspectFakeLab(t, env, l)
		},
		Network:     true,
		Containers:  true,
		NotExported: []string{"dev", "secrets", "alloc", "local"},
	})
	if labs.Main.SessionID == "" {
		return // the suite stopped before its labs came up
	}

	t.Run("terminal input and sizes travel as exec frames", func(t *testing.T) {
		var ttys []nomadfake.Exec
		for _, e := range env.fake.Execs() {
			if e.TTY {
				ttys = append(ttys, e)
			}
		}
		if len(ttys) != 1 || ttys[0].Task != "kyoto" {
			t.Fatalf("tty exec sessions recorded: %+v", ttys)
		}
		var sizes []api.TerminalSize
		var typed strings.Builder
		for _, f := range ttys[0].Frames {
			if f.TTYSize != nil {
				sizes = append(sizes, *f.TTYSize)
			}
			if f.Stdin != nil {
				typed.Write(f.Stdin.Data)
			}
		}
		want := []api.TerminalSize{
			{Height: int(labtest.TTYSize.Rows), Width: int(labtest.TTYSize.Cols)},
			{Height: int(labtest.TTYResize.Rows), Width: int(labtest.TTYResize.Cols)},
		}
		if !slices.Equal(sizes, want) {
			t.Errorf("tty size frames = %v, want the initial size then the resize %v", sizes, want)
		}
		if !strings.HasPrefix(typed.String(), "stty size\n") || !strings.HasSuffix(typed.String(), "stty size\nexit 3\n") {
			t.Errorf("stdin frames carried %q", typed.String())
		}
	})
	t.Run("destroy purged the jobs", func(t *testing.T) {
		// Each job is stopped first and purged only once its allocation
		// has stopped: a purge deletes the allocations from the servers
		// while the client is still tearing them down.
		purged, stopped := map[string]bool{}, map[string]bool{}
		for _, d := range env.fake.Deregisters() {
			if !d.Purge {
				stopped[d.JobID] = true
				continue
			}
			if !stopped[d.JobID] {
				t.Errorf("job %s purged before it was stopped", d.JobID)
			}
			purged[d.JobID] = true
		}
		for _, spec := range []lab.Spec{labs.Main, labs.Other} {
			if id := jobspecs.JobName(spec.SessionID); !purged[id] || env.fake.Job(id) != nil {
				t.Errorf("job %s: purged %v, still registered %v", id, purged[id], env.fake.Job(id) != nil)
			}
		}
	})
	if u := env.fake.Unknown(); len(u) > 0 {
		t.Errorf("the runtime called endpoints the fake does not serve: %v", u)
	}
}

// inspectFakeLab checks, with the fake's records, what the Nomad runtime
// did to bring the suite's labs up.
func inspectFakeLab(t *testing.T, env *fakeEnv, labs labtest.Labs) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	mainJob, otherJob := jobspecs.JobName(labs.Main.SessionID), jobspecs.JobName(labs.Other.SessionID)
	t.Run("each job was registered once, only if absent", func(t *testing.T) {
		n := map[string]int{}
		for _, r := range env.fake.Registers() {
			n[*r.Job.ID]++
			if !r.EnforceIndex || r.JobModifyIndex != 0 || r.Err != "" || len(r.Problems) > 0 {
				t.Errorf("register of %s: enforce=%v index=%d err=%q problems=%v; want only-if-absent and accepted",
					*r.Job.ID, r.EnforceIndex, r.JobModifyIndex, r.Err, r.Problems)
			}
		}
		// Main was provisioned three times: the retries registered nothing.
		if n[mainJob] != 1 || n[otherJob] != 1 {
			t.Errorf("registers per job: %v, want one each for %s and %s", n, mainJob, otherJob)
		}
	})
	t.Run("placement was watched with blocking queries", func(t *testing.T) {
		// Other was provisioned once and nothing else has asked about it.
		var allocPolls, blocked int
		for _, r := range env.fake.Requests() {
			if r.Method == "GET" && r.Path == "/v1/job/"+otherJob+"/allocations" {
				allocPolls++
				if r.Index > 0 {
					blocked++
				}
			}
		}
		if allocPolls == 0 || blocked < allocPolls-1 || allocPolls > 40 {
			t.Errorf("%d allocation queries, %d of them blocking: want every one after the first to block, and few", allocPolls, blocked)
		}
	})
	t.Run("one allocation runs every node", func(t *testing.T) {
		c, err := api.NewClient(&api.Config{Address: env.fake.URL()})
		if err != nil {
			t.Fatal(err)
		}
		if allocs, _, err := c.Jobs().Allocations(mainJob, true, nil); err != nil || len(allocs) != 1 {
			t.Errorf("%s has %d allocations (%v), want 1: the retries placed nothing new", mainJob, len(allocs), err)
		}
		nodes, err := env.rt.Status(ctx, labs.Main)
		if err != nil {
			t.Fatal(err)
		}
		alloc := nodes[0].AllocID
		for _, n := range nodes {
			if n.AllocID == "" || n.AllocID != alloc || n.ClientNode != "fake-client" || n.Container != n.Name+"-"+alloc {
				t.Errorf("node %s: alloc %q client %q container %q", n.Name, n.AllocID, n.ClientNode, n.Container)
			}
		}
	})
	t.Run("lifecycle tasks are not nodes", func(t *testing.T) {
		for _, task := range []string{jobspecs.NomadLabnetUp, jobspecs.NomadLabnetDown} {
			if _, err := env.rt.Exec(ctx, labs.Main.SessionID, task, lab.ExecRequest{Cmd: []string{"id"}}); !errors.Is(err, lab.ErrNotFound) {
				t.Errorf("exec in %q: err = %v, want ErrNotFound", task, err)
			}
		}
	})
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
			node:    "tokyo", wantState: lab.StatePending, wantEvent: "placement failed: no client has room: 1 of 1 clients evaluated, memory exhausted on 1",
			wantErr: "no room to place the lab",
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
