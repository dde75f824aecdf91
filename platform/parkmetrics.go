package platform

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// parkScrapeTimeout bounds the Redis reads of one scrape.
const parkScrapeTimeout = 2 * time.Second

// registerParkMetrics exports the parked starts and the admission hold:
// examlab_parked_starts counts admitted starts back in line because the
// runtime had no room or could not be reached; examlab_admission_held is 1
// while admission waits for them, labelled with why.
func registerParkMetrics(reg *prometheus.Registry, st *store.Store) {
	parked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "examlab_parked_starts",
		Help: "Admitted starts waiting in line again: the lab runtime had no room or could not be reached.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), parkScrapeTimeout)
		defer cancel()
		q, err := st.Queue(ctx)
		if err != nil {
			return 0
		}
		n := 0
		for _, s := range q.Sittings {
			for _, e := range s.Queued {
				if e.Parking != nil {
					n++
				}
			}
		}
		return float64(n)
	})
	reg.MustRegister(parked, holdCollector{st: st})
}

var heldDesc = prometheus.NewDesc("examlab_admission_held",
	"1 while admission is held for parked starts, by reason (no-capacity, unavailable).", []string{"reason"}, nil)

// holdCollector reads the hold at scrape time.
type holdCollector struct{ st *store.Store }

func (c holdCollector) Describe(ch chan<- *prometheus.Desc) { ch <- heldDesc }

func (c holdCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), parkScrapeTimeout)
	defer cancel()
	h, ok, err := c.st.AdmissionHold(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(heldDesc, err)
		return
	}
	for _, r := range []string{session.ParkNoCapacity, session.ParkUnavailable} {
		v := 0.0
		if ok && h.Reason == r {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, v, r)
	}
}
