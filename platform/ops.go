package platform

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/hibiken/asynqmon"

	"github.com/examlab/examlab/api"
	"github.com/examlab/examlab/metrics"
)

// opsServer is the operator side of a process: its metrics, the queue
// monitor (API role) and the optional unauthenticated ops listener.
type opsServer struct {
	metrics *metrics.Metrics
	monitor *asynqmon.HTTPHandler
	app     *fiber.App
	ln      net.Listener
}

// roleName says which roles a process runs, for health answers.
func roleName(r Roles) string {
	if r == All {
		return "serve"
	}
	var parts []string
	for _, x := range []struct {
		on   bool
		name string
	}{{r.API, "api"}, {r.Worker, "worker"}, {r.Relay, "relay"}} {
		if x.on {
			parts = append(parts, x.name)
		}
	}
	if len(parts) == 0 {
		return "tool"
	}
	return strings.Join(parts, "+")
}

// newOps builds the process's metrics and, for the API role, the queue
// monitor. It runs after Store, Inspector and Runtime exist.
func (p *Platform) newOps() {
	p.ops = &opsServer{metrics: metrics.New(metrics.Options{Sessions: p.Store, Queues: p.Inspector, Leftovers: p.Store, Warm: p.Store})}
	p.Metrics = p.ops.metrics
	registerParkMetrics(p.Metrics.Registry(), p.Store)
	if p.roles.API {
		p.ops.monitor = asynqmon.New(asynqmon.Options{RootPath: api.MonitorPath, RedisConnOpt: asynqRedis(p.Config)})
	}
}

// opsOptions are the operator endpoints every HTTP server of this process
// offers: readiness means Redis and the lab runtime both answer.
func (p *Platform) opsOptions() api.OpsOptions {
	o := api.OpsOptions{
		Role: roleName(p.roles),
		Checks: []api.Check{
			{Name: "redis", Fn: func(ctx context.Context) error { return p.Redis.Ping(ctx).Err() }},
			{Name: "runtime", Fn: p.Runtime.Ping},
		},
		Metrics: p.ops.metrics.Handler(),
		Logger:  p.log,
	}
	if p.ops.monitor != nil {
		o.Monitor = p.ops.monitor
	}
	return o
}

// startOps binds the ops listener when one is configured.
func (p *Platform) startOps() error {
	if p.Config.OpsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", p.Config.OpsListen)
	if err != nil {
		return fmt.Errorf("listen ops: %w", err)
	}
	p.ops.ln = ln
	p.ops.app = api.NewOpsApp(p.opsOptions())
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := p.ops.app.Listener(ln); err != nil {
			p.errc <- fmt.Errorf("ops: %w", err)
		}
	}()
	return nil
}

// OpsAddr is the bound ops listener ("" when off).
func (p *Platform) OpsAddr() string {
	if p.ops == nil || p.ops.ln == nil {
		return ""
	}
	return p.ops.ln.Addr().String()
}

// stopOps drains the ops listener and closes the monitor's connections.
func (p *Platform) stopOps(ctx context.Context) error {
	if p.ops == nil {
		return nil
	}
	var err error
	if p.ops.app != nil {
		err = p.ops.app.ShutdownWithContext(ctx)
	}
	if p.ops.monitor != nil {
		if cerr := p.ops.monitor.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}
