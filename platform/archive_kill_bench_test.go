package platform_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/testlab"
)

// BenchmarkArchiveWorkerKilled measures what a worker killed mid-archive
// costs, with the production work leases (scheduler.LeaseTTL, LeaseRenew,
// LeaseSweep), on killExam's two-node labs. Each round archives two
// ready labs: one undisturbed, from its submit to the session ended
// (base-ms-median, base-ms-p95: the baseline, grading, capture and
// cleanup), and one whose worker is SIGKILLed at a random point of the
// archive's first part, a fresh worker started at once, from its submit
// to the session ended (ms-median, ms-p95) and from the kill to the
// session ended (after-kill-ms); a kill that came after the archive was
// done is not counted (mid-archive-kills says how many were). Without the archive's lease the second
// would wait for the queue's recovery of the dead worker's task:
// asynq's 30 s lease plus up to a minute for its recoverer's pass.
//
//	go test ./platform -run '^$' -bench ArchiveWorkerKilled -benchtime 5x
func BenchmarkArchiveWorkerKilled(b *testing.B) {
	c := &chaos{r: newChaosRig(b, ""), rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)), live: map[string]bool{}}
	c.w = c.r.startWorker()
	var base, killed, afterKill []time.Duration
	mid := 0
	b.StopTimer()
	for range b.N {
		undisturbed, victim := c.start(b), c.start(b)
		c.waitStatus(b, undisturbed, session.StateReady)
		c.waitStatus(b, victim, session.StateReady)

		submitted := time.Now()
		c.submit(b, undisturbed, false)
		t0 := c.waitLease(b, scheduler.LeaseArchive, undisturbed)
		for c.leased(b, scheduler.LeaseArchive, undisturbed) {
			time.Sleep(5 * time.Millisecond)
		}
		held := time.Since(t0)
		c.waitEnded(b, undisturbed, session.StateCompleted)
		base = append(base, time.Since(submitted))

		// The victim's archive runs on a worker that has captured a lab
		// already, which is quicker than the first capture of a fresh
		// worker process (it reads the image's index of paths): the kill
		// point is drawn in the first third of the undisturbed hold.
		submitted = time.Now()
		c.submit(b, victim, false)
		delay := c.delay(held / 3)
		k := c.killIn(b, scheduler.LeaseArchive, victim, delay)
		c.waitEnded(b, victim, session.StateCompleted)
		c.checkEnded(b, victim)
		if !k.held || !k.sess.ArchivedAt.IsZero() {
			b.Logf("killed %v into an archive that was done already; not counted", delay.Round(time.Millisecond))
			continue
		}
		mid++
		killed = append(killed, time.Since(submitted))
		afterKill = append(afterKill, time.Since(k.at))
	}
	bmed, bp95 := testlab.Percentiles(base)
	kmed, _ := testlab.Percentiles(afterKill)
	testlab.ReportDurations(b, killed)
	b.ReportMetric(float64(bmed.Milliseconds()), "base-ms-median")
	b.ReportMetric(float64(bp95.Milliseconds()), "base-ms-p95")
	b.ReportMetric(float64(kmed.Milliseconds()), "after-kill-ms")
	b.ReportMetric(float64(mid), "mid-archive-kills")
}
