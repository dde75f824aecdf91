package nomadfake

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	pathpkg "path"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

var upgrader = websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}

// execWriteTimeout bounds one frame written to an exec stream.
const execWriteTimeout = 30 * time.Second

// runningTask finds an allocation's session and checks that task is one of
// its nodes and running. The caller holds mu.
func (s *Server) runningTask(allocID, task string) (*allocation, int, string) {
	a := s.allocs[allocID]
	if a == nil {
		return nil, http.StatusNotFound, "unknown allocation ID " + allocID
	}
	if _, ok := a.lab.Node(task); !ok {
		return nil, http.StatusBadRequest, "task " + task + " is not a node of the lab"
	}
	if ts := a.TaskStates[task]; ts == nil || ts.State != "running" {
		return nil, http.StatusBadRequest, "task " + task + " is not running"
	}
	return a, 0, ""
}

// agentVerbs are the verbs of `examlab labnet` the runtime runs in a
// lab's labnet-watch task, and the flags each takes besides -session and
// -alloc.
var agentVerbs = map[string][]string{"freeze": nil, "thaw": nil, "capture": {"-node"}, "logs": {"-node"}}

// agentTask checks an exec into a lab's labnet-watch task, which runs on
// the client itself as root: only the job's own examlab binary running an
// agent verb for this session, allocation and a node of its lab passes.
// It returns the command from "labnet" on. The caller holds mu.
func (s *Server) agentTask(allocID string, cmd []string, tty bool) (*allocation, []string, int, string) {
	a := s.allocs[allocID]
	if a == nil {
		return nil, nil, http.StatusNotFound, "unknown allocation ID " + allocID
	}
	if s.opts.Agent == nil {
		return nil, nil, http.StatusBadRequest, "nomadfake: no agent to run labnet-watch's commands"
	}
	if ts := a.TaskStates[jobspecs.NomadLabnetWatch]; ts == nil || ts.State != "running" {
		return nil, nil, http.StatusBadRequest, "task " + jobspecs.NomadLabnetWatch + " is not running"
	}
	var bin string
	if job := s.jobs[a.JobID]; job != nil {
		for _, t := range job.TaskGroups[0].Tasks {
			if t.Name == jobspecs.NomadLabnetWatch {
				bin, _ = t.Config["command"].(string)
			}
		}
	}
	bad := func(why string) (*allocation, []string, int, string) {
		return nil, nil, http.StatusBadRequest, fmt.Sprintf("nomadfake: exec %q in %s: %s", cmd, jobspecs.NomadLabnetWatch, why)
	}
	if tty {
		return bad("the agent's commands run without a TTY")
	}
	if len(cmd) < 7 || cmd[0] != bin || cmd[1] != "labnet" {
		return bad("want " + bin + " labnet VERB -session ID -alloc ID")
	}
	extra, ok := agentVerbs[cmd[2]]
	if !ok {
		return bad("unknown verb " + cmd[2])
	}
	if cmd[3] != "-session" || cmd[4] != a.session || cmd[5] != "-alloc" || cmd[6] != allocID {
		return bad("not -session " + a.session + " -alloc " + allocID)
	}
	rest := cmd[7:]
	if len(rest) != 2*len(extra) {
		return bad(fmt.Sprintf("want flags %v after -alloc", extra))
	}
	for i, f := range extra {
		if rest[2*i] != f {
			return bad("want " + f)
		}
		if f == "-node" {
			if _, ok := a.lab.Node(rest[2*i+1]); !ok {
				return bad("no node " + rest[2*i+1] + " in the lab")
			}
		}
	}
	return a, cmd[1:], 0, ""
}

