package compose

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// This test needs the Docker engine (DOCKER_HOST, else the local socket),
// Docker Compose (Debian's docker-compose, or the docker compose plugin),
// the lab image and the xterm.js bundle: `make deps image web` provides
// them, and `make test` runs that first. build.sh builds the deployment's
// images, or finds them current.

// Named timeouts for the steps the test waits on.
const (
	// buildTimeout covers the first build on a machine: examlab compiled
	// statically from scratch, Redis installed from Debian's packages.
	buildTimeout   = 15 * time.Minute
	composeTimeout = 3 * time.Minute
	readyTimeout   = 90 * time.Second
	requestTimeout = 30 * time.Second
)

const composeFile = "docker-compose.yml"

// TestComposeDeployment builds the images, brings the deployment up under a
// project of its own on a free port, and runs one candidate's session
// through it as a browser would: login, start, a terminal, an answer,
// submit, archive and cleanup; then reviews it as admin, checks the labs
// cannot reach the deployment's containers, and that the session survives
// the containers being recreated. Everything is torn down at the end.
func TestComposeDeployment(t *testing.T) {
	cli := composeCLI(t)
	buildImages(t)
	d := start(t, cli)
	eng := testlab.NewEngine(t)

	c := d.client()
	id := c.Login(t, "grace@example.com")
	var ex struct {
		Tasks []struct {
			ID string `json:"id"`
		} `json:"tasks"`
		Nodes []string `json:"nodes"`
	}
	if code, err := c.Do("GET", "/api/exam", nil, &ex); err != nil || code != 200 || len(ex.Tasks) == 0 || len(ex.Nodes) == 0 {
		t.Fatalf("exam: %d %v %+v", code, err, ex)
	}

	s := c.StartLab(t, id)
	if len(s.Nodes) != len(ex.Nodes) {
		t.Fatalf("status reports %d nodes, the exam has %d", len(s.Nodes), len(ex.Nodes))
	}
	for _, n := range s.Nodes {
		if n.State != "running" {
			t.Errorf("node %s is %s", n.Name, n.State)
		}
	}
	// The lab is the host engine's: sibling containers stamped with this
	// deployment's instance. The shipped exam's lab has segments of its
	// own, wired by its switch: its nodes are on no engine network, so
	// they share none with examlab or Redis.
	cs := eng.Containers(t, id)
	nodes := 0
	for _, ct := range cs {
		if ct.State != "running" || ct.Labels[lab.LabelInstance] != d.project {
			t.Errorf("container %v: %s, instance %q", ct.Names, ct.State, ct.Labels[lab.LabelInstance])
		}
		if ct.Labels[lab.LabelPart] == lab.PartSwitch {
			continue
		}
		nodes++
		if mode := eng.Inspect(t, ct.ID)["HostConfig"].(map[string]any)["NetworkMode"]; mode != "none" {
			t.Errorf("container %v: network mode %v, want none", ct.Names, mode)
		}
	}
	if nodes != len(ex.Nodes) {
		t.Fatalf("engine has %d node containers for the session, the exam %d nodes: %s", nodes, len(ex.Nodes), testlab.Summary(cs))
	}
	if nets := eng.Networks(t, id); len(nets) != 0 {
		t.Errorf("lab networks = %+v; a segmented lab has none in the engine", nets)
	}
	_, examlabIPs := d.networks(t, "examlab")
	_, redisIPs := d.networks(t, "redis")

	// A candidate's terminal, from the browser's Origin.
	term := testlab.OpenTerminal(t, d.url, d.url, c.Token, id, "tokyo")
	if rc := term.Probe(t, "nc", "command -v nc"); rc != 0 {
		t.Fatalf("tokyo has no nc to probe with (exit %d)", rc)
	}
	if rc := term.Probe(t, "peer", "ping -c1 -W3 phoenix"); rc != 0 {
		t.Errorf("tokyo cannot ping phoenix through g1 and g4 (exit %d): the lab's segments do not work", rc)
	}
	for _, ip := range redisIPs {
		if rc := term.Probe(t, "redis", "nc -z -w 2 "+ip+" 6379"); rc == 0 {
			t.Errorf("tokyo reaches Redis at %s:6379", ip)
		}
	}
	for _, ip := range examlabIPs {
		if rc := term.Probe(t, "examlab", "nc -z -w 2 "+ip+" 8080"); rc == 0 {
			t.Errorf("tokyo reaches examlab at %s:8080", ip)
		}
	}
	if rc := term.Probe(t, "work", "echo candidate-work > /root/work.txt"); rc != 0 {
		t.Fatalf("write the work file: exit %d", rc)
	}
	term.Close()

	task := ex.Tasks[0].ID
	var saved store.Answer
	if code, err := c.Do("PUT", "/api/session/"+id+"/answers/"+task, map[string]any{"value": "from compose"}, &saved); err != nil || code != 200 || saved.Revision != 1 {
		t.Fatalf("save answer: %d %v %+v", code, err, saved)
	}
	if code, err := c.Do("POST", "/api/session/"+id+"/submit", nil, nil); err != nil || code != 202 {
		t.Fatalf("submit: %d %v", code, err)
	}
	c.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
	if cs := eng.Containers(t, id); len(cs) != 0 {
		t.Errorf("lab containers left after cleanup: %s", testlab.Summary(cs))
	}
	if nets := eng.Networks(t, id); len(nets) != 0 {
		t.Errorf("lab network left after cleanup: %+v", nets)
	}

	// The admin reviews it from the state volume: answers, snapshot files,
	// and the candidate's work inside a node's archive.
	admin := d.client()
	admin.Token = d.adminToken
	d.checkReview(t, admin, id, task, len(ex.Nodes))
	if got := d.tarFile(t, id, lab.ContainerName(id, "tokyo")+".tar", "root/work.txt"); got != "candidate-work\n" {
		t.Errorf("tokyo's archive holds work.txt = %q", got)
	}

	// Recreated containers find the session again: the record in the
	// state volume, the index in Redis's append-only file.
	d.compose(t, "down")
	d.up(t)
	d.checkReview(t, admin, id, task, len(ex.Nodes))
	var list struct {
		Total    int             `json:"total"`
		Sessions []store.Summary `json:"sessions"`
	}
	if code, err := admin.Do("GET", "/api/admin/sessions?q=grace@example.com", nil, &list); err != nil || code != 200 {
		t.Fatalf("admin sessions: %d %v", code, err)
	}
	if list.Total != 1 || list.Sessions[0].ID != id || list.Sessions[0].Status != "completed" {
		t.Errorf("admin sessions after recreating the containers = %+v, want %s completed", list, id)
	}
}

