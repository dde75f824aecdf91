package platform_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/testlab"
)

// redisProcess is a redis-server the test can kill and start again on the
// same data and socket, configured for persistence as the deployment
// documents it (deploy/redis.sh, deploy/compose, deploy/nomad): an
// append-only file fsynced every second. A crash of the server process
// loses no acknowledged write with that setting, since each write reaches
// the kernel before the reply; only the host's crash can lose the last
// second.
type redisProcess struct {
	t    *testing.T
	dir  string
	sock string
	cmd  *exec.Cmd
	out  bytes.Buffer
}

func newRedisProcess(t *testing.T) *redisProcess {
	t.Helper()
	dir, err := os.MkdirTemp("", "examlab-chaos-redis-")
	if err != nil {
		t.Fatal(err)
	}
	r := &redisProcess{t: t, dir: dir, sock: filepath.Join(dir, "redis.sock")}
	t.Cleanup(func() {
		r.kill()
		if t.Failed() {
			t.Logf("redis-server:\n%s", bytes.TrimSpace(r.out.Bytes()))
		}
		os.RemoveAll(dir)
	})
	r.start()
	return r
}

// addr is the server's address as EXAMLAB_REDIS takes it.
func (r *redisProcess) addr() string { return "unix://" + r.sock }

// start runs the server and waits until it answers with its data loaded.
func (r *redisProcess) start() {
	r.t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		r.t.Fatalf("redis-server not found: run `make deps` (installs Debian's redis-server): %v", err)
	}
	r.cmd = exec.Command(bin, "--port", "0", "--unixsocket", r.sock, "--unixsocketperm", "700", "--dir", r.dir,
		"--appendonly", "yes", "--appendfsync", "everysec", "--save", "900 1", "--daemonize", "no")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: r.sock})
	defer rdb.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// PING answers LOADING while the append-only file is read.
		if err := rdb.Ping(context.Background()).Err(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server did not come up: %s", r.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the server with SIGKILL: nothing is flushed on the way out.
func (r *redisProcess) kill() {
	if r.cmd == nil || r.cmd.ProcessState != nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	r.cmd.Wait()
	os.Remove(r.sock)
}

// TestChaosRedisRestart kills Redis (SIGKILL) while candidates save
// answers and four labs wait in the worker's queue (concurrency 1), and
// starts it again on its append-only file a few seconds later: every
// session is still listed, every acknowledged answer is on disk and
// readable, every queued provision runs and every lab comes up.
func TestChaosRedisRestart(t *testing.T) {
	chaosTimed(t)
	requireEngine(t)
	rs := newRedisProcess(t)
	st := testlab.Start(t, testlab.Options{
		Redis: rs.addr(),
		Config: func(c *config.Config) {
			c.ExamFile = chaosExam(t)
			c.WorkerConcurrency = 1
			c.AdmitEvery, c.ExpireEvery, c.ReapEvery = time.Second, time.Second, time.Second
		},
		Platform: platformLogger(t),
	})
	var ids, tokens []string
	var clients []*testlab.Client
	for i := range 4 {
		c := st.Client()
		id := c.Login(t, fmt.Sprintf("redis%d@example.com", i))
		t.Cleanup(func() { st.Runtime.Destroy(context.Background(), id) })
		clients = append(clients, c)
		ids, tokens = append(ids, id), append(tokens, c.Token)
	}
	load := newAnswerLoad(t, func() string { return st.URL }, ids, tokens)
	load.start(50 * time.Millisecond)
	load.waitAcked(int64(3*len(load.slots)), time.Minute)
	for i, c := range clients {
		if code, err := c.Do("POST", "/api/session/"+ids[i]+"/start", nil, nil); err != nil || code/100 != 2 {
			t.Fatalf("start %s: %d %v", ids[i], code, err)
		}
	}

	// The crash takes one provision mid-way and the others waiting.
	var queued *asynq.QueueInfo
	deadline := time.Now().Add(time.Minute)
	for {
		var err error
		if queued, err = st.Inspector.GetQueueInfo(scheduler.QueueCritical); err != nil {
			t.Fatal(err)
		}
		if queued.Active >= 1 && queued.Pending >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no provision began: %d pending, %d active", queued.Pending, queued.Active)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rs.kill()
	down := time.Now()
	time.Sleep(2 * time.Second)
	rs.start()
	back := time.Now()
	load.waitAcked(load.acked.Load()+int64(3*len(load.slots)), time.Minute)

	// Every lab comes up: the provisions queued before the crash ran.
	for i, c := range clients {
		c.WaitStatus(t, ids[i], testlab.ProvisionTimeout, "ready")
	}
	ready := time.Since(back)
	load.halt()
	load.checkOnDisk(st.Config.StateDir, false)
	load.checkThroughAPI()
	// While Redis was away the saves were refused with 503 in plain
	// words, which the candidate's page shows as it retries.
	load.statusMu.Lock()
	for code, n := range load.statuses {
		if code != 200 && code != 503 {
			t.Errorf("%d saves answered %d %s, want 200 or 503", n, code, load.bodies[code])
		}
	}
	if body := load.bodies[503]; body != "" && (!strings.Contains(body, "briefly unavailable") || strings.Contains(body, "/")) {
		t.Errorf("a save while Redis was down answered %s, want plain words", body)
	}
	load.statusMu.Unlock()

	// Every session is in the index, as Redis had it before the crash.
	var list struct {
		Total    int `json:"total"`
		Sessions []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"sessions"`
	}
	if code, err := st.Admin().Do("GET", "/api/admin/sessions", nil, &list); err != nil || code != 200 {
		t.Fatalf("list sessions: %d %v", code, err)
	}
	for _, id := range ids {
		if !slices.ContainsFunc(list.Sessions, func(s struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		}) bool {
			return s.ID == id && s.Status == "ready"
		}) {
			t.Errorf("session %s is not listed ready after the restart: %+v", id, list.Sessions)
		}
	}
	t.Logf("%d provisions pending and %d active as Redis was killed", queued.Pending, queued.Active)
	t.Logf("Redis down %v; all %d labs ready %v after it was back; %d saves acknowledged, %d refused or unanswered: %s",
		back.Sub(down).Round(10*time.Millisecond), len(ids), ready.Round(100*time.Millisecond), load.acked.Load(), load.refused.Load(), load.summary())
}
