package docker

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// These tests drive a real Docker engine (DOCKER_HOST, else the local
// socket) and the lab image built by `make image` (deploy/image/build.sh).
// They create only sessions whose ids start with "t" (those of the
// contract suite, labtest, with "lt") and remove them again.

const testImage = "examlab/node:bookworm"

// Named timeouts for the steps the tests wait on.
const (
	provisionTimeout = 2 * time.Minute
	execTimeout      = 20 * time.Second
)

// newTestRuntime returns a Runtime on the test engine, failing the test when
// the engine or the lab image is not there.
func newTestRuntime(t testing.TB) *Runtime {
	t.Helper()
	r, err := New(Options{})
	if err != nil {
		t.Fatalf("new runtime: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Ping(ctx); err != nil {
		t.Fatalf("these tests need a running Docker engine (DOCKER_HOST or %s): %v", defaultHost, err)
	}
	requireImage(t, r)
	return r
}

// requireImage fails the test, rather than skipping it, when the lab image
// is missing: a silently skipped runtime test hides a broken setup.
func requireImage(t testing.TB, r *Runtime) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := r.client.do(ctx, http.MethodGet, "/images/"+testImage+"/json", nil, nil, nil)
	if isNotFound(err) {
		t.Fatalf("image %s is missing: run `make image` (deploy/image/build.sh) first", testImage)
	}
	if err != nil {
		t.Fatalf("inspect image %s: %v", testImage, err)
	}
}

// newSessionID returns a fresh test session id: "t" and 11 random
// lower-case letters and digits.
func newSessionID(t testing.TB) string {
	t.Helper()
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[0] = 't'
	for i := 1; i < len(b); i++ {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// defaultLab renders the default exam's lab for a new test session and
// destroys it when the test ends.
func defaultLab(t testing.TB, r *Runtime) lab.Spec {
	t.Helper()
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: newSessionID(t), Candidate: "test"})
	if err != nil {
		t.Fatal(err)
	}
	destroyOnCleanup(t, r, spec.SessionID)
	return spec
}

func destroyOnCleanup(t testing.TB, r *Runtime, sessionID string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.Destroy(ctx, sessionID); err != nil {
			t.Errorf("destroy %s: %v", sessionID, err)
		}
	})
}

// sessionResources lists what the engine holds for a session.
func sessionResources(t testing.TB, r *Runtime, sessionID string) ([]containerSummary, []network) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conts, err := r.client.listContainers(ctx, sessionFilter(sessionID))
	if err != nil {
		t.Fatal(err)
	}
	nets, err := r.client.listNetworks(ctx, sessionFilter(sessionID))
	if err != nil {
		t.Fatal(err)
	}
	return conts, nets
}

// stopContainer kills a node's container the way a crash would.
func stopContainer(ctx context.Context, r *Runtime, name string) error {
	return r.client.do(ctx, http.MethodPost, "/containers/"+name+"/stop", url.Values{"t": {"0"}}, nil, nil)
}
