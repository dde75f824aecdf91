package nomad_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// TestCandidateLifecycleOnNomad runs the product with EXAMLAB_RUNTIME=nomad
// against the fake Nomad API, whose client runs the labs on real containers.
func TestCandidateLifecycleOnNomad(t *testing.T) {
	env := newFakeEnv(t)
	lifecycle(t, env.rt, func(t *testing.T, jobID string) {
		if env.fake.Job(jobID) != nil {
			t.Errorf("job %s is still registered after submit", jobID)
		}
		purged := false
		for _, d := range env.fake.Deregisters() {
			purged = purged || (d.JobID == jobID && d.Purge)
		}
		if !purged {
			t.Errorf("job %s was not deregistered with purge: %+v", jobID, env.fake.Deregisters())
		}
	})
}

// lifecycle walks two candidates through the product on rt: login, start,
// all eight nodes running, exec and name resolution inside a lab, no route
// into the other candidate's lab, submit, archive and cleanup. jobGone
// checks the cluster no longer has a session's job.
func lifecycle(t *testing.T, rt *nomad.Runtime, jobGone func(t *testing.T, jobID string)) {
	st := testlab.Start(t, testlab.Options{
		Config:   func(c *config.Config) { c.Runtime = config.RuntimeNomad },
		Platform: platform.Options{Runtime: rt, NoScheduler: true},
	})
	eng := testlab.NewEngine(t)
	ctx := context.Background()
	a, b := st.Client(), st.Client()
	idA := a.Login(t, "ada@example.com")
	idB := b.Login(t, "bob@example.com")
	for _, id := range []string{idA, idB} {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), testlab.ArchiveTimeout)
			defer cancel()
			if err := rt.Destroy(ctx, id); err != nil {
				t.Errorf("destroy %s: %v", id, err)
			}
		})
	}
	for _, c := range []struct {
		cl *testlab.Client
		id string
	}{{a, idA}, {b, idB}} {
		if code, err := c.cl.Do("POST", "/api/session/"+c.id+"/start", nil, nil); err != nil || (code != 202 && code != 200) {
			t.Fatalf("start %s: %d %v", c.id, code, err)
		}
	}
	s := a.WaitStatus(t, idA, testlab.ProvisionTimeout, "ready")
	b.WaitStatus(t, idB, testlab.ProvisionTimeout, "ready")
	t.Logf("sessions %s and %s ready", idA, idB)

	names := exam.Default().NodeNames()
	if len(s.Nodes) != len(names) {
		t.Fatalf("session shows %d nodes, want %d", len(s.Nodes), len(names))
	}
	for i, n := range s.Nodes {
		if n.Name != names[i] || n.State != string(lab.StateRunning) {
			t.Errorf("node %d: %+v", i, n)
		}
	}
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: idA})
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := rt.Status(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.State != lab.StateRunning || n.AllocID == "" || n.ClientNode == "" {
			t.Errorf("node %s: state %s alloc %q client %q", n.Name, n.State, n.AllocID, n.ClientNode)
		}
	}
	t.Logf("lab %s: allocation %s on client %s", idA, nodes[0].AllocID, nodes[0].ClientNode)

	out, code, err := lab.Output(ctx, rt, idA, "tokyo", "hostname")
	if err != nil || code != 0 || strings.TrimSpace(out) != "tokyo" {
		t.Fatalf("hostname in tokyo = %q, exit %d, %v", out, code, err)
	}
	t.Logf("exec hostname in tokyo: %s", strings.TrimSpace(out))
	// The shipped exam's branches reach phoenix through g1 and g4 from the
	// start.
	out, code, err = lab.Output(ctx, rt, idA, "tokyo", "ping", "-c1", "-W3", "phoenix")
	if err != nil || code != 0 {
		t.Errorf("tokyo cannot ping phoenix by name: exit %d %v\n%s", code, err, out)
	} else {
		t.Logf("tokyo pings phoenix by name: %s", firstLine(out))
	}

	// The other candidate's lab has the same addresses: a listener only in
	// bob's phoenix answers bob's tokyo and never ada's, whose phoenix
	// has none.
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	p, err := rt.Exec(lctx, idB, "phoenix", lab.ExecRequest{Cmd: []string{"nc", "-lk", "7799"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	reached := false
	for range 20 {
		if _, code, _ := lab.Output(ctx, rt, idB, "tokyo", "nc", "-z", "-w2", "phoenix", "7799"); code == 0 {
			reached = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !reached {
		t.Fatal("bob's tokyo never reached the listener in bob's phoenix")
	}
	if _, code, _ := lab.Output(ctx, rt, idA, "tokyo", "nc", "-z", "-w2", "phoenix", "7799"); code == 0 {
		t.Error("ada's tokyo reaches the listener in bob's phoenix")
	} else {
		t.Log("ada's tokyo cannot reach bob's phoenix; bob's tokyo can")
	}
	if _, code, _ := lab.Output(ctx, rt, idA, "tokyo", "getent", "hosts", lab.ContainerName(idB, "tokyo")); code == 0 {
		t.Errorf("ada's tokyo resolves a container of bob's lab")
	}

	if _, code, err := lab.Output(ctx, rt, idA, "tokyo", "sh", "-c", "echo candidate-work > /root/work.txt"); code != 0 || err != nil {
		t.Fatalf("write work file: %d %v", code, err)
	}
	if code, err := a.Do("POST", "/api/session/"+idA+"/submit", nil, nil); err != nil || code != 202 {
		t.Fatalf("submit: %d %v", code, err)
	}
	a.WaitStatus(t, idA, testlab.ArchiveTimeout, "completed")

	snapDir := filepath.Join(st.Config.StateDir, "sessions", idA, store.SnapshotDir)
	var m store.Manifest
	raw, err := os.ReadFile(filepath.Join(snapDir, store.ManifestName))
	if err != nil || json.Unmarshal(raw, &m) != nil {
		t.Fatalf("manifest: %v", err)
	}
	if m.Runtime != config.RuntimeNomad || len(m.Missing) != 0 || len(m.Files) != 2*len(names) {
		t.Fatalf("manifest: runtime %q, %d files, missing %v; want nomad, a tar and a log per node", m.Runtime, len(m.Files), m.Missing)
	}
	var total int64
	for _, f := range m.Files {
		data, err := os.ReadFile(filepath.Join(snapDir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Errorf("%s: size %d sha %x, manifest says %d %s", f.Name, len(data), sum, f.Size, f.SHA256)
		}
		total += f.Size
	}
	t.Logf("archive: %d files, %d bytes, manifest checksums match", len(m.Files), total)
	f, err := os.Open(filepath.Join(snapDir, lab.ContainerName(idA, "tokyo")+".tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := labtest.TarEntries(t, f)["root/work.txt"]; got != "candidate-work\n" {
		t.Errorf("tokyo's archive holds work.txt = %q", got)
	}

	jobGone(t, jobspecs.JobName(idA))
	if cs := eng.Containers(t, idA); len(cs) != 0 {
		t.Errorf("containers of %s left after submit: %s", idA, testlab.Summary(cs))
	}
	if nets := eng.Networks(t, idA); len(nets) != 0 {
		t.Errorf("networks of %s left after submit: %+v", idA, nets)
	}
	if s := b.Status(t, idB); s.Status != "ready" {
		t.Errorf("bob's session is %s after ada's submit", s.Status)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
