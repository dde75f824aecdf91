// Package nomadfake is an in-process stand-in for the parts of the Nomad
// HTTP API that examlab's Nomad runtime uses. It records and checks what
// it is sent — register payloads and the index they are conditioned on,
// deregisters and their purge flag, exec frames — and its one "client"
// runs each lab for real: a flat lab's session network through the same
// labnet code a Nomad client runs, one Docker container per node task
// through the docker package, and a segmented lab's switch, wiring, files
// and setup through the docker package's PrepareLab, as labnet up runs it
// on a client; alloc exec is bridged to docker exec and the fs logs API to
// docker logs (and to what the lifecycle tasks wrote to stderr).
package nomadfake

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// Options configure a Server. Zero values mean the documented defaults.
type Options struct {
	// Docker runs the labs. Required.
	Docker *docker.Runtime
	// Nodes is how many node tasks a valid job has; 0 accepts any number
	// from one up, as labs of several exams (or of the contract suite's
	// one-node lab beside an eight-node one) share the fake.
	Nodes int
	// MHzPerCPU converts task CPU back into cpus; 0 means
	// jobspecs.DefaultMHzPerCPU.
	MHzPerCPU int
	// Agent runs `examlab labnet VERB …` (args from "labnet" on) for an
	// alloc exec into a lab's labnet-watch task, as the client runs the
	// examlab binary there, and returns its exit code. The fake first
	// checks the command: the job's labnet binary, a verb of the lab
	// agent, this session and allocation, a node of the lab. Nil refuses
	// execs into labnet-watch.
	Agent func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

// Register is one job register request the fake received.
type Register struct {
	Job            *api.Job
	EnforceIndex   bool
	JobModifyIndex uint64
	// Problems found by CheckJob; a job with problems is refused.
	Problems []string
	// Err is the refusal sent back, "" when the job was registered.
	Err string
}

// Deregister is one job deregister request.
type Deregister struct {
	JobID string
	Purge bool
}

// Exec is one alloc exec session.
type Exec struct {
	AllocID string
	Task    string
	Command []string
	TTY     bool
	// Frames are the input frames received, heartbeats included.
	Frames   []api.ExecStreamingInput
	ExitCode int
	Done     bool
}

// Request is one HTTP request, with the blocking index it carried.
type Request struct {
	Method string
	Path   string
	Index  uint64
}

// Failure makes a node task fail when its allocation is placed.
type Failure string

// Failures the fake can report for a task.
const (
	// DriverFailure: the driver could not start the task (as when its
	// image is missing and cannot be pulled).
	DriverFailure Failure = "driver"
	// OOMKilled: the task started and was killed for lack of memory.
	OOMKilled Failure = "oom"
)

// Server is a fake Nomad HTTP API. Its methods are safe for concurrent use.
type Server struct {
	opts   Options
	srv    *httptest.Server
	nodeID string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	index   uint64
	changed chan struct{}
	jobs    map[string]*api.Job
	allocs  map[string]*allocation
	evals   map[string]*api.Evaluation

	registers   []Register
	deregisters []Deregister
	execs       []*Exec
	requests    []Request
	unknown     []string

	failures   map[string]failureSpec
	host       clientState // the fake client's node status (hosts.go)
	noCapacity string
	plan       planState
	slowLabnet time.Duration
	labnetExit time.Duration
	onJobRead  func(jobID string)
	// refusePurge, when set, is the error every purge answers with.
	refusePurge string
}

type failureSpec struct {
	kind    Failure
	message string
}

// allocation is the fake's record of one allocation and the lab it runs.
type allocation struct {
	*api.Allocation
	session string
	lab     lab.Spec
	// stderr is what the lifecycle tasks wrote to their stderr, by task.
	stderr map[string]string
	torn   bool
	// files are the paths, in the allocation's file system, of the files
	// its tasks have written and the fake serves (see statFile).
	files map[string]bool
	// placed is closed once placement has finished, whatever its outcome.
	placed chan struct{}
}

// New starts a fake on a loopback port; Close stops it and removes every
// lab it still runs.
func New(opts Options) (*Server, error) {
	if opts.Docker == nil {
		return nil, errors.New("nomadfake: Options.Docker is required")
	}
	if opts.MHzPerCPU == 0 {
		opts.MHzPerCPU = jobspecs.DefaultMHzPerCPU
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:     opts,
		nodeID:   newID(),
		ctx:      ctx,
		cancel:   cancel,
		index:    1,
		changed:  make(chan struct{}),
		jobs:     map[string]*api.Job{},
		allocs:   map[string]*allocation{},
		evals:    map[string]*api.Evaluation{},
		failures: map[string]failureSpec{},
		plan:     planState{placedOn: map[string]int{}, oversub: true},
	}
	s.srv = httptest.NewServer(s.routes())
	return s, nil
}

// URL is the address to give the Nomad API client.
func (s *Server) URL() string { return s.srv.URL }

// Close stops the fake and tears down every lab it placed.
func (s *Server) Close() {
	// Placements in progress give up first, then every lab still standing
	// is removed.
	s.cancel()
	s.mu.Lock()
	all := make([]*allocation, 0, len(s.allocs))
	for _, a := range s.allocs {
		all = append(all, a)
	}
	s.mu.Unlock()
	for _, a := range all {
		s.teardown(a)
	}
	s.srv.Close()
	s.wg.Wait()
}

// FailTask makes the node task fail on every placement from now on.
func (s *Server) FailTask(task string, kind Failure, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures[task] = failureSpec{kind, message}
}

// ClearFailures lets every task start again on later placements.
func (s *Server) ClearFailures() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = map[string]failureSpec{}
}

