package platform

import (
	"context"
	"time"
)

// runtimeRecheck is how often a process whose lab runtime did not answer
// at start asks again, until it does.
const runtimeRecheck = 10 * time.Second

// runtimePingTimeout bounds each question.
const runtimePingTimeout = 5 * time.Second

// watchRuntime asks the lab runtime whether it answers as the process
// starts. When it does not, the process says so at once, with the reason,
// and keeps running: starts are parked in the queue until the runtime
// answers (scheduler.Park), /readyz answers 503 naming it, and this asks
// again every runtimeRecheck and says when it answers. It stops at
// Shutdown.
func (p *Platform) watchRuntime() {
	ctx, cancel := context.WithCancel(context.Background())
	p.stopWatch = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		warned := false
		for {
			pctx, pcancel := context.WithTimeout(ctx, runtimePingTimeout)
			err := p.Runtime.Ping(pctx)
			pcancel()
			if ctx.Err() != nil {
				return
			}
			switch {
			case err == nil && warned:
				p.log.Info("the lab runtime answers again", "runtime", p.Config.Runtime)
				return
			case err == nil:
				return
			case !warned:
				p.log.Warn("the lab runtime does not answer; starts wait in the queue until it does, and this process keeps trying",
					"runtime", p.Config.Runtime, "reason", err, "retry_every", runtimeRecheck)
				warned = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(runtimeRecheck):
			}
		}
	}()
}