// exec bridges Nomad's alloc exec WebSocket to a docker exec in the task's
// container, recording every input frame.
func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	task, tty := q.Get("task"), q.Get("tty") == "true"
	var cmd []string
	if err := json.Unmarshal([]byte(q.Get("command")), &cmd); err != nil || len(cmd) == 0 {
		fail(w, http.StatusBadRequest, "command must be a non-empty JSON list")
		return
	}
	s.mu.Lock()
	var a *allocation
	var code int
	var msg string
	var agentArgs []string
	if task == jobspecs.NomadLabnetWatch {
		a, agentArgs, code, msg = s.agentTask(r.PathValue("id"), cmd, tty)
	} else {
		a, code, msg = s.runningTask(r.PathValue("id"), task)
	}
	rec := &Exec{AllocID: r.PathValue("id"), Task: task, Command: cmd, TTY: tty, ExitCode: -1}
	s.execs = append(s.execs, rec)
	s.mu.Unlock()
	if a == nil {
		fail(w, code, "%s", msg)
		return
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var sendMu sync.Mutex
	send := func(v any) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(execWriteTimeout))
		return conn.WriteJSON(v)
	}
	closeWith := func(code int, text string) {
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(execWriteTimeout))
	}

	// A TTY exec is one stream; without a TTY stdout and stderr stay apart,
	// as Nomad sends them.
	var proc lab.Process
	if tty {
		p, err := s.opts.Docker.Exec(ctx, a.session, task, lab.ExecRequest{Cmd: cmd, TTY: true})
		if err != nil {
			closeWith(websocket.CloseInternalServerErr, err.Error())
			return
		}
		defer p.Close()
		proc = p
	}
	inR, inW := io.Pipe()
	defer inR.Close()
	go func() {
		defer cancel()
		for {
			var in api.ExecStreamingInput
			if err := conn.ReadJSON(&in); err != nil {
				inW.CloseWithError(err)
				return
			}
			s.mu.Lock()
			rec.Frames = append(rec.Frames, copyInput(in))
			s.mu.Unlock()
			switch {
			case in.Stdin != nil:
				if len(in.Stdin.Data) > 0 {
					_, _ = inW.Write(in.Stdin.Data)
				}
				if in.Stdin.Close {
					inW.Close()
				}
			case in.TTYSize != nil && proc != nil:
				_ = proc.Resize(ctx, lab.Size{Rows: uint16(in.TTYSize.Height), Cols: uint16(in.TTYSize.Width)})
			}
		}
	}()

	var exit int
	if tty {
		go func() {
			_, _ = io.Copy(proc, inR)
			_ = proc.CloseWrite()
		}()
		buf := make([]byte, 32<<10)
		for {
			n, rerr := proc.Read(buf)
			if n > 0 {
				if send(api.ExecStreamingOutput{Stdout: &api.ExecStreamingIOOperation{Data: buf[:n]}}) != nil {
					return
				}
			}
			if rerr != nil {
				break
			}
		}
		exit, err = proc.Wait(ctx)
	} else {
		stdout := frameWriter(func(b []byte) error {
			return send(api.ExecStreamingOutput{Stdout: &api.ExecStreamingIOOperation{Data: b}})
		})
		stderr := frameWriter(func(b []byte) error {
			return send(api.ExecStreamingOutput{Stderr: &api.ExecStreamingIOOperation{Data: b}})
		})
		if agentArgs != nil {
			exit = s.opts.Agent(ctx, agentArgs, inR, stdout, stderr)
		} else {
			exit, err = s.opts.Docker.ExecStreams(ctx, a.session, task, cmd, inR, stdout, stderr)
		}
	}
	if err != nil {
		closeWith(websocket.CloseInternalServerErr, err.Error())
		return
	}
	s.mu.Lock()
	rec.ExitCode, rec.Done = exit, true
	s.mu.Unlock()
	if send(api.ExecStreamingOutput{Exited: true, Result: &api.ExecStreamingExitResult{ExitCode: exit}}) != nil {
		return
	}
	closeWith(websocket.CloseNormalClosure, "")
}

// frameWriter sends each write as one output frame.
type frameWriter func([]byte) error