// NoCapacity makes every placement from now on fail for lack of the
// dimension ("memory", "cpu"), while plans still find room: the room a
// plan saw was taken before the register after it; "" places again.
// SetClients bounds plans and placements alike.
func (s *Server) NoCapacity(dimension string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noCapacity = dimension
}

// SlowLabnet makes a segmented lab's labnet-up run for d after its nodes
// run, before it exits: the lab is not ready meanwhile.
func (s *Server) SlowLabnet(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slowLabnet = d
}

// SlowLabnetExit makes a segmented lab's labnet-up run on for d after the
// lab's agent has left its state (the lab is wired and prepared), as on a
// client, where labnet-up notices the state, exits, and its exit reaches
// the servers some time later.
func (s *Server) SlowLabnetExit(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.labnetExit = d
}

// RefusePurge makes every purge of a job fail with a server error saying
// message, as servers that will not let go of a stopped job do; stopping
// a job still works. "" lets purges through again.
func (s *Server) RefusePurge(message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refusePurge = message
}

// OnJobRead calls fn after the fake has read a job (or found none) for a
// GET of it and before it answers: a test can change the job there to play
// a writer racing the reader.
func (s *Server) OnJobRead(fn func(jobID string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onJobRead = fn
}

// Put registers job as an operator's `nomad job run` would, without
// conditions, and returns its new job modify index.
func (s *Server) Put(job *api.Job) (uint64, error) {
	idx, _, err := s.register(api.JobRegisterRequest{Job: job}, false)
	return idx, err
}

// Job returns a copy of the registered job, nil if there is none.
func (s *Server) Job(id string) *api.Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return nil
	}
	return cloneJob(j)
}

// Registers returns the register requests received so far.
func (s *Server) Registers() []Register {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Register(nil), s.registers...)
}

// Deregisters returns the deregister requests received so far.
func (s *Server) Deregisters() []Deregister {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Deregister(nil), s.deregisters...)
}

// Execs returns copies of the exec sessions so far.
func (s *Server) Execs() []Exec {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Exec, len(s.execs))
	for i, e := range s.execs {
		out[i] = *e
		out[i].Frames = append([]api.ExecStreamingInput(nil), e.Frames...)
	}
	return out
}

// Requests returns the HTTP requests so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Unknown lists requests to endpoints the fake does not serve.
func (s *Server) Unknown() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.unknown...)
}

