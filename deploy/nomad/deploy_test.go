package nomad

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// skipWithoutDeploy is the message the deployment test skips with.
const skipWithoutDeploy = "set NOMAD_ADDR and EXAMLAB_NOMAD_DEPLOY=1 to deploy examlab as Nomad jobs on a real agent: " +
	"as root, `go build -o /usr/local/bin/examlab ./cmd/examlab`, `make image`, `make nomad-dev-deploy` (the dev " +
	"agent with the host volumes these jobs mount), then `make test-nomad-deploy` (see nomad/README.md, " +
	"\"Running examlab itself on the cluster\"). It registers examlab-redis, -api, -worker and -relay, writes the " +
	"nomad/jobs variable and removes both at the end: use an agent that runs no examlab of its own."

// Named bounds for what the test waits on.
const (
	// healthyTimeout covers an exec task's start (its chroot is built
	// from the client's /usr and friends) and its first passing checks.
	healthyTimeout = 5 * time.Minute
	requestTimeout = 30 * time.Second
	stopTimeout    = 2 * time.Minute
)

// publicURL is what the jobs are told browsers use; the terminal is
// opened with it as Origin, as a browser on that address would.
const publicURL = "http://examlab.test"

// platformJobs are the deployment's jobs in the order they start: Redis
// first, since the others find it in the service catalogue.
var platformJobs = []string{"redis", "worker", "api", "relay"}

// TestNomadDeployment registers Redis, api, worker and relay from this
// folder's job files on the agent at NOMAD_ADDR, waits until every check
// passes, and runs one candidate's session through the Nomad-hosted API:
// a sitting with the candidate on its roster, sign-in with the access
// code, start, a command in a terminal through the relay, an answer,
// submit, completed, and the archive in the shared state directory.
func TestNomadDeployment(t *testing.T) {
	if os.Getenv("NOMAD_ADDR") == "" || os.Getenv("EXAMLAB_NOMAD_DEPLOY") != "1" {
		t.Skip(skipWithoutDeploy)
	}
	examlab := os.Getenv("EXAMLAB_NOMAD_LABNET")
	if examlab == "" {
		examlab = "/usr/local/bin/examlab"
	}
	if fi, err := os.Stat(examlab); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("examlab binary %s: %v (build it: go build -o %s ./cmd/examlab; EXAMLAB_NOMAD_LABNET names another path)", examlab, err, examlab)
	}
	nc, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	statePath := checkAgent(t, nc)

	// The secrets every job reads from the nomad/jobs variable.
	adminToken := "deploy-admin-" + randomHex(t, 12)
	secrets := &api.Variable{Path: "nomad/jobs", Items: api.VariableItems{
		"redis_password": randomHex(t, 16),
		"admin_token":    adminToken,
		"nomad_token":    os.Getenv("NOMAD_TOKEN"),
	}}
	if _, _, err := nc.Variables().Create(secrets, nil); err != nil {
		t.Fatalf("put nomad/jobs: %v", err)
	}
	t.Cleanup(func() {
		if _, err := nc.Variables().Delete("nomad/jobs", nil); err != nil {
			t.Errorf("delete nomad/jobs: %v", err)
		}
	})

	vars := map[string]string{
		"examlab":      examlab,
		"nomad_addr":   os.Getenv("NOMAD_ADDR"),
		"nomad_cacert": os.Getenv("NOMAD_CACERT"),
		"public_url":   publicURL,
		"instances":    "1",
	}
	for _, name := range platformJobs {
		start := time.Now()
		deploy(t, nc, name, vars)
		t.Logf("examlab-%s healthy %s after registering", name, time.Since(start).Round(time.Second))
	}
	apiURL := serviceURL(t, nc, "examlab-api")
	relayURL := serviceURL(t, nc, "examlab-relay")
	t.Logf("api at %s, relay at %s, state in %s", apiURL, relayURL, statePath)

	admin := newClient(apiURL)
	admin.Token = adminToken
	code := enrol(t, admin, "ada@example.com")

	c := newClient(apiURL)
	var login struct {
		SessionID string `json:"session_id"`
		Token     string `json:"token"`
	}
	if status, err := c.Do("POST", "/api/login", map[string]string{"code": code}, &login); err != nil || status != 200 || login.SessionID == "" {
		t.Fatalf("sign in with the access code: %d %v %+v", status, err, login)
	}
	c.Token = login.Token
	id := login.SessionID
	var ex struct {
		Tasks []struct {
			ID string `json:"id"`
		} `json:"tasks"`
		Nodes []string `json:"nodes"`
	}
	if status, err := c.Do("GET", "/api/exam", nil, &ex); err != nil || status != 200 || len(ex.Tasks) == 0 || len(ex.Nodes) == 0 {
		t.Fatalf("exam: %d %v %+v", status, err, ex)
	}

	start := time.Now()
	s := c.StartLab(t, id)
	t.Logf("session %s ready %s after start: %d nodes", id, time.Since(start).Round(time.Second), len(s.Nodes))
	for _, n := range s.Nodes {
		if n.State != "running" {
			t.Errorf("node %s is %s", n.Name, n.State)
		}
	}
	labJob := jobspecs.JobName(id)
	job, _, err := nc.Jobs().Info(labJob, nil)
	if err != nil {
		t.Fatalf("the lab's job %s: %v", labJob, err)
	}
	if job.Meta[jobspecs.MetaSession] != id {
		t.Errorf("job %s meta %v names no session %s", labJob, job.Meta, id)
	}

	// A terminal through the Nomad-hosted relay, as the exam page opens it.
	node := ex.Nodes[0]
	term := testlab.OpenTerminal(t, relayURL, publicURL, c.Token, id, node)
	// The node's name on a line of its own: the prompt ("root@tokyo:~#")
	// and the echoed command line hold no such line.
	if rc := term.Probe(t, "hostname", "hostname"); rc != 0 || !strings.Contains(term.Output(), "\r"+node+"\r\n") {
		t.Errorf("hostname in %s: exit %d, output %q", node, rc, term.Output())
	}
	if rc := term.Probe(t, "work", "echo candidate-work > /root/work.txt"); rc != 0 {
		t.Fatalf("write the work file in %s: exit %d", node, rc)
	}
	term.Close()

	task := ex.Tasks[0].ID
	var saved store.Answer
	if status, err := c.Do("PUT", "/api/session/"+id+"/answers/"+task, map[string]any{"value": "from nomad"}, &saved); err != nil || status != 200 || saved.Revision != 1 {
		t.Fatalf("save answer: %d %v %+v", status, err, saved)
	}
	if status, err := c.Do("POST", "/api/session/"+id+"/submit", nil, nil); err != nil || status != 202 {
		t.Fatalf("submit: %d %v", status, err)
	}
	start = time.Now()
	c.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
	t.Logf("session %s completed %s after submit", id, time.Since(start).Round(time.Second))

	if _, _, err := nc.Jobs().Info(labJob, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("lab job %s after completion: %v, want it purged (404)", labJob, err)
	}
	checkArchive(t, admin, statePath, id, task, node, len(ex.Nodes))
}

