package metrics_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/metrics"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
	"github.com/examlab/examlab/workers"
)

var _ workers.Observer = (*metrics.Metrics)(nil)

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestMetricsReportPlatformState(t *testing.T) {
	sock := strings.TrimPrefix(testlab.Redis(t), "unix://")
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock})
	t.Cleanup(func() { rdb.Close() })
	st, err := store.New(store.Options{Dir: t.TempDir(), Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, e := range []string{"a@example.com", "b@example.com", "c@example.com"} {
		sess, _ := storetest.SignIn(t, st, e, "exam1", time.Hour, "docker")
		if e == "c@example.com" {
			if _, err := st.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateReady, time.Now()) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	conn := asynq.RedisClientOpt{Network: "unix", Addr: sock}
	client := asynq.NewClient(conn)
	t.Cleanup(func() { client.Close() })
	enq := scheduler.NewEnqueuer(client)
	for _, id := range []string{"aaaaaaaaaaaa", "bbbbbbbbbbbb"} {
		if _, err := enq.Archive(ctx, id, "test"); err != nil {
			t.Fatal(err)
		}
	}
	insp := asynq.NewInspector(conn)
	t.Cleanup(func() { insp.Close() })

	m := metrics.New(metrics.Options{Sessions: st, Queues: insp})
	m.Provisioned(12*time.Second, true)
	m.Provisioned(3*time.Second, false)
	m.Archived(40*time.Second, 1500, true)
	m.Archived(2*time.Second, 500, true)
	closeA := m.TerminalOpened()
	closeB := m.TerminalOpened()
	m.TerminalOpened()
	closeA()
	closeA() // a second close of the same terminal counts once
	closeB()

	out := scrape(t, m)
	for _, want := range []string{
		`examlab_sessions{state="created"} 2`,
		`examlab_sessions{state="ready"} 1`,
		`examlab_sessions{state="completed"} 0`,
		`examlab_queue_tasks{queue="default",state="pending"} 2`,
		`examlab_queue_tasks{queue="critical",state="pending"} 0`,
		`examlab_provision_duration_seconds_count{result="ok"} 1`,
		`examlab_provision_duration_seconds_count{result="error"} 1`,
		`examlab_provision_duration_seconds_bucket{result="ok",le="10"} 0`,
		`examlab_provision_duration_seconds_bucket{result="ok",le="20"} 1`,
		`examlab_archive_duration_seconds_count{result="ok"} 2`,
		`examlab_archive_bytes_total 2000`,
		`examlab_terminals_open 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", out)
	}

	// With Redis gone the in-process metrics are still served.
	rdb.Close()
	insp.Close()
	out = scrape(t, m)
	if !strings.Contains(out, "examlab_terminals_open 1") || strings.Contains(out, "examlab_sessions{") {
		t.Fatalf("scrape without redis:\n%s", out)
	}
}

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *metrics.Metrics
	m.Provisioned(time.Second, true)
	m.Archived(time.Second, 10, true)
	m.TerminalOpened()()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 404 {
		t.Fatalf("nil metrics handler answered %d, want 404", rec.Code)
	}
}
