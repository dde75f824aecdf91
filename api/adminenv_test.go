package api_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// These tests run the whole platform in process against a private
// redis-server and the real Docker engine, with the two-node exam in
// testdata so that each lab is quick to bring up and archive. They need
// `make deps` (redis-server) and `make image` (examlab/node:bookworm).

// Named timeouts for what the tests wait on.
const (
	auditTimeout   = 2 * time.Minute
	expireTimeout  = 2 * time.Minute
	reapTimeout    = time.Minute
	requestTimeout = 30 * time.Second
)

const labImage = "examlab/node:bookworm"

// requireLabImage fails (never skips) when the lab image is missing.
func requireLabImage(t testing.TB) {
	t.Helper()
	sock := "/var/run/docker.sock"
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		sock = h
	}
	hc := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := hc.Get("http://docker/v1.41/images/" + labImage + "/json")
	if err != nil {
		t.Fatalf("these tests need a running Docker engine at %s: %v", sock, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		t.Fatalf("image %s is missing: run `make image` first", labImage)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("inspect image %s: %s", labImage, resp.Status)
	}
}

// startStack runs the platform with the two-node exam and fast sweeps.
// memStack is startStack on the in-memory lab runtime (lab/labtest): for
// tests of the API's own logic that start no real lab, in milliseconds and
// without Docker.
func memStack(t *testing.T, edit func(*config.Config)) *testlab.Stack {
	t.Helper()
	examFile, err := filepath.Abs("testdata/two-nodes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return testlab.Start(t, testlab.Options{
		Platform: platform.Options{Runtime: labtest.NewMemory(labtest.MemoryOptions{})},
		Config: func(c *config.Config) {
			c.ExamFile = examFile
			if edit != nil {
				edit(c)
			}
		},
	})
}

func startStack(t *testing.T, edit func(*config.Config)) *testlab.Stack {
	t.Helper()
	requireLabImage(t)
	examFile, err := filepath.Abs("testdata/two-nodes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return testlab.Start(t, testlab.Options{Config: func(c *config.Config) {
		c.ExamFile = examFile
		c.ExpireEvery = time.Second
		c.ReapEvery = time.Second
		if edit != nil {
			edit(c)
		}
	}})
}

// readyLab logs a candidate in and brings their lab up; the lab is
// removed when the test ends, whatever state the test left it in.
func readyLab(t *testing.T, st *testlab.Stack, email string) (*testlab.Client, string) {
	t.Helper()
	c := st.Client()
	id := c.Login(t, email)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		st.Runtime.Destroy(ctx, id)
	})
	c.StartLab(t, id)
	return c, id
}

type details struct {
	Session struct {
		ID       string    `json:"id"`
		Email    string    `json:"email"`
		Status   string    `json:"status"`
		Deadline time.Time `json:"deadline"`
		Duration int64     `json:"duration_seconds"`
	} `json:"session"`
	Answers   []store.Answer           `json:"answers"`
	Histories map[string]store.History `json:"terminal_logs"`
	Terminals []store.File             `json:"terminal_files"`
	Snapshots []store.File             `json:"snapshots"`
	Manifest  *store.Manifest          `json:"manifest"`
	Audit     []store.AuditEntry       `json:"audit"`
}

func getDetails(t *testing.T, admin *testlab.Client, id string) details {
	t.Helper()
	var d details
	code, err := admin.Do("GET", "/api/admin/session/"+id+"/details", nil, &d)
	if err != nil || code != 200 {
		t.Fatalf("details of %s: %d %v", id, code, err)
	}
	return d
}

// auditCount counts the session's audit entries with action by actor.
func auditCount(d details, actor, action string) int {
	n := 0
	for _, e := range d.Audit {
		if e.Actor == actor && e.Action == action {
			n++
		}
	}
	return n
}

// waitAudit polls the details until an audit entry actor/action appears.
func waitAudit(t *testing.T, admin *testlab.Client, id, actor, action string) details {
	t.Helper()
	deadline := time.Now().Add(auditTimeout)
	for {
		d := getDetails(t, admin, id)
		if auditCount(d, actor, action) > 0 {
			return d
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(d.Audit)
			t.Fatalf("no %s/%s audit entry for %s after %s; audit: %s", actor, action, id, auditTimeout, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fetch is a raw GET with optional bearer token, for headers and bodies
// that are not JSON.
func fetch(t *testing.T, url, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func must(t *testing.T, code int, err error, want int, what string) {
	t.Helper()
	if err != nil || code != want {
		t.Fatalf("%s: %d %v, want %d", what, code, err, want)
	}
}