// checkAgent checks the agent has a ready client with the host volumes
// the jobs mount and runs no examlab of its own (this test would replace
// and then remove it); it answers the state volume's path on the client.
func checkAgent(t *testing.T, nc *api.Client) string {
	t.Helper()
	jobs, _, err := nc.Jobs().List(nil)
	if err != nil {
		t.Fatalf("NOMAD_ADDR=%s is set but the agent does not answer: %v", os.Getenv("NOMAD_ADDR"), err)
	}
	for _, j := range jobs {
		if strings.HasPrefix(j.ID, "examlab-") && j.Status != "dead" {
			t.Fatalf("the agent runs job %s already: this test deploys its own examlab and removes it after; use an agent of its own", j.ID)
		}
	}
	if v, _, err := nc.Variables().Peek("nomad/jobs", nil); err == nil && v != nil {
		t.Fatal("the agent has a nomad/jobs variable already (an examlab's secrets?): this test writes its own and deletes it after; use an agent of its own")
	}
	nodes, _, err := nc.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, stub := range nodes {
		if stub.Status != "ready" {
			continue
		}
		n, _, err := nc.Nodes().Info(stub.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		state, redis := n.HostVolumes["examlab-state"], n.HostVolumes["examlab-redis"]
		if state != nil && redis != nil {
			return state.Path
		}
	}
	t.Fatal("no ready client has the host volumes examlab-state and examlab-redis: run the agent with nomad/agent/dev-deploy.hcl (make nomad-dev-deploy)")
	return ""
}

// deploy registers deploy/nomad/NAME.nomad.hcl with the variables it
// declares, waits until its allocations run with every check passing,
// and purges the job when the test ends.
func deploy(t *testing.T, nc *api.Client, name string, vars map[string]string) {
	t.Helper()
	src, err := os.ReadFile(name + ".nomad.hcl")
	if err != nil {
		t.Fatal(err)
	}
	var varFile strings.Builder
	for k, v := range vars {
		if !bytes.Contains(src, []byte(`variable "`+k+`"`)) {
			continue
		}
		if _, err := strconv.Atoi(v); err == nil {
			fmt.Fprintf(&varFile, "%s = %s\n", k, v)
		} else {
			fmt.Fprintf(&varFile, "%s = %q\n", k, v)
		}
	}
	job, err := nc.Jobs().ParseHCLOpts(&api.JobsParseRequest{JobHCL: string(src), Variables: varFile.String(), Canonicalize: true})
	if err != nil {
		t.Fatalf("parse %s.nomad.hcl: %v", name, err)
	}
	if _, _, err := nc.Jobs().Register(job, nil); err != nil {
		t.Fatalf("register %s: %v", *job.ID, err)
	}
	t.Cleanup(func() { purge(t, nc, *job.ID) })
	waitHealthy(t, nc, *job.ID, *job.TaskGroups[0].Count)
}

// waitHealthy waits until want allocations of the job run and each has
// all its checks passing; a failed task ends the wait with its events.
func waitHealthy(t *testing.T, nc *api.Client, jobID string, want int) {
	t.Helper()
	deadline := time.Now().Add(healthyTimeout)
	last := ""
	for {
		allocs, _, err := nc.Jobs().Allocations(jobID, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		healthy := 0
		var notes []string
		for _, a := range allocs {
			if a.DesiredStatus != api.AllocDesiredStatusRun {
				continue
			}
			for task, ts := range a.TaskStates {
				if ts.Failed {
					t.Fatalf("%s: task %s failed: %s", jobID, task, taskEvents(ts))
				}
				if ts.State != "running" {
					notes = append(notes, fmt.Sprintf("task %s %s: %s", task, ts.State, taskEvents(ts)))
				}
			}
			if a.ClientStatus != api.AllocClientStatusRunning {
				notes = append(notes, "allocation "+a.ClientStatus)
				continue
			}
			checks, err := nc.Allocations().Checks(a.ID, nil)
			if err != nil {
				notes = append(notes, "checks: "+err.Error())
				continue
			}
			passing := len(checks) > 0
			for _, c := range checks {
				if c.Status != "success" {
					passing = false
					notes = append(notes, fmt.Sprintf("check %q %s: %s", c.Check, c.Status, strings.TrimSpace(c.Output)))
				}
			}
			if passing {
				healthy++
			}
		}
		if healthy >= want {
			return
		}
		last = strings.Join(notes, "; ")
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d allocations healthy after %s: %s", jobID, healthy, want, healthyTimeout, last)
		}
		time.Sleep(time.Second)
	}
}

// taskEvents is a task's recent events, for failure messages.
func taskEvents(ts *api.TaskState) string {
	var out []string
	for _, e := range ts.Events {
		msg := e.DisplayMessage
		if msg == "" {
			msg = e.DriverError + e.SetupError
		}
		out = append(out, e.Type+": "+msg)
	}
	if len(out) > 5 {
		out = out[len(out)-5:]
	}
	return strings.Join(out, " | ")
}

// purge deregisters the job and waits until its allocations have stopped,
// so a next run starts on a clean agent.
func purge(t *testing.T, nc *api.Client, jobID string) {
	if _, _, err := nc.Jobs().Deregister(jobID, true, nil); err != nil {
		t.Errorf("purge %s: %v", jobID, err)
		return
	}
	deadline := time.Now().Add(stopTimeout)
	for time.Now().Before(deadline) {
		allocs, _, err := nc.Allocations().List(&api.QueryOptions{Filter: fmt.Sprintf("JobID == %q", jobID)})
		if err != nil {
			t.Errorf("allocations of %s: %v", jobID, err)
			return
		}
		running := 0
		for _, a := range allocs {
			if a.ClientStatus == api.AllocClientStatusRunning || a.ClientStatus == api.AllocClientStatusPending {
				running++
			}
		}
		if running == 0 {
			return
		}
		time.Sleep(time.Second)
	}
	t.Errorf("%s: allocations still running %s after the purge", jobID, stopTimeout)
}

// serviceURL is the address Nomad's service catalogue gives for a service.
func serviceURL(t *testing.T, nc *api.Client, service string) string {
	t.Helper()
	regs, _, err := nc.Services().Get(service, nil)
	if err != nil || len(regs) == 0 {
		t.Fatalf("service %s: %v %v", service, regs, err)
	}
	return fmt.Sprintf("http://%s:%d", regs[0].Address, regs[0].Port)
}

func newClient(base string) *testlab.Client {
	jar, _ := cookiejar.New(nil)
	return &testlab.Client{Base: base, HTTP: &http.Client{Jar: jar, Timeout: requestTimeout}}
}

// enrol creates a sitting open now with the candidate on its roster, as
// an admin would before exam day, and answers the candidate's access code.
func enrol(t *testing.T, admin *testlab.Client, email string) string {
	t.Helper()
	now := time.Now().UTC()
	sitting := "nomad-" + strings.ToLower(store.NewSessionID()[:6])
	body := map[string]any{"id": sitting, "title": "Deployed on Nomad", "capacity": 5,
		"opens": now.Add(-time.Minute).Format(time.RFC3339), "closes": now.Add(2 * time.Hour).Format(time.RFC3339)}
	if status, err := admin.Do("POST", "/api/admin/sittings", body, nil); err != nil || status != 201 {
		t.Fatalf("create sitting: %d %v", status, err)
	}
	if status, out := adminRaw(t, admin, "/api/admin/sittings/"+sitting+"/roster", "text/csv", "email,name\n"+email+",Ada Lovelace\n"); status != 201 {
		t.Fatalf("import roster: %d %s", status, out)
	}
	status, out := adminRaw(t, admin, "/api/admin/sittings/"+sitting+"/roster/export", "", "")
	if status != 200 {
		t.Fatalf("export roster: %d %s", status, out)
	}
	recs, err := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(out, []byte("\ufeff")))).ReadAll()
	if err != nil {
		t.Fatalf("roster export is no CSV: %v\n%s", err, out)
	}
	for _, r := range recs[1:] {
		if len(r) > 3 && r[0] == email && r[3] != "" {
			return r[3]
		}
	}
	t.Fatalf("no code for %s in the roster export:\n%s", email, out)
	return ""
}