// Alloc returns a copy of the allocation's task states and statuses.
func (s *Server) Alloc(id string) *api.Allocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.allocs[id]
	if a == nil {
		return nil
	}
	c := *a.Allocation
	return &c
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status/leader", func(w http.ResponseWriter, r *http.Request) {
		s.reply(w, "127.0.0.1:4647")
	})
	mux.HandleFunc("GET /v1/jobs", s.listJobs)
	mux.HandleFunc("PUT /v1/jobs", s.registerJob)
	mux.HandleFunc("POST /v1/jobs", s.registerJob)
	mux.HandleFunc("GET /v1/job/{id}", s.getJob)
	mux.HandleFunc("DELETE /v1/job/{id}", s.deregisterJob)
	mux.HandleFunc("GET /v1/job/{id}/allocations", s.jobAllocs)
	mux.HandleFunc("GET /v1/job/{id}/evaluations", s.jobEvals)
	mux.HandleFunc("PUT /v1/job/{id}/plan", s.planJob)
	mux.HandleFunc("POST /v1/job/{id}/plan", s.planJob)
	mux.HandleFunc("GET /v1/operator/scheduler/configuration", s.schedulerConfig)
	mux.HandleFunc("PUT /v1/job/{id}/evaluate", s.evaluateJob)
	mux.HandleFunc("POST /v1/job/{id}/evaluate", s.evaluateJob)
	mux.HandleFunc("GET /v1/evaluation/{id}", s.getEval)
	mux.HandleFunc("GET /v1/allocation/{id}", s.getAlloc)
	mux.HandleFunc("GET /v1/node/{id}", s.getNode)
	mux.HandleFunc("GET /v1/nodes", s.listNodes)
	mux.HandleFunc("GET /v1/allocations", s.listAllocs)
	mux.HandleFunc("GET /v1/client/allocation/{id}/exec", s.exec)
	mux.HandleFunc("PUT /v1/client/allocation/{id}/restart", s.restart)
	mux.HandleFunc("POST /v1/client/allocation/{id}/restart", s.restart)
	mux.HandleFunc("GET /v1/client/fs/logs/{id}", s.logs)
	mux.HandleFunc("GET /v1/client/fs/stat/{id}", s.statFile)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.unknown = append(s.unknown, r.Method+" "+r.URL.Path)
		s.mu.Unlock()
		http.Error(w, "nomadfake: endpoint not served", http.StatusNotFound)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idx, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
		s.mu.Lock()
		s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Index: idx})
		s.mu.Unlock()
		mux.ServeHTTP(w, r)
	})
}

// bump records a change: it advances the index and wakes blocking
// queries. The caller holds mu.
func (s *Server) bump() uint64 {
	s.index++
	close(s.changed)
	s.changed = make(chan struct{})
	return s.index
}

