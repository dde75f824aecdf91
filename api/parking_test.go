package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// parkTimeout bounds waiting for a start to be parked or to resume; the
// sweeps run every second in these stacks.
const parkTimeout = time.Minute

// internalAgent is the address a runtime's own error names.
const internalAgent = "10.77.0.9:4646"

// refused is the error a runtime returns when its agent refuses the
// connection.
func refused() error {
	op := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	return fmt.Errorf("look up job: Get \"http://%s/v1/job/exam-x\": %w: %w", internalAgent, op, lab.ErrUnavailable)
}

// waitFor polls the candidate's view until ok holds.
func waitFor(t *testing.T, c *testlab.Client, id string, ok func(testlab.Session) bool) testlab.Session {
	t.Helper()
	var s testlab.Session
	for deadline := time.Now().Add(parkTimeout); ; time.Sleep(20 * time.Millisecond) {
		if s = c.Status(t, id); ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s: %+v after %s", id, s, parkTimeout)
		}
	}
}

type readyAnswer struct {
	Status  string            `json:"status"`
	Checks  map[string]string `json:"checks"`
	Reasons map[string]string `json:"reasons"`
	raw     string
}

func readyz(t *testing.T, base string) (int, readyAnswer) {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r readyAnswer
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("readyz answered %s", b)
	}
	r.raw = string(b)
	return resp.StatusCode, r
}

// adminQueue is the part of GET /api/admin/queue these tests read.
type adminQueue struct {
	Hold     *store.Hold `json:"hold"`
	Sittings []struct {
		Queued []struct {
			SessionID string           `json:"session_id"`
			Parking   *session.Parking `json:"parking"`
		} `json:"queued"`
	} `json:"sittings"`
}

func readQueue(t *testing.T, st *testlab.Stack) adminQueue {
	t.Helper()
	var q adminQueue
	if code, err := st.Admin().Do("GET", "/api/admin/queue", nil, &q); err != nil || code != 200 {
		t.Fatalf("admin queue: %d %v", code, err)
	}
	return q
}

func sessionAudit(t *testing.T, st *testlab.Stack, id string) []string {
	t.Helper()
	var d struct {
		Audit []struct {
			Action string `json:"action"`
		} `json:"audit"`
	}
	if code, err := st.Admin().Do("GET", "/api/admin/session/"+id+"/details", nil, &d); err != nil || code != 200 {
		t.Fatalf("details: %d %v", code, err)
	}
	var out []string
	for _, a := range d.Audit {
		out = append(out, a.Action)
	}
	return out
}