// adminRaw posts a raw body as the admin and answers status and body.
func adminRaw(t *testing.T, admin *testlab.Client, path, contentType, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", admin.Base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+admin.Token)
	resp, err := admin.HTTP.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// checkArchive checks what the admin sees of the completed session and
// what the worker wrote to the shared state directory: the record, the
// answer, the terminal's log, a snapshot per node with its manifest, and
// the candidate's work in the node's snapshot.
func checkArchive(t *testing.T, admin *testlab.Client, statePath, id, task, node string, nodes int) {
	t.Helper()
	var det struct {
		Session   testlab.Session `json:"session"`
		Answers   []store.Answer  `json:"answers"`
		Snapshots []store.File    `json:"snapshots"`
	}
	if status, err := admin.Do("GET", "/api/admin/session/"+id+"/details", nil, &det); err != nil || status != 200 {
		t.Fatalf("details: %d %v", status, err)
	}
	if det.Session.Status != "completed" {
		t.Errorf("details: status %s, want completed", det.Session.Status)
	}
	if len(det.Answers) != 1 || det.Answers[0].TaskID != task || string(det.Answers[0].Value) != `"from nomad"` {
		t.Errorf("details: answers %+v", det.Answers)
	}
	// A filesystem tar and a log per node, and the manifest.
	if len(det.Snapshots) != 2*nodes+1 {
		t.Errorf("details: %d snapshot files, want %d: %+v", len(det.Snapshots), 2*nodes+1, det.Snapshots)
	}
	dir := filepath.Join(statePath, "sessions", id)
	for _, f := range []string{"metadata.json", filepath.Join(store.AnswersDir, task+".json"),
		filepath.Join(store.SnapshotDir, store.ManifestName)} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("archive file %s: %v", f, err)
		}
	}
	if logs, _ := filepath.Glob(filepath.Join(dir, store.TerminalDir, node+"*")); len(logs) == 0 {
		t.Errorf("no terminal log of %s in %s", node, filepath.Join(dir, store.TerminalDir))
	}
	var tarName, logName string
	for _, f := range det.Snapshots {
		switch {
		case strings.HasSuffix(f.Name, "-"+node+".tar"):
			tarName = f.Name
		case strings.HasSuffix(f.Name, "-"+node+".log"):
			logName = f.Name
		}
	}
	if tarName == "" || logName == "" {
		t.Fatalf("no snapshot or no log of %s in %+v", node, det.Snapshots)
	}
	// The node's log, which its client's engine kept and the lab's agent
	// read.
	if b, err := os.ReadFile(filepath.Join(dir, store.SnapshotDir, logName)); err != nil || !strings.Contains(string(b), "examlab node "+node+" ready") {
		t.Errorf("%s = %q, %v; want the node's ready line", logName, b, err)
	}
	got, err := fileInTar(filepath.Join(dir, store.SnapshotDir, tarName), "root/work.txt")
	if err != nil || got != "candidate-work\n" {
		t.Errorf("%s holds root/work.txt = %q, %v; want the candidate's work", tarName, got, err)
	}
	t.Logf("archive of %s in %s: %d snapshot files, %s holds the candidate's work, %s its ready line", id, dir, len(det.Snapshots), tarName, logName)
}

// fileInTar answers one file's content from a tar on disk.
func fileInTar(path, name string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%s not in %s", name, path)
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", path, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, err := io.ReadAll(tr)
			return string(b), err
		}
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