// block waits, as a blocking query does, until the index passes the one
// the request carries or its wait time (default 5m) is over.
func (s *Server) block(r *http.Request) {
	q := r.URL.Query()
	idx, _ := strconv.ParseUint(q.Get("index"), 10, 64)
	if idx == 0 {
		return
	}
	wait := 5 * time.Minute
	if d, err := time.ParseDuration(q.Get("wait")); err == nil && d > 0 {
		wait = d
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		s.mu.Lock()
		if s.index > idx {
			s.mu.Unlock()
			return
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *Server) headers(w http.ResponseWriter) {
	s.mu.Lock()
	idx := s.index
	s.mu.Unlock()
	s.headersAt(w, idx)
}

// headersAt sets the response headers with X-Nomad-Index = idx. A write
// answers with the index of the write itself, as Nomad does, never a later
// one: the scheduler goroutine a write starts may already have moved the
// index on by the time the answer goes out.
func (s *Server) headersAt(w http.ResponseWriter, idx uint64) {
	h := w.Header()
	h.Set("X-Nomad-Index", strconv.FormatUint(idx, 10))
	h.Set("X-Nomad-KnownLeader", "true")
	h.Set("X-Nomad-LastContact", "0")
	h.Set("Content-Type", "application/json")
}

// reply answers a read at the current index.
func (s *Server) reply(w http.ResponseWriter, v any) {
	s.mu.Lock()
	idx := s.index
	s.mu.Unlock()
	s.replyWrite(w, idx, v)
}

// replyWrite answers a write with the index the write was made at.
func (s *Server) replyWrite(w http.ResponseWriter, idx uint64, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.headersAt(w, idx)
	w.Write(b)
}

// fail answers as Nomad does on errors: a status and a plain-text message.
func fail(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(code)
	fmt.Fprintf(w, format, args...)
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	prefix := r.URL.Query().Get("prefix")
	withMeta := r.URL.Query().Get("meta") == "true"
	s.mu.Lock()
	var out []*api.JobListStub
	for id, j := range s.jobs {
		if !strings.HasPrefix(id, prefix) {
			continue
		}
		st := &api.JobListStub{ID: id, Name: str(j.Name), Type: str(j.Type), Status: str(j.Status),
			Stop: j.Stop != nil && *j.Stop, JobModifyIndex: *j.JobModifyIndex, ModifyIndex: *j.ModifyIndex, CreateIndex: *j.CreateIndex}
		if withMeta {
			st.Meta = j.Meta
		}
		out = append(out, st)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, k int) bool { return out[i].ID < out[k].ID })
	s.reply(w, out)
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.block(r)
	s.mu.Lock()
	j := s.jobs[id]
	var c *api.Job
	if j != nil {
		c = cloneJob(j)
	}
	hook := s.onJobRead
	s.mu.Unlock()
	if hook != nil {
		hook(id)
	}
	if c == nil {
		fail(w, http.StatusNotFound, "job not found")
		return
	}
	s.reply(w, c)
}

func (s *Server) registerJob(w http.ResponseWriter, r *http.Request) {
	var req api.JobRegisterRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "decode register request: %v", err)
		return
	}
	jmi, evalID, err := s.register(req, true)
	if err != nil {
		var ce codedError
		if errors.As(err, &ce) {
			fail(w, ce.code, "%s", ce.msg)
			return
		}
		fail(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.replyWrite(w, jmi, api.JobRegisterResponse{EvalID: evalID, JobModifyIndex: jmi})
}

type codedError struct {
	code int
	msg  string
}

func (e codedError) Error() string { return e.msg }

// register stores a job version and schedules it. record says whether the
// request is recorded (it is not for Put).
func (s *Server) register(req api.JobRegisterRequest, record bool) (uint64, string, error) {
	job := req.Job
	rec := Register{Job: cloneJob(job), EnforceIndex: req.EnforceIndex, JobModifyIndex: req.JobModifyIndex}
	rec.Problems = checkJob(job, s.opts.Nodes, s.opts.MHzPerCPU)

	s.mu.Lock()
	defer s.mu.Unlock()
	refuse := func(code int, format string, args ...any) (uint64, string, error) {
		rec.Err = fmt.Sprintf(format, args...)
		if record {
			s.registers = append(s.registers, rec)
		}
		return 0, "", codedError{code, rec.Err}
	}
	if job == nil || job.ID == nil {
		return refuse(http.StatusBadRequest, "missing job")
	}
	id := *job.ID
	cur := s.jobs[id]
	if req.EnforceIndex {
		// Nomad's own wording, which clients match on.
		switch {
		case req.JobModifyIndex == 0 && cur != nil:
			return refuse(http.StatusInternalServerError, "Enforcing job modify index 0: job already exists")
		case req.JobModifyIndex != 0 && cur == nil:
			return refuse(http.StatusInternalServerError, "Enforcing job modify index %d: job does not exist", req.JobModifyIndex)
		case cur != nil && *cur.JobModifyIndex != req.JobModifyIndex:
			return refuse(http.StatusInternalServerError, "Enforcing job modify index %d: job exists with conflicting job modify index: %d",
				req.JobModifyIndex, *cur.JobModifyIndex)
		}
	}
	if len(rec.Problems) > 0 {
		return refuse(http.StatusBadRequest, "job validation failed: %s", strings.Join(rec.Problems, "; "))
	}
	if record {
		s.registers = append(s.registers, rec)
	}
	idx := s.bump()
	j := cloneJob(job)
	version := uint64(0)
	create := idx
	if cur != nil {
		version = *cur.Version + 1
		create = *cur.CreateIndex
	}
	j.Version = new(version)
	j.CreateIndex, j.ModifyIndex, j.JobModifyIndex = new(create), new(idx), new(idx)
	j.SubmitTime = new(time.Now().UnixNano())
	j.Status = new("pending")
	j.Stop = new(false)
	s.jobs[id] = j

	ev := &api.Evaluation{ID: newID(), JobID: id, Status: api.EvalStatusPending, TriggeredBy: "job-register",
		Type: api.JobTypeService, JobModifyIndex: idx, CreateIndex: idx, ModifyIndex: idx}
	s.evals[ev.ID] = ev
	// An update replaces the lab whole: the old allocation stops first.
	var old []*allocation
	for _, a := range s.allocs {
		if a.JobID == id && a.DesiredStatus == api.AllocDesiredStatusRun {
			a.DesiredStatus = api.AllocDesiredStatusStop
			old = append(old, a)
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for _, a := range old {
			s.teardown(a)
		}
		s.schedule(ev.ID, j)
	}()
	return idx, ev.ID, nil
}

func (s *Server) deregisterJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	purge := r.URL.Query().Get("purge") == "true"
	s.mu.Lock()
	s.deregisters = append(s.deregisters, Deregister{JobID: id, Purge: purge})
	j := s.jobs[id]
	if j == nil {
		s.mu.Unlock()
		fail(w, http.StatusNotFound, "job not found")
		return
	}
	if purge && s.refusePurge != "" {
		msg := s.refusePurge
		s.mu.Unlock()
		fail(w, http.StatusInternalServerError, "%s", msg)
		return
	}
	idx := s.bump()
	if purge {
		delete(s.jobs, id)
	} else {
		j.Stop, j.Status, j.ModifyIndex = new(true), new("dead"), new(idx)
	}
	ev := &api.Evaluation{ID: newID(), JobID: id, Status: api.EvalStatusComplete, TriggeredBy: "job-deregister",
		Type: api.JobTypeService, CreateIndex: idx, ModifyIndex: idx}
	s.evals[ev.ID] = ev
	var stop []*allocation
	for aid, a := range s.allocs {
		if a.JobID != id {
			continue
		}
		if a.DesiredStatus == api.AllocDesiredStatusRun {
			a.DesiredStatus = api.AllocDesiredStatusStop
			stop = append(stop, a)
		}
		if purge {
			// As Nomad does: a purge deletes the job's allocations from
			// the server's state at once, while the client is still
			// stopping them, so the API can no longer tell when they end.
			delete(s.allocs, aid)
		}
	}
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for _, a := range stop {
			s.teardown(a)
		}
	}()
	s.replyWrite(w, idx, api.JobDeregisterResponse{EvalID: ev.ID, EvalCreateIndex: idx})
}

