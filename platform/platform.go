// Package platform wires examlab's roles — api, worker, relay — from one
// Config, so that the binary's subcommands, a single-host `serve` and the
// end-to-end tests all assemble the system the same way.
package platform

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/api"
	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/metrics"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/ratelimit"
	"github.com/examlab/examlab/relay"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/workers"
)

// Roles selects what one process runs.
type Roles struct {
	API    bool
	Worker bool
	Relay  bool
}

// All is every role in one process: `examlab serve`.
var All = Roles{API: true, Worker: true, Relay: true}

// Platform is the set of running roles and what they share.
type Platform struct {
	Config    config.Config
	Exam      *exam.Exam
	Redis     *redis.Client
	Store     *store.Store
	Auth      *auth.Auth
	Enqueuer  *scheduler.Enqueuer
	Runtime   lab.Runtime
	Handlers  *workers.Handlers
	API       *api.Server
	Relay     *relay.Relay
	Inspector *asynq.Inspector

	// Metrics is this process's Prometheus instrumentation; the relay
	// counts open terminals on it (TerminalOpened).
	Metrics *metrics.Metrics
	ops     *opsServer

	roles     Roles
	log       *slog.Logger
	client    *asynq.Client
	server    *asynq.Server
	sched     *scheduler.Periodic
	relayApp  *fiber.App
	apiLn     net.Listener
	relayLn   net.Listener
	wg        sync.WaitGroup
	errc      chan error
	closeOnce sync.Once
	// stopWatch ends watchRuntime.
	stopWatch context.CancelFunc
	// restarts runs the sweep for operations of stopped workers
	// (workers.Handlers.RunRestarts) every sweepEvery, with the periodic
	// sweeps; stopRestarts ends it.
	restarts     bool
	sweepEvery   time.Duration
	stopRestarts context.CancelFunc
}

// Options adjusts New for embedding (tests).
type Options struct {
	Logger *slog.Logger
	// Runtime replaces the one the config names (tests may wrap it).
	Runtime lab.Runtime
	// NoScheduler leaves out the periodic sweeps (tests drive them).
	NoScheduler bool
	// Holder is a static build of this binary that the nodes run as the
	// terminal holder: the Docker runtime ships it in the grader's tools
	// (docker.Options.Holder); the Nomad runtime names the tools volume
	// after it, which each client's lab agent fills from its own examlab,
	// the same build. The commands pass their own executable.
	Holder string
	// LeaseTTL, LeaseRenew and LeaseSweep replace scheduler.LeaseTTL,
	// LeaseRenew and LeaseSweep, the work leases of provisions, archives
	// and cleanups (tests that kill workers many times over).
	LeaseTTL, LeaseRenew, LeaseSweep time.Duration
}