func (f frameWriter) Write(b []byte) (int, error) {
	if err := f(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func copyInput(in api.ExecStreamingInput) api.ExecStreamingInput {
	out := api.ExecStreamingInput{}
	if in.Stdin != nil {
		out.Stdin = &api.ExecStreamingIOOperation{Data: append([]byte(nil), in.Stdin.Data...), Close: in.Stdin.Close}
	}
	if in.TTYSize != nil {
		sz := *in.TTYSize
		out.TTYSize = &sz
	}
	return out
}

// logFrame is the size of one frame of the fs logs stream.
const logFrame = 64 << 10

// logs serves the fs logs API from docker logs: the container's merged
// output as the task's stdout, and an empty stderr. A node task whose
// log collection is off has no log to serve, as on a real client.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	task, kind := q.Get("task"), q.Get("type")
	if kind != "stdout" && kind != "stderr" {
		fail(w, http.StatusBadRequest, "type must be stdout or stderr")
		return
	}
	if q.Get("follow") == "true" {
		fail(w, http.StatusBadRequest, "nomadfake: follow is not served")
		return
	}
	s.mu.Lock()
	a := s.allocs[r.PathValue("id")]
	var stderr string
	var wrote bool
	if a != nil {
		stderr, wrote = a.stderr[task]
	}
	s.mu.Unlock()
	if a == nil {
		fail(w, http.StatusNotFound, "unknown allocation ID %s", r.PathValue("id"))
		return
	}
	_, node := a.lab.Node(task)
	if node && !collects(a.Job, task) {
		// The client wrote the task's output nowhere: there is no log
		// file to serve.
		fail(w, http.StatusNotFound, "log entry for task %q and log type %q not found", task, kind)
		return
	}
	if !node && !wrote {
		fail(w, http.StatusNotFound, "log entry for task %q and log type %q not found", task, kind)
		return
	}
	var out bytes.Buffer
	switch {
	case !node:
		// A lifecycle task that has run: its stderr as the fake kept it.
		if kind == "stderr" {
			out.WriteString(stderr)
		}
	case kind == "stdout":
		if err := s.opts.Docker.Logs(r.Context(), a.session, task, &out); err != nil {
			fail(w, http.StatusNotFound, "log entry for task %q and log type %q not found: %v", task, kind, err)
			return
		}
	}
	s.headers(w)
	enc := json.NewEncoder(w)
	b := out.Bytes()
	for off := 0; off < len(b); off += logFrame {
		chunk := b[off:min(off+logFrame, len(b))]
		if err := enc.Encode(api.StreamFrame{Data: chunk, File: "alloc/logs/" + task + "." + kind + ".0", Offset: int64(off + len(chunk))}); err != nil {
			return
		}
	}
}

// collects reports whether the client keeps the task's logs: unless its
// log config turns collection off.
func collects(job *api.Job, task string) bool {
	if job == nil {
		return true
	}
	for _, g := range job.TaskGroups {
		for _, t := range g.Tasks {
			if t.Name == task && t.LogConfig != nil && t.LogConfig.Disabled != nil && *t.LogConfig.Disabled {
				return false
			}
		}
	}
	return true
}

// restart restarts a node task in place: a fresh container from its image.
func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	var req api.AllocationRestartRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "decode restart request: %v", err)
		return
	}
	s.mu.Lock()
	a, code, msg := s.runningTask(r.PathValue("id"), req.TaskName)
	s.mu.Unlock()
	if a == nil {
		fail(w, code, "%s", msg)
		return
	}
	if err := s.opts.Docker.ResetNode(r.Context(), a.lab, req.TaskName); err != nil {
		fail(w, http.StatusInternalServerError, "restart %s: %v", req.TaskName, err)
		return
	}
	// The fresh container has no CPU limit until labnet-watch sets it.
	s.holdLimits(r.Context(), a)
	s.mu.Lock()
	ts := a.TaskStates[req.TaskName]
	ts.Restarts++
	ts.LastRestart, ts.StartedAt = time.Now(), time.Now()
	ts.Events = append(ts.Events, event(api.TaskRestartSignal, "User requested task to restart"),
		event(api.TaskRestarting, "Task restarting in 0s"), event(api.TaskStarted, "Task started by client"))
	a.ModifyIndex = s.bump()
	s.mu.Unlock()
	s.reply(w, struct{}{})
}

// statFile serves GET /v1/client/fs/stat/{alloc}?path=: of the
// allocation's file system it knows only the files its tasks write (the
// lab's agent's state); any other path is missing, as a file no task wrote.
func (s *Server) statFile(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Query().Get("path")
	if path == "" {
		fail(w, http.StatusBadRequest, "must provide a file name")
		return
	}
	s.mu.Lock()
	a := s.allocs[r.PathValue("id")]
	var there bool
	if a != nil {
		there = a.files[path]
	}
	modified := time.Now()
	s.mu.Unlock()
	switch {
	case a == nil:
		fail(w, http.StatusNotFound, "Unknown allocation %q", r.PathValue("id"))
	case !there:
		fail(w, http.StatusNotFound, "stat %s: no such file or directory", path)
	default:
		s.reply(w, api.AllocFileInfo{Name: pathpkg.Base(path), Size: 2, FileMode: "-rw-------", ModTime: modified})
	}
}
