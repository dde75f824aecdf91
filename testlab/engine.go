package testlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
)

// Engine asks the Docker engine directly what exists, so tests check the
// runtime's work without trusting the runtime's own reports.
type Engine struct {
	hc *http.Client
	// stream has no timeout of its own, for answers that last as long as
	// a command runs (the context bounds them).
	stream *http.Client
}

// NewEngine connects to the engine on its default unix socket (or the
// unix:// DOCKER_HOST).
func NewEngine(t testing.TB) *Engine {
	t.Helper()
	return newEngine()
}

func newEngine() *Engine {
	sock := "/var/run/docker.sock"
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		sock = h
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}
	return &Engine{hc: &http.Client{Timeout: 30 * time.Second, Transport: tr}, stream: &http.Client{Transport: tr}}
}

func (e *Engine) get(t testing.TB, path string, q url.Values, out any) {
	t.Helper()
	resp, err := e.hc.Get("http://docker/v1.41" + path + "?" + q.Encode())
	if err != nil {
		t.Fatalf("docker engine: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("docker engine %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("docker engine %s: %v", path, err)
	}
}

func labelFilter(sessionID string) url.Values {
	f, _ := json.Marshal(map[string][]string{"label": {lab.LabelSession + "=" + sessionID}})
	return url.Values{"filters": {string(f)}, "all": {"1"}}
}

// EngineContainer is what tests read of a container.
type EngineContainer struct {
	ID     string `json:"Id"`
	Names  []string
	State  string
	Labels map[string]string
}

// Containers lists every container (running or not) labelled with the session.
func (e *Engine) Containers(t testing.TB, sessionID string) []EngineContainer {
	t.Helper()
	var out []EngineContainer
	e.get(t, "/containers/json", labelFilter(sessionID), &out)
	return out
}

// Stop stops a container at once (SIGKILL, no grace period), the way a
// crash would stop it.
func (e *Engine) Stop(t testing.TB, id string) {
	t.Helper()
	resp, err := e.hc.Post("http://docker/v1.41/containers/"+url.PathEscape(id)+"/stop?t=0", "", nil)
	if err != nil {
		t.Fatalf("docker engine: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		t.Fatalf("docker engine: stop %s: %s", id, resp.Status)
	}
}

// EngineNetwork is what tests read of a network.
type EngineNetwork struct {
	Name     string
	Internal bool
	IPAM     struct {
		Config []struct{ Subnet string }
	}
	Options map[string]string
}

// Networks lists networks labelled with the session.
func (e *Engine) Networks(t testing.TB, sessionID string) []EngineNetwork {
	t.Helper()
	var out []EngineNetwork
	q := labelFilter(sessionID)
	q.Del("all")
	e.get(t, "/networks", q, &out)
	return out
}

// Inspect returns a container's raw inspect document.
func (e *Engine) Inspect(t testing.TB, name string) map[string]any {
	t.Helper()
	var out map[string]any
	e.get(t, "/containers/"+url.PathEscape(name)+"/json", nil, &out)
	return out
}

// Summary summarises containers for failure messages.
func Summary(cs []EngineContainer) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "%v:%s ", c.Names, c.State)
	}
	return b.String()
}