// New connects to Redis and the runtime and builds the roles; Start runs them.
func New(ctx context.Context, cfg config.Config, roles Roles, o Options) (*Platform, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Platform{Config: cfg, roles: roles, log: log, errc: make(chan error, 4)}
	var err error
	if cfg.ExamFile != "" {
		if p.Exam, err = exam.Load(cfg.ExamFile); err != nil {
			return nil, err
		}
	} else {
		p.Exam = exam.Default()
	}
	p.Redis = redis.NewClient(redisOptions(cfg))
	if err := p.Redis.Ping(ctx).Err(); err != nil {
		p.Redis.Close()
		return nil, fmt.Errorf("connect redis %s: %w", cfg.Redis, err)
	}
	// Every role writes into session folders, so every role seals: they
	// share the deployment's one key from the state directory.
	key, created, err := evidence.LoadOrCreateKey(cfg.StateDir)
	if err != nil {
		p.Redis.Close()
		return nil, err
	}
	if created {
		log.Info("generated the evidence signing key; back it up", "file", filepath.Join(cfg.StateDir, evidence.KeyFile),
			"fingerprint", evidence.Fingerprint(key.Public().(ed25519.PublicKey)))
	}
	// Only warm labs of the exam as loaded now are handed out: one made
	// before the exam file changed is replaced (workers.WarmRefill).
	examVersion := p.Exam.Fingerprint()
	p.Store, err = store.New(store.Options{Dir: cfg.StateDir, Redis: p.Redis, Prefix: cfg.RedisPrefix, MaxAnswerBytes: cfg.MaxAnswerBytes, MaxLabs: cfg.MaxLabs,
		SigningKey: key, Logger: log, ExamVersion: func(id string) string {
			if id == p.Exam.ID {
				return examVersion
			}
			return ""
		}})
	if err != nil {
		return nil, err
	}
	if roles.API || roles.Relay {
		if p.Auth, err = auth.New(cfg.AdminToken, p.Store); err != nil {
			return nil, err
		}
	}
	p.Runtime = o.Runtime
	if p.Runtime == nil {
		if p.Runtime, err = newRuntime(cfg, o.Holder, p.Store.HeldSubnets, p.Store); err != nil {
			return nil, err
		}
	}
	p.client = asynq.NewClient(asynqRedis(cfg))
	p.Enqueuer = scheduler.NewEnqueuer(p.client)
	p.Inspector = asynq.NewInspector(asynqRedis(cfg))
	p.newOps()
	if cfg.Practice && roles.API {
		if _, err := ensurePractice(ctx, p.Store, p.Exam, time.Now()); err != nil {
			return nil, fmt.Errorf("open the practice sitting: %w", err)
		}
	}
	exams := func(id string) (*exam.Exam, bool) { return p.Exam, id == p.Exam.ID }

	if roles.Worker {
		p.Handlers, err = workers.New(workers.Options{
			Store: p.Store, Runtime: p.Runtime, Enqueuer: p.Enqueuer, Exams: exams,
			RuntimeName: cfg.Runtime, Snapshot: lab.SnapshotMode(cfg.Snapshot), ProvisionTimeout: cfg.ProvisionTimeout,
			RetentionDays: cfg.RetentionDays, RetentionDryRun: cfg.RetentionDryRun, Logger: log,
			Observer: p.Metrics, Grading: p.Metrics, GradingSlots: cfg.GradingConcurrency,
			LeaseTTL: o.LeaseTTL, LeaseRenew: o.LeaseRenew,
			// A provision whose worker died before it took the lease is
			// restarted seconds after, not when the queue gives it up.
			ActiveProvisions: func(context.Context) ([]scheduler.SessionPayload, error) {
				return scheduler.ActiveProvisions(p.Inspector)
			},
		})
		if err != nil {
			return nil, err
		}
		p.server = asynq.NewServer(asynqRedis(cfg), asynq.Config{
			Concurrency:     cfg.WorkerConcurrency,
			Queues:          scheduler.Queues,
			ShutdownTimeout: 20 * time.Second,
			Logger:          asynqLogger{log},
			ErrorHandler:    taskFailures(log),
			RetryDelayFunc:  scheduler.RetryDelay,
			// A candidate waits on provision: look for new work often
			// rather than asynq's default of once a second.
			TaskCheckInterval: 100 * time.Millisecond,
		})
		if !o.NoScheduler {
			p.sched = scheduler.NewPeriodic(p.Enqueuer, scheduler.PeriodicOptions{Expire: cfg.ExpireEvery, Reap: cfg.ReapEvery, Admission: cfg.AdmitEvery, Logger: log})
			p.restarts = true
			p.sweepEvery = o.LeaseSweep
			if p.sweepEvery <= 0 {
				p.sweepEvery = scheduler.LeaseSweep
			}
		}
	}
	// The sign-in budgets live in Redis so that they hold across every API
	// and relay process of the deployment.
	var signin *ratelimit.Signin
	var proxies ratelimit.Proxies
	if roles.API || roles.Relay {
		if signin, err = ratelimit.NewSignin(ratelimit.SigninOptions{Redis: p.Redis, Prefix: cfg.RedisPrefix, Budgets: cfg.Signin}); err != nil {
			return nil, err
		}
		if proxies, err = ratelimit.NewProxies(cfg.TrustedProxies, cfg.ProxyHeader); err != nil {
			return nil, err
		}
	}
	if roles.Relay {
		p.Relay, err = relay.New(relay.Options{
			Store: p.Store, Runner: p.Runtime, Exams: exams, Origins: cfg.Origins(), Auth: p.Auth,
			Limits: signin, Proxies: proxies,
			MaxTerminals: cfg.MaxTerminals, MaxMessageBytes: cfg.MaxMessageBytes, IdleTimeout: cfg.TerminalIdle,
			Observer: p.Metrics, Logger: log,
		})
		if err != nil {
			return nil, err
		}
		if !roles.API {
			// A relay on its own serves just the terminals and a health check.
			p.relayApp = fiber.New(fiber.Config{AppName: "examlab relay", DisableStartupMessage: true})
			p.Relay.Register(p.relayApp)
			p.relayApp.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"ok": true, "relay": p.Relay.Stats()}) })
		}
	}
	if roles.API {
		p.API, err = api.New(api.Options{
			Store: p.Store, Enqueuer: p.Enqueuer, Exam: p.Exam, Exams: exams,
			Runner: p.Runtime, Grading: p.Metrics, RuntimeName: cfg.Runtime, Auth: p.Auth,
			CookieSecure: cfg.CookieSecure, PublicURL: cfg.PublicURL, Signin: signin, Proxies: proxies,
			Logger: log, Mounts: p.mounts(roles),
			Ops: p.opsOptions(), RetentionDays: cfg.RetentionDays, ReviewTTL: cfg.ReviewTTL,
		})
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

// mounts are the routes other roles add to the API's app when they share
// its process.
func (p *Platform) mounts(roles Roles) []func(*fiber.App) {
	var m []func(*fiber.App)
	if roles.API && roles.Relay {
		m = append(m, func(app *fiber.App) { p.Relay.Register(app) })
	}
	return m
}

// Start runs the roles in the background. API and relay listeners are
// bound before Start returns, so their addresses are usable at once.
func (p *Platform) Start(ctx context.Context) error {
	if err := p.startOps(); err != nil {
		return err
	}
	if p.roles.API || p.roles.Worker {
		p.watchRuntime()
	}
	if p.server != nil {
		if err := p.server.Start(p.Handlers.Mux()); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
	}
	if p.sched != nil {
		if err := p.sched.Start(); err != nil {
			return fmt.Errorf("start scheduler: %w", err)
		}
	}
	if p.restarts {
		// Not a queued sweep: it runs in every worker process from its
		// start, so that a provision a dead worker left is restarted as
		// soon as any worker runs, whatever the queues hold.
		rctx, cancel := context.WithCancel(context.Background())
		p.stopRestarts = cancel
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.Handlers.RunRestarts(rctx, p.sweepEvery)
		}()
	}
	if p.API != nil {
		ln, err := net.Listen("tcp", p.Config.Listen)
		if err != nil {
			return fmt.Errorf("listen api: %w", err)
		}
		p.apiLn = ln
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.API.App().Listener(ln); err != nil {
				p.errc <- fmt.Errorf("api: %w", err)
			}
		}()
	}
	if p.relayApp != nil {
		ln, err := net.Listen("tcp", p.Config.RelayListen)
		if err != nil {
			return fmt.Errorf("listen relay: %w", err)
		}
		p.relayLn = ln
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.relayApp.Listener(ln); err != nil {
				p.errc <- fmt.Errorf("relay: %w", err)
			}
		}()
	}
	return nil
}