// evaluateJob re-evaluates a job; with ForceReschedule it replaces the
// job's failed allocations whatever the reschedule policy says.
func (s *Server) evaluateJob(w http.ResponseWriter, r *http.Request) {
	var req api.JobEvaluateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "decode evaluate request: %v", err)
		return
	}
	id := r.PathValue("id")
	s.mu.Lock()
	j := s.jobs[id]
	if j == nil {
		s.mu.Unlock()
		fail(w, http.StatusNotFound, "job not found")
		return
	}
	idx := s.bump()
	ev := &api.Evaluation{ID: newID(), JobID: id, Status: api.EvalStatusComplete, TriggeredBy: "job-eval",
		Type: api.JobTypeService, CreateIndex: idx, ModifyIndex: idx}
	s.evals[ev.ID] = ev
	var failed []*allocation
	if req.EvalOptions.ForceReschedule {
		for _, a := range s.allocs {
			if a.JobID == id && a.DesiredStatus == api.AllocDesiredStatusRun && a.ClientStatus == api.AllocClientStatusFailed {
				a.DesiredStatus = api.AllocDesiredStatusStop
				failed = append(failed, a)
			}
		}
	}
	if len(failed) > 0 {
		ev.Status = api.EvalStatusPending
		job := cloneJob(j)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for _, a := range failed {
				s.teardown(a)
			}
			s.schedule(ev.ID, job)
		}()
	}
	s.mu.Unlock()
	s.replyWrite(w, idx, api.JobRegisterResponse{EvalID: ev.ID, EvalCreateIndex: idx})
}