// TestStartParksWhileTheRuntimeIsAway: with the lab runtime unreachable,
// /readyz answers 503 naming it, a start is parked (not failed) — the
// candidate reads the plain words, the admins the runtime's own — a later
// start waits behind it, and once the runtime answers both labs come up,
// the parked one first in line, without anyone's help.
func TestStartParksWhileTheRuntimeIsAway(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	rt := labtest.NewFlaky(labtest.NewMemory(labtest.MemoryOptions{}))
	rt.FailWhen(func(c labtest.Call) error {
		if down.Load() && (c.Method == "Provision" || c.Method == "Ping" || c.Method == "Status") {
			return refused()
		}
		return nil
	})
	st := testlab.Start(t, testlab.Options{Platform: platform.Options{Runtime: rt}, Config: func(c *config.Config) {
		c.AdmitEvery = time.Second
	}})

	code, r := readyz(t, st.URL)
	if code != http.StatusServiceUnavailable || r.Checks["runtime"] != "failing" || r.Checks["redis"] != "ok" ||
		r.Reasons["runtime"] != "unreachable: connection refused" || strings.Contains(r.raw, internalAgent) {
		t.Fatalf("readyz while the runtime is away: %d %s", code, r.raw)
	}

	a := st.Client()
	idA := a.Login(t, "a@example.com")
	start := time.Now()
	if code, err := a.Do("POST", "/api/session/"+idA+"/start", nil, nil); err != nil || (code != 202 && code != 200) {
		t.Fatalf("start: %d %v", code, err)
	}
	s := waitFor(t, a, idA, func(s testlab.Session) bool { return s.Status == "queued" && s.Error != "" })
	t.Logf("start parked %v after it was made (runtime refusing)", time.Since(start).Round(time.Millisecond))
	if s.Error != session.NoticeUnavailable || strings.Contains(s.Error, internalAgent) {
		t.Fatalf("the candidate reads %q, want %q", s.Error, session.NoticeUnavailable)
	}

	b := st.Client()
	idB := b.Login(t, "b@example.com")
	if code, err := b.Do("POST", "/api/session/"+idB+"/start", nil, nil); err != nil || (code != 202 && code != 200) {
		t.Fatalf("start b: %d %v", code, err)
	}
	var place struct {
		Status   string `json:"status"`
		Position int    `json:"queue_position"`
	}
	if code, err := b.Do("GET", "/api/session/"+idB+"/status", nil, &place); err != nil || code != 200 || place.Status != "queued" || place.Position != 2 {
		t.Fatalf("b after a parked start: %d %v %+v, want queued second in line", code, err, place)
	}
	q := readQueue(t, st)
	if q.Hold == nil || q.Hold.Reason != session.ParkUnavailable || !strings.Contains(q.Hold.Detail, internalAgent) {
		t.Fatalf("admin queue hold %+v, want the runtime's reason", q.Hold)
	}
	if len(q.Sittings) == 0 || len(q.Sittings[0].Queued) != 2 || q.Sittings[0].Queued[0].SessionID != idA ||
		q.Sittings[0].Queued[0].Parking == nil || !strings.Contains(q.Sittings[0].Queued[0].Parking.Detail, internalAgent) {
		t.Fatalf("admin queue %+v, want a parked first with its reason, then b", q)
	}
	var d struct {
		Session struct {
			Error string `json:"error"`
		} `json:"session"`
		Metadata struct {
			Parking *session.Parking `json:"parking"`
		} `json:"metadata"`
	}
	if code, err := st.Admin().Do("GET", "/api/admin/session/"+idA+"/details", nil, &d); err != nil || code != 200 ||
		!strings.Contains(d.Session.Error, internalAgent) || d.Metadata.Parking == nil {
		t.Fatalf("details: %d %v %+v, want the runtime's whole reason", code, err, d)
	}

	req, _ := http.NewRequest("GET", st.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+st.AdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), "examlab_parked_starts 1\n") || !strings.Contains(string(m), `examlab_admission_held{reason="unavailable"} 1`) {
		t.Fatalf("metrics do not show the parked start and the hold:\n%s", m)
	}

	down.Store(false)
	a.WaitStatus(t, idA, parkTimeout, "ready")
	b.WaitStatus(t, idB, parkTimeout, "ready")
	if acts := sessionAudit(t, st, idA); !slices.Contains(acts, "parked") || !slices.Contains(acts, "resumed") {
		t.Fatalf("audit of a %v, want parked and resumed", acts)
	}
	if s := a.Status(t, idA); s.Error != "" {
		t.Fatalf("the candidate still reads %q once ready", s.Error)
	}
	if code, r := readyz(t, st.URL); code != http.StatusOK || r.Status != "ready" {
		t.Fatalf("readyz once the runtime answers: %d %s", code, r.raw)
	}
}

