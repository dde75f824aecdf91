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

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
)

// childWorkerEnv, set in a test binary's environment, makes it a worker
// process instead of running tests: tests that kill a worker mid-task
// (SIGKILL, nothing cleaned up) run it as a child. Its configuration
// comes from the EXAMLAB_* environment, as `examlab worker`'s does.
const childWorkerEnv = "EXAMLAB_TEST_CHILD_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(childWorkerEnv) != "" {
		if err := childWorker(); err != nil {
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