func (s *Server) jobAllocs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.block(r)
	s.mu.Lock()
	out := []*api.AllocationListStub{}
	for _, a := range s.allocs {
		if a.JobID == id {
			out = append(out, stub(a.Allocation))
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, k int) bool { return out[i].CreateIndex < out[k].CreateIndex })
	s.reply(w, out)
}

func (s *Server) jobEvals(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.block(r)
	s.mu.Lock()
	out := []*api.Evaluation{}
	for _, e := range s.evals {
		if e.JobID == id {
			c := *e
			out = append(out, &c)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, k int) bool { return out[i].CreateIndex > out[k].CreateIndex })
	s.reply(w, out)
}

func (s *Server) getEval(w http.ResponseWriter, r *http.Request) {
	s.block(r)
	s.mu.Lock()
	e := s.evals[r.PathValue("id")]
	var c api.Evaluation
	if e != nil {
		c = *e
	}
	s.mu.Unlock()
	if e == nil {
		fail(w, http.StatusNotFound, "eval not found")
		return
	}
	s.reply(w, &c)
}

func (s *Server) getAlloc(w http.ResponseWriter, r *http.Request) {
	s.block(r)
	s.mu.Lock()
	a := s.allocs[r.PathValue("id")]
	var c api.Allocation
	if a != nil {
		c = *a.Allocation
		c.TaskStates = cloneStates(a.TaskStates)
	}
	s.mu.Unlock()
	if a == nil {
		fail(w, http.StatusNotFound, "alloc not found")
		return
	}
	s.reply(w, &c)
}

func (s *Server) getNode(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("id") != s.nodeID {
		fail(w, http.StatusNotFound, "node not found")
		return
	}
	host := strings.TrimPrefix(s.srv.URL, "http://")
	if _, _, err := net.SplitHostPort(host); err != nil {
		fail(w, http.StatusInternalServerError, "%v", err)
		return
	}
	n := s.node()
	n.HTTPAddr = host
	s.reply(w, n)
}

func stub(a *api.Allocation) *api.AllocationListStub {
	return &api.AllocationListStub{
		ID: a.ID, EvalID: a.EvalID, Name: a.Name, NodeID: a.NodeID, NodeName: a.NodeName, JobID: a.JobID,
		TaskGroup: a.TaskGroup, DesiredStatus: a.DesiredStatus, ClientStatus: a.ClientStatus,
		ClientDescription: a.ClientDescription, TaskStates: cloneStates(a.TaskStates),
		CreateIndex: a.CreateIndex, ModifyIndex: a.ModifyIndex, CreateTime: a.CreateTime, ModifyTime: a.ModifyTime,
	}
}

func cloneStates(m map[string]*api.TaskState) map[string]*api.TaskState {
	out := make(map[string]*api.TaskState, len(m))
	for k, v := range m {
		c := *v
		c.Events = append([]*api.TaskEvent(nil), v.Events...)
		out[k] = &c
	}
	return out
}

// cloneJob deep-copies a job through JSON, as it would travel.
func cloneJob(j *api.Job) *api.Job {
	b, err := json.Marshal(j)
	if err != nil {
		panic(err)
	}
	var out api.Job
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return &out
}

func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
