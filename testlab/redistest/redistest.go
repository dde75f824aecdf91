// Package redistest gives a test its own real redis-server, and nothing
// else, for tests of packages that need only Redis (store, scheduler,
// workers). The whole platform in process is package testlab.
package redistest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Start starts a redis-server for the test on a unix socket in a temp dir
// (no TCP port, nothing shared with other tests) and returns its address
// as unix:///path. The server is stopped when the test ends.
func Start(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: run `make deps` (installs Debian's redis-server): %v", err)
	}
	dir, err := os.MkdirTemp("", "examlab-redis-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
		"--dir", dir, "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return "unix://" + sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not come up: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client starts a private redis-server for the test and returns a client
// connected to it, closed when the test ends.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	addr := Start(t)
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: addr[len("unix://"):]})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Socket starts a private redis-server for the test and returns the path
// of its unix socket, for clients (asynq's) that take a network and an
// address apart.
func Socket(t testing.TB) string {
	t.Helper()
	return Start(t)[len("unix://"):]
}