// composeCLI returns the Docker Compose command on this host: Debian's
// docker-compose, else the docker compose plugin.
func composeCLI(t *testing.T) []string {
	t.Helper()
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}
	}
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	t.Fatal("Docker Compose not found: run `make deps` (installs Debian's docker-compose)")
	return nil
}

// buildImages runs build.sh, which builds what changed and skips the rest.
func buildImages(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "./build.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	t.Logf("build.sh (%s):\n%s", time.Since(start).Round(time.Second), bytes.TrimSpace(out))
}

// deployment is one compose project of the test.
type deployment struct {
	cli        []string
	project    string
	env        []string
	url        string
	adminToken string
}

// start brings up a deployment under a fresh project name on a free
// loopback port; it is torn down, volumes and labs included, when the test
// ends.
func start(t *testing.T, cli []string) *deployment {
	t.Helper()
	project := "examlabt" + store.NewSessionID()[:8]
	port := freePort(t)
	d := &deployment{
		cli:        cli,
		project:    project,
		url:        "http://127.0.0.1:" + port,
		adminToken: "compose-admin-" + store.NewSessionID(),
	}
	d.env = append(os.Environ(),
		"EXAMLAB_PORT="+port,
		"EXAMLAB_PUBLIC_URL="+d.url,
		"EXAMLAB_ADMIN_TOKEN="+d.adminToken,
		// The project's own instance: its reaper leaves other tests' labs
		// on the shared engine alone, and the teardown finds its labs.
		"EXAMLAB_INSTANCE="+project,
	)
	if sock, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		d.env = append(d.env, "DOCKER_SOCKET="+sock)
	}
	t.Cleanup(func() { d.tearDown(t) })
	d.up(t)
	return d
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// run runs one compose command of the project and returns its output.
func (d *deployment) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), composeTimeout)
	defer cancel()
	argv := append(append(slices.Clone(d.cli[1:]), "-p", d.project, "-f", composeFile), args...)
	cmd := exec.CommandContext(ctx, d.cli[0], argv...)
	cmd.Env = d.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// compose runs a compose command, failing the test if it fails.
