package platform_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/testlab"
)

// syncBuffer is a log destination the test reads while the process writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWorkerWarnsWhenTheRuntimeIsAway: a worker whose lab runtime does
// not answer at start says so with the reason, keeps running, and says
// when the runtime answers.
func TestWorkerWarnsWhenTheRuntimeIsAway(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	rt := labtest.NewFlaky(labtest.NewMemory(labtest.MemoryOptions{}))
	rt.FailWhen(func(c labtest.Call) error {
		if down.Load() && c.Method == "Ping" {
			return fmt.Errorf("dial tcp 10.77.0.9:4646: connect: connection refused: %w", lab.ErrUnavailable)
		}
		return nil
	})
	var logs syncBuffer
	cfg := config.Default()
	cfg.Redis = testlab.Redis(t)
	cfg.StateDir = t.TempDir()
	cfg.AdminToken = "test-admin-token-0123456789"
	ctx := context.Background()
	p, err := platform.New(ctx, cfg, platform.Roles{Worker: true}, platform.Options{
		Runtime: rt, NoScheduler: true, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	if err := p.Start(ctx); err != nil {
		t.Fatalf("a worker with its runtime away must still start: %v", err)
	}
	waitLog := func(want string) string {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, want) {
					return line
				}
			}
		}
		t.Fatalf("no log line with %q in:\n%s", want, logs.String())
		return ""
	}
	line := waitLog("the lab runtime does not answer")
	if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "connection refused") {
		t.Fatalf("start warning %q, want a warning with the reason", line)
	}
	down.Store(false)
	waitLog("the lab runtime answers again")
}