// TestStartParksUntilALabEnds: the runtime has room for one lab. The
// second start is parked with "your lab is being prepared"; the third
// waits behind it; when the first lab ends the second comes up; the third
// then tries, finds no room and is parked in turn, and comes up when the
// second's lab ends.
func TestStartParksUntilALabEnds(t *testing.T) {
	mem := labtest.NewMemory(labtest.MemoryOptions{})
	rt := labtest.NewFlaky(mem)
	rt.FailWhen(func(c labtest.Call) error {
		if c.Method != "Provision" {
			return nil
		}
		labs, err := mem.Labs(t.Context())
		if err != nil {
			return err
		}
		if len(labs) >= 1 && !slices.Contains(labs, c.SessionID) {
			return fmt.Errorf("placement at %s: cpu exhausted on 1 client: %w", internalAgent, lab.ErrNoCapacity)
		}
		return nil
	})
	st := testlab.Start(t, testlab.Options{Platform: platform.Options{Runtime: rt}, Config: func(c *config.Config) {
		c.AdmitEvery = time.Second
	}})
	clients := make([]*testlab.Client, 3)
	ids := make([]string, 3)
	for i := range clients {
		clients[i] = st.Client()
		ids[i] = clients[i].Login(t, fmt.Sprintf("c%d@example.com", i))
	}
	clients[0].StartLab(t, ids[0])
	if code, err := clients[1].Do("POST", "/api/session/"+ids[1]+"/start", nil, nil); err != nil || (code != 202 && code != 200) {
		t.Fatalf("start: %d %v", code, err)
	}
	s := waitFor(t, clients[1], ids[1], func(s testlab.Session) bool { return s.Status == "queued" && s.Error != "" })
	if s.Error != session.NoticeWaitingRoom || strings.Contains(s.Error, internalAgent) {
		t.Fatalf("the candidate reads %q, want %q", s.Error, session.NoticeWaitingRoom)
	}
	if code, err := clients[2].Do("POST", "/api/session/"+ids[2]+"/start", nil, nil); err != nil || (code != 202 && code != 200) {
		t.Fatalf("start: %d %v", code, err)
	}
	if s := clients[2].Status(t, ids[2]); s.Status != "queued" {
		t.Fatalf("a later start is %s while admission is held, want queued", s.Status)
	}
	if q := readQueue(t, st); q.Hold == nil || q.Hold.Reason != session.ParkNoCapacity {
		t.Fatalf("admin queue hold %+v, want no-capacity", q.Hold)
	}

	if code, err := clients[0].Do("POST", "/api/session/"+ids[0]+"/submit", nil, nil); err != nil || code >= 300 {
		t.Fatalf("submit: %d %v", code, err)
	}
	clients[1].WaitStatus(t, ids[1], parkTimeout, "ready")
	// The second's lab took the room: the third tries next, alone, and is
	// parked again (not failed).
	s = waitFor(t, clients[2], ids[2], func(s testlab.Session) bool { return s.Status == "queued" && s.Error != "" })
	if s.Error != session.NoticeWaitingRoom {
		t.Fatalf("the third candidate reads %q, want %q", s.Error, session.NoticeWaitingRoom)
	}
	if code, err := clients[1].Do("POST", "/api/session/"+ids[1]+"/submit", nil, nil); err != nil || code >= 300 {
		t.Fatalf("submit: %d %v", code, err)
	}
	clients[2].WaitStatus(t, ids[2], parkTimeout, "ready")
	if acts := sessionAudit(t, st, ids[1]); !slices.Contains(acts, "parked") || !slices.Contains(acts, "resumed") {
		t.Fatalf("audit %v, want parked and resumed", acts)
	}
}

// TestStartAgainstADeadNomadAgentParks: a Nomad runtime whose agent
// address refuses connections (a port listened on and closed). /readyz
// says the runtime is unreachable, and a start is parked with the plain
// words rather than failing after retries. How long it took is logged.
func TestStartAgainstADeadNomadAgentParks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rt, err := nomad.New(nomad.Options{Client: &api.Config{Address: "http://" + addr}})
	if err != nil {
		t.Fatal(err)
	}
	st := testlab.Start(t, testlab.Options{Platform: platform.Options{Runtime: rt}, Config: func(c *config.Config) {
		c.Runtime = config.RuntimeNomad
	}})
	code, r := readyz(t, st.URL)
	if code != http.StatusServiceUnavailable || r.Reasons["runtime"] != "unreachable: connection refused" || strings.Contains(r.raw, addr) {
		t.Fatalf("readyz with a dead agent: %d %s", code, r.raw)
	}
	c := st.Client()
	id := c.Login(t, "nomad@example.com")
	start := time.Now()
	if code, err := c.Do("POST", "/api/session/"+id+"/start", nil, nil); err != nil || (code != 202 && code != 200) {
		t.Fatalf("start: %d %v", code, err)
	}
	s := waitFor(t, c, id, func(s testlab.Session) bool { return s.Status == "queued" && s.Error != "" || s.Status == "failed" })
	t.Logf("start against a dead Nomad agent parked %v after it was made", time.Since(start).Round(time.Millisecond))
	if s.Status != "queued" || s.Error != session.NoticeUnavailable || strings.Contains(s.Error, addr) {
		t.Fatalf("the candidate sees %+v, want parked with %q", s, session.NoticeUnavailable)
	}
	// The audit entry follows the record's change.
	for deadline := time.Now().Add(parkTimeout); !slices.Contains(sessionAudit(t, st, id), "parked"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("audit %v, want parked", sessionAudit(t, st, id))
		}
	}
}
