package testlab

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/docker"
)

// NomadTask starts a container, named name, for a docker task of a lab's
// Nomad job as Nomad's docker driver would on a client: the task config's
// image, hostname, network mode, capabilities, sysctls, labels and mounts
// (the grader's tools volume), plus the driver's allocation label. It stands in for a client where a test runs
// what the job's lifecycle tasks run (examlab labnet) without one. The
// container is removed when the test ends.
func (e *Engine) NomadTask(t testing.TB, name string, task *api.Task, allocID string) {
	t.Helper()
	c := task.Config
	labels := map[string]string{docker.NomadAllocLabel: allocID}
	for _, m := range c["labels"].([]map[string]string) {
		for k, v := range m {
			labels[k] = v
		}
	}
	sysctls := map[string]string{}
	if list, ok := c["sysctl"].([]map[string]string); ok {
		for _, m := range list {
			for k, v := range m {
				sysctls[k] = v
			}
		}
	}
	var mounts []map[string]any
	if list, ok := c["mount"].([]map[string]any); ok {
		for _, m := range list {
			mounts = append(mounts, map[string]any{"Type": m["type"], "Source": m["source"], "Target": m["target"], "ReadOnly": m["readonly"]})
		}
	}
	var caps []string
	for _, cp := range c["cap_add"].([]string) {
		caps = append(caps, "CAP_"+strings.ToUpper(cp))
	}
	body := map[string]any{
		"Image": c["image"], "Hostname": c["hostname"], "Labels": labels,
		"HostConfig": map[string]any{
			"NetworkMode": c["network_mode"], "CapDrop": []string{"ALL"}, "CapAdd": caps,
			"Sysctls": sysctls, "SecurityOpt": c["security_opt"], "PidsLimit": c["pids_limit"],
			"Mounts": mounts,
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.call(ctx, "POST", "/containers/create", url.Values{"name": {name}}, body); err != nil {
		t.Fatalf("create task %s: %v", task.Name, err)
	}
	t.Cleanup(func() { e.RemoveContainer(t, name) })
	if err := e.call(ctx, "POST", "/containers/"+url.PathEscape(name)+"/start", nil, nil); err != nil {
		t.Fatalf("start task %s: %v", task.Name, err)
	}
}

// RemoveContainer removes a container at once, if it is there.
func (e *Engine) RemoveContainer(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := e.call(ctx, "DELETE", "/containers/"+url.PathEscape(name), url.Values{"force": {"1"}}, nil)
	if err != nil && !strings.Contains(err.Error(), "404") {
		t.Errorf("remove container %s: %v", name, err)
	}
}

// Exec runs cmd in a container, whatever owns it, and returns its output
// (stdout and stderr as a terminal shows them) and exit code.
func (e *Engine) Exec(t testing.TB, container string, cmd ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	post := func(path string, body any, out any) {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://docker/v1.41"+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		resp, err := e.hc.Do(req)
		if err != nil {
			t.Fatalf("exec in %s: %v", container, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode >= 300 {
			msg, _ := io.ReadAll(resp.Body)
			t.Fatalf("exec in %s: %s: %s", container, resp.Status, msg)
		}
		if w, ok := out.(io.Writer); ok {
			io.Copy(w, resp.Body) // the process's output, until it ends
		} else if out != nil {
			json.NewDecoder(resp.Body).Decode(out)
		}
	}
	var created struct{ ID string }
	post("/containers/"+url.PathEscape(container)+"/exec", map[string]any{"Cmd": cmd, "AttachStdout": true, "AttachStderr": true, "Tty": true}, &created)
	var out bytes.Buffer
	post("/exec/"+created.ID+"/start", map[string]any{"Tty": true}, &out)
	var st struct{ ExitCode int }
	e.get(t, "/exec/"+created.ID+"/json", nil, &st)
	return strings.ReplaceAll(out.String(), "\r\n", "\n"), st.ExitCode
}

// RemoveVolume removes a volume, if it is there and no container uses it.
func (e *Engine) RemoveVolume(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := e.call(ctx, "DELETE", "/volumes/"+url.PathEscape(name), nil, nil)
	if err != nil && !strings.Contains(err.Error(), "404") {
		t.Errorf("remove volume %s: %v", name, err)
	}
}
