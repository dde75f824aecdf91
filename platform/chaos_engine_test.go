package platform_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/testlab"
)

// flakyEngine is a proxy on a unix socket in front of the Docker engine's
// socket. While failing, it fails a share of the requests, each one of
// three ways: a 503 without reaching the engine; the connection closed
// without an answer, the request not forwarded; or the request forwarded
// and done by the engine and then the connection closed without its
// answer, so the caller cannot tell whether it happened.
type flakyEngine struct {
	sock    string
	rate    float64
	failing atomic.Bool
	// faults counts the failed requests by way.
	refused, dropped, lost atomic.Int64
	proxy                  *httputil.ReverseProxy
	upstream               http.RoundTripper
}

func newFlakyEngine(t *testing.T, rate float64) *flakyEngine {
	t.Helper()
	engine := "/var/run/docker.sock"
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		engine = h
	}
	dir, err := os.MkdirTemp("", "examlab-chaos-engine-")
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", engine)
	}}
	f := &flakyEngine{sock: filepath.Join(dir, "docker.sock"), rate: rate, upstream: tr}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "docker"
		},
		Transport:     tr,
		FlushInterval: -1, // streams (logs, exports) pass as they come
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
		os.RemoveAll(dir)
	})
	return f
}

// host is the proxy's address as DOCKER_HOST takes it.
func (f *flakyEngine) host() string { return "unix://" + f.sock }

func (f *flakyEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !f.failing.Load() || rand.Float64() >= f.rate {
		f.proxy.ServeHTTP(w, r)
		return
	}
	upgrade := r.Header.Get("Upgrade") != ""
	switch way := rand.IntN(3); {
	case way == 0:
		f.refused.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"message":"the engine is overloaded (chaos test)"}`)
	case way == 1 || upgrade:
		f.dropped.Add(1)
		hangUp(w)
	default:
		f.lost.Add(1)
		out := r.Clone(r.Context())
		out.URL.Scheme, out.URL.Host, out.RequestURI = "http", "docker", ""
		if resp, err := f.upstream.RoundTrip(out); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		hangUp(w)
	}
}

// hangUp closes the request's connection without an answer.
func hangUp(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	conn.Close()
}

// TestChaosEngineRefuses puts a proxy in front of the Docker engine that,
// for a while, fails 30% of the runtime's requests (503s, hang-ups, and
// hang-ups after the engine did the work), while three labs are
// provisioned: every provision is retried until its lab is up, each lab
// whole and alone (two nodes, each once), no container of the instance
// belongs to no lab, and removing the labs leaves nothing.
func TestChaosEngineRefuses(t *testing.T) {
	chaosTimed(t)
	requireEngine(t)
	flaky := newFlakyEngine(t, 0.3)
	st := testlab.Start(t, testlab.Options{
		Config: func(c *config.Config) {
			c.ExamFile = chaosExam(t)
			c.DockerHost = flaky.host()
			c.ReapEvery = time.Second
		},
		Platform: platformLogger(t),
	})
	eng := testlab.NewEngine(t)
	var ids []string
	var clients []*testlab.Client
	for i := range 3 {
		c := st.Client()
		id := c.Login(t, fmt.Sprintf("engine%d@example.com", i))
		t.Cleanup(func() { st.Runtime.Destroy(context.Background(), id) })
		ids, clients = append(ids, id), append(clients, c)
	}
	flaky.failing.Store(true)
	t0 := time.Now()
	for i, c := range clients {
		if code, err := c.Do("POST", "/api/session/"+ids[i]+"/start", nil, nil); err != nil || code/100 != 2 {
			t.Fatalf("start %s: %d %v", ids[i], code, err)
		}
	}
	time.Sleep(10 * time.Second)
	flaky.failing.Store(false)
	for i, c := range clients {
		c.WaitStatus(t, ids[i], testlab.ProvisionTimeout, "ready")
	}
	ready := time.Since(t0)
	if flaky.refused.Load()+flaky.dropped.Load()+flaky.lost.Load() == 0 {
		t.Fatal("the proxy failed no request: the runtime did not go through it")
	}
	ctx := context.Background()
	for _, id := range ids {
		cs := eng.Containers(t, id)
		names := map[string]bool{}
		for _, c := range cs {
			if c.State != "running" || names[c.Names[0]] {
				t.Errorf("session %s: container %v %s (duplicate=%v)", id, c.Names, c.State, names[c.Names[0]])
			}
			names[c.Names[0]] = true
		}
		if len(cs) != 2 {
			t.Errorf("session %s: %d containers, want its 2 nodes: %s", id, len(cs), testlab.Summary(cs))
		}
		if nets := eng.Networks(t, id); len(nets) != 1 {
			t.Errorf("session %s: %d networks, want 1", id, len(nets))
		}
	}
	labs, err := st.Runtime.Labs(ctx)
	slices.Sort(labs)
	want := slices.Sorted(slices.Values(ids))
	if err != nil || !slices.Equal(labs, want) {
		t.Errorf("labs of the instance: %v %v, want %v", labs, err, want)
	}
	for _, id := range ids {
		if err := st.Runtime.Destroy(ctx, id); err != nil {
			t.Errorf("destroy %s: %v", id, err)
		}
		if cs := eng.Containers(t, id); len(cs) != 0 {
			t.Errorf("session %s: %d containers left after its lab was removed: %s", id, len(cs), testlab.Summary(cs))
		}
	}
	t.Logf("engine failing 10s (%d refused, %d hung up, %d hung up after the work); all %d labs ready %v after their start",
		flaky.refused.Load(), flaky.dropped.Load(), flaky.lost.Load(), len(ids), ready.Round(100*time.Millisecond))
}