func (d *deployment) compose(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.run(args...)
	if err != nil {
		t.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// up starts the containers and waits until examlab is ready.
func (d *deployment) up(t *testing.T) {
	t.Helper()
	d.compose(t, "up", "-d")
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(readyTimeout)
	var last string
	for time.Now().Before(deadline) {
		resp, err := hc.Get(d.url + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
			last = fmt.Sprintf("%s %s", resp.Status, body)
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("examlab not ready at %s after %s: %s", d.url, readyTimeout, last)
}

// tearDown removes the project's containers, network and volumes, then any
// lab of its instance that a failed test left behind, and checks nothing of
// either is left.
func (d *deployment) tearDown(t *testing.T) {
	if t.Failed() {
		if out, err := d.run("logs", "--no-color", "--tail", "100"); err == nil {
			t.Logf("compose logs:\n%s", out)
		}
	}
	if out, err := d.run("down", "-v", "--remove-orphans"); err != nil {
		t.Errorf("compose down: %v\n%s", err, out)
	}
	instance := "label=" + lab.LabelInstance + "=" + d.project
	if ids := dockerIDs(t, "ps", "-aq", "--filter", instance); len(ids) > 0 {
		docker(t, append([]string{"rm", "-f"}, ids...)...)
	}
	if ids := dockerIDs(t, "network", "ls", "-q", "--filter", instance); len(ids) > 0 {
		docker(t, append([]string{"network", "rm"}, ids...)...)
	}
	project := "label=com.docker.compose.project=" + d.project
	for _, what := range [][]string{
		{"ps", "-aq", "--filter", instance},
		{"network", "ls", "-q", "--filter", instance},
		{"ps", "-aq", "--filter", project},
		{"network", "ls", "-q", "--filter", project},
		{"volume", "ls", "-q", "--filter", project},
	} {
		if ids := dockerIDs(t, what...); len(ids) > 0 {
			t.Errorf("left after teardown: docker %s: %v", strings.Join(what, " "), ids)
		}
	}
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Errorf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func dockerIDs(t *testing.T, args ...string) []string {
	t.Helper()
	return strings.Fields(docker(t, args...))
}

// networks returns the names of the networks a service's container is on
// and its addresses there.
func (d *deployment) networks(t *testing.T, service string) (names, ips []string) {
	t.Helper()
	id := strings.TrimSpace(d.compose(t, "ps", "-q", service))
	if id == "" {
		t.Fatalf("no container for service %s", service)
	}
	out := docker(t, "inspect", "-f", `{{range $name, $n := .NetworkSettings.Networks}}{{$name}} {{$n.IPAddress}}{{"\n"}}{{end}}`, id)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			names, ips = append(names, f[0]), append(ips, f[1])
		}
	}
	if len(ips) == 0 {
		t.Fatalf("service %s has no address: %q", service, out)
	}
	return names, ips
}

func (d *deployment) client() *testlab.Client {
	jar, _ := cookiejar.New(nil)
	return &testlab.Client{Base: d.url, HTTP: &http.Client{Jar: jar, Timeout: requestTimeout}}
}

// checkReview checks what an admin sees of the completed session.
func (d *deployment) checkReview(t *testing.T, admin *testlab.Client, id, task string, nodes int) {
	t.Helper()
	var det struct {
		Session   testlab.Session `json:"session"`
		Answers   []store.Answer  `json:"answers"`
		Snapshots []store.File    `json:"snapshots"`
	}
	if code, err := admin.Do("GET", "/api/admin/session/"+id+"/details", nil, &det); err != nil || code != 200 {
		t.Fatalf("details: %d %v", code, err)
	}
	if det.Session.Status != "completed" {
		t.Errorf("details: status %s, want completed", det.Session.Status)
	}
	if len(det.Answers) != 1 || det.Answers[0].TaskID != task || string(det.Answers[0].Value) != `"from compose"` {
		t.Errorf("details: answers %+v", det.Answers)
	}
	// A filesystem tar and a log per node, and the manifest.
	if len(det.Snapshots) != 2*nodes+1 {
		t.Errorf("details: %d snapshot files, want %d", len(det.Snapshots), 2*nodes+1)
	}
	for _, f := range det.Snapshots {
		if f.Name != store.ManifestName && (f.SHA256 == "" || f.Size == 0) {
			t.Errorf("snapshot %s listed as %d bytes, sha256 %q", f.Name, f.Size, f.SHA256)
		}
	}
}

// tarFile downloads a snapshot tar as an admin and returns one file in it.
func (d *deployment) tarFile(t *testing.T, id, tarName, name string) string {
	t.Helper()
	req, err := http.NewRequest("GET", d.url+"/api/admin/session/"+id+"/files/snapshots/"+tarName, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+d.adminToken)
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("download %s: %v", tarName, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("download %s: %s", tarName, resp.Status)
	}
	tr := tar.NewReader(resp.Body)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			t.Fatalf("read %s: %v", tarName, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}