// APIAddr is the bound API address ("" if the role is not running).
func (p *Platform) APIAddr() string {
	if p.apiLn == nil {
		return ""
	}
	return p.apiLn.Addr().String()
}

// RelayAddr is the bound address of a standalone relay.
func (p *Platform) RelayAddr() string {
	if p.relayLn == nil {
		return ""
	}
	return p.relayLn.Addr().String()
}

// Wait blocks until ctx ends or a role fails.
func (p *Platform) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-p.errc:
		return err
	}
}

// Shutdown drains every role: HTTP servers finish in-flight requests,
// workers finish (or hand back) their tasks, then connections close.
func (p *Platform) Shutdown(ctx context.Context) error {
	var errs []error
	p.closeOnce.Do(func() {
		if p.Relay != nil {
			// Terminals first: their hijacked connections would hold the
			// HTTP servers' drain open.
			errs = append(errs, p.Relay.Shutdown(ctx))
		}
		if p.API != nil && p.apiLn != nil {
			errs = append(errs, p.API.Shutdown(ctx))
		}
		if p.relayApp != nil && p.relayLn != nil {
			errs = append(errs, p.relayApp.ShutdownWithContext(ctx))
		}
		if p.sched != nil {
			p.sched.Shutdown()
		}
		if p.stopRestarts != nil {
			p.stopRestarts()
		}
		if p.server != nil {
			p.server.Shutdown()
		}
		errs = append(errs, p.stopOps(ctx))
		if p.stopWatch != nil {
			p.stopWatch()
		}
		p.wg.Wait()
		errs = append(errs, p.client.Close(), p.Inspector.Close(), p.Redis.Close())
	})
	return errors.Join(errs...)
}

