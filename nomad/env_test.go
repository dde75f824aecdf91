package nomad_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/nomad/nomadfake"
	"github.com/examlab/examlab/testlab"
)

// The fake-backed tests run every lab for real on the local Docker engine
// (DOCKER_HOST, else its socket) from the image `make image` builds. They
// create sessions whose ids start with "n" (those of the contract suite,
// labtest, with "lt") and remove them again.

const testImage = "examlab/node:bookworm"

// Named timeouts for what the tests wait on.
const (
	provisionTimeout = 3 * time.Minute
	execTimeout      = 30 * time.Second
	// blockingWait is the fake-backed runtime's wait per blocking query:
	// short, so a missed wake-up shows as slowness, not as a hang.
	blockingWait = 5 * time.Second
)

// fakeEnv is a Nomad runtime talking to the fake, whose client runs labs
// on the real engine.
type fakeEnv struct {
	fake   *nomadfake.Server
	rt     *nomad.Runtime
	docker *docker.Runtime
	// agent is the lab agent the fake runs in labnet-watch.
	agent *nomad.LabAgent
}

func newFakeEnv(t testing.TB) *fakeEnv {
	t.Helper()
	d := requireDocker(t)
	// The lab agent the fake runs for execs into labnet-watch, as the
	// client runs `examlab labnet VERB` there. The fake's labs are the
	// docker runtime's containers, which carry its labels rather than
	// those Nomad's docker driver puts on a node.
	agent, err := nomad.NewLabAgent(nomad.AgentOptions{
		DockerHost: os.Getenv("DOCKER_HOST"),
		Labels:     func(string) []string { return []string{lab.LabelManaged + "=true"} },
	})
	if err != nil {
		t.Fatal(err)
	}
	runAgent := func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
		err := nomad.RunAgent(ctx, agent, args[1:], stdin, stdout, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "examlab:", err)
		}
		return nomad.AgentExitCode(err)
	}
	fake, err := nomadfake.New(nomadfake.Options{Docker: d, Agent: runAgent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	rt, err := nomad.New(nomad.Options{
		Client:   &api.Config{Address: fake.URL()},
		WaitTime: blockingWait,
		Job:      jobspecs.NomadOptions{Labnet: "/usr/local/bin/examlab"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeEnv{fake: fake, rt: rt, docker: d, agent: agent}
}

// requireDocker fails the test, rather than skipping it, when the engine or
// the lab image is missing: a silently skipped test hides a broken setup.
func requireDocker(t testing.TB) *docker.Runtime {
	t.Helper()
	d, err := docker.New(docker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Ping(ctx); err != nil {
		t.Fatalf("these tests need a running Docker engine: %v", err)
	}
	sock := "/var/run/docker.sock"
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		sock = h
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := hc.Get("http://docker/v1.41/images/" + testImage + "/json")
	if err != nil {
		t.Fatalf("inspect image %s: %v", testImage, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		t.Fatalf("image %s is missing: run `make image` (deploy/image/build.sh) first", testImage)
	}
	return d
}

// newSessionID returns a fresh test session id: "n" and 11 random
// lower-case letters and digits.
func newSessionID(t testing.TB) string {
	t.Helper()
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[0] = 'n'
	for i := 1; i < len(b); i++ {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// newLab renders the default exam's lab for a new test session and
// destroys it through rt when the test ends.
func newLab(t testing.TB, rt *nomad.Runtime) lab.Spec {
	t.Helper()
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: newSessionID(t), Candidate: "test@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := rt.Destroy(ctx, spec.SessionID); err != nil {
			t.Errorf("destroy %s: %v", spec.SessionID, err)
		}
	})
	return spec
}

// provisionLab provisions spec through rt, failing the test if it does
// not come up, and returns its nodes' names.
func provisionLab(t testing.TB, rt lab.Runtime, spec lab.Spec) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := rt.Provision(ctx, spec); err != nil {
		t.Fatal(err)
	}
	nodes := make([]string, len(spec.Nodes))
	for i, n := range spec.Nodes {
		nodes[i] = n.Name
	}
	return nodes
}

// engineInventory lists what the engine holds of a session: a node
// instance per node container, a segmented lab's switch, and its networks.
func engineInventory(t testing.TB, eng *testlab.Engine, sessionID string) labtest.Inventory {
	t.Helper()
	var inv labtest.Inventory
	for _, c := range eng.Containers(t, sessionID) {
		name := strings.Join(c.Names, ",")
		if c.Labels[lab.LabelPart] == lab.PartSwitch {
			inv.Others = append(inv.Others, "switch "+name)
			continue
		}
		inv.Nodes = append(inv.Nodes, labtest.Instance{Node: c.Labels[lab.LabelNode], Name: name, Running: c.State == "running"})
	}
	for _, n := range eng.Networks(t, sessionID) {
		inv.Others = append(inv.Others, "network "+n.Name)
	}
	return inv
}
