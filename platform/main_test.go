package platform_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/scheduler"
)

// childWorkerEnv, set in a test binary's environment, makes it a worker
// process instead of running tests: tests that kill a worker mid-task
// (SIGKILL, nothing cleaned up) run it as a child. Its configuration
// comes from the EXAMLAB_* environment, as `examlab worker`'s does.
const childWorkerEnv = "EXAMLAB_TEST_CHILD_WORKER"

// childStallEnv, set with childWorkerEnv, makes the child a worker that
// takes provision tasks from the queue and sits on them without a lease:
// killed, it is a worker that died between the two.
const childStallEnv = "EXAMLAB_TEST_CHILD_STALL"

func TestMain(m *testing.M) {
	if os.Getenv(childWorkerEnv) != "" {
		run := childWorker
		if os.Getenv(childStallEnv) != "" {
			run = stalledWorker
		}
		if err := run(); err != nil {
			fmt.Fprintln(os.Stderr, "child worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childWorker runs the worker role, with its sweeps, until SIGTERM.
func childWorker() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg := config.Default()
	if err := cfg.FromEnv(os.Getenv); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	o := platform.Options{Logger: log}
	// A test may shorten the work leases (chaosLeaseEnv).
	if v := os.Getenv(chaosLeaseEnv); v != "" {
		var err error
		if o.LeaseTTL, o.LeaseRenew, o.LeaseSweep, err = parseLeases(v); err != nil {
			return err
		}
	}
	p, err := platform.New(ctx, cfg, platform.Roles{Worker: true}, o)
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	log.Info("child worker running", "pid", os.Getpid())
	werr := p.Wait(ctx)
	return errors.Join(werr, p.Shutdown(context.Background()))
}

// stalledWorker serves the provision queue and sits on every task it
// takes, until SIGTERM or SIGKILL.
func stalledWorker() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg := config.Default()
	if err := cfg.FromEnv(os.Getenv); err != nil {
		return err
	}
	p, err := platform.New(ctx, cfg, platform.Roles{}, platform.Options{})
	if err != nil {
		return err
	}
	defer p.Shutdown(context.Background())
	srv := asynq.NewServerFromRedisClient(p.Redis, asynq.Config{Concurrency: 4,
		Queues: map[string]int{scheduler.QueueCritical: 1}, TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.FatalLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(scheduler.TypeProvision, func(ctx context.Context, t *asynq.Task) error {
		fmt.Fprintf(os.Stderr, "stalled on %s\n", t.ResultWriter().TaskID())
		<-ctx.Done()
		return ctx.Err()
	})
	if err := srv.Start(mux); err != nil {
		return err
	}
	<-ctx.Done()
	srv.Shutdown()
	return nil
}