// NewRuntime builds the lab runtime the config names.
func NewRuntime(cfg config.Config) (lab.Runtime, error) { return newRuntime(cfg, "", nil, nil) }

// newRuntime builds the runtime; held lists the subnets leftover networks
// still hold (store.HeldSubnets), which new labs are not given, and gate
// keeps exec starts out of captures across the platform's processes (the
// store; nil: this process's alone).
func newRuntime(cfg config.Config, holder string, held func(context.Context) ([]string, error), gate lab.ExecGate) (lab.Runtime, error) {
	switch cfg.Runtime {
	case config.RuntimeDocker:
		return docker.New(docker.Options{Host: cfg.DockerHost, SubnetPool: cfg.SubnetPool, SubnetPrefix: cfg.SubnetPrefix, SwitchImage: cfg.SwitchImage, GraderBusybox: cfg.GraderBusybox, Holder: holder, Instance: cfg.Instance,
			HeldSubnets: held, Gate: gate})
	case config.RuntimeNomad:
		// The Nomad client reads NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE,
		// NOMAD_REGION and the TLS variables itself.
		job, err := NomadJobOptions(cfg, holder)
		if err != nil {
			return nil, err
		}
		return nomad.New(nomad.Options{Job: job, Gate: gate})
	}
	return nil, fmt.Errorf("runtime %q is not available", cfg.Runtime)
}

// NomadJobOptions are the parts of a session's Nomad job that the
// configuration sets. The grader's tools volume is named after this
// host's busybox (cfg.GraderBusybox) and, when it is a static build, the
// terminal holder (this binary), which must be the clients' too: each
// client's lab agent fills the volume from its own busybox and examlab,
// and refuses a volume they do not name (docker.Runtime.FillGraderTools).
func NomadJobOptions(cfg config.Config, holder string) (jobspecs.NomadOptions, error) {
	names, err := docker.ToolsNamesFor(cfg.GraderBusybox, holder)
	if err != nil {
		return jobspecs.NomadOptions{}, err
	}
	tools := names.Name()
	switch {
	case tools == "" && cfg.GraderBusybox != "none":
		fmt.Fprintf(os.Stderr, "examlab: no grader busybox at %s (install busybox-static or set EXAMLAB_GRADER_BUSYBOX): Nomad labs start without the grader's tools and their checks cannot run\n", cfg.GraderBusybox)
	case tools != "" && names.With == "" && holder != "":
		fmt.Fprintf(os.Stderr, "examlab: no terminal holder for Nomad labs' nodes (%v): their terminals live in the relay and end when it restarts; build examlab with CGO_ENABLED=0 (make build), on the platform and the clients\n", names.NoHolder)
	}
	return jobspecs.NomadOptions{
		Datacenters: cfg.NomadDatacenters, Labnet: cfg.NomadLabnet,
		SubnetPool: cfg.SubnetPool, SubnetPrefix: cfg.SubnetPrefix,
		GraderTools: tools,
	}, nil
}
