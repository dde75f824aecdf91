package testlab

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/examlab/examlab/lab"
)

// rawParallel is how many containers RawSegmentedLab creates, and nodes it
// prepares, at once: the Docker runtime's own number.
const rawParallel = 4

// RawSegmentedLab is the baseline of a segmented lab by bare Engine API
// calls: the switch and every node created and started (nodes four at a
// time, the switch beside them), one wiring script run in the switch, and
// in each node its /etc/hosts, then its files and setup. The create
// requests carry what the Docker runtime asks for (limits, reserve,
// capabilities, sysctls, labels) except the grader's tools volume, and
// nothing is checked, adopted or retried. labels go on the switch (the
// nodes carry their spec's); switchImage runs it.
func (e *Engine) RawSegmentedLab(ctx context.Context, spec lab.Spec, switchImage string, labels map[string]string) error {
	if !spec.Segmented() {
		return fmt.Errorf("raw lab of session %s: not segmented", spec.SessionID)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		ids  = map[string]string{}
		sem  = make(chan struct{}, rawParallel)
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	up := func(name string, body map[string]any) {
		var created struct {
			ID string `json:"Id"`
		}
		err := e.do(ctx, "POST", "/containers/create", url.Values{"name": {name}}, body, &created)
		if err == nil {
			err = e.do(ctx, "POST", "/containers/"+created.ID+"/start", nil, nil, nil)
		}
		if err != nil {
			fail(err)
			return
		}
		mu.Lock()
		ids[name] = created.ID
		mu.Unlock()
	}
	sw := lab.SwitchName(spec.SessionID)
	wg.Go(func() { up(sw, rawSwitch(switchImage, labels)) })
	for _, n := range spec.Nodes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			up(n.Container, rawNode(n))
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("raw lab of session %s: %w", spec.SessionID, errs[0])
	}

	pids := make(map[string]int, len(spec.Nodes))
	for _, n := range spec.Nodes {
		var c struct {
			State struct{ Pid int }
		}
		if err := e.do(ctx, "GET", "/containers/"+ids[n.Container]+"/json", nil, nil, &c); err != nil {
			return fmt.Errorf("raw lab of session %s: %w", spec.SessionID, err)
		}
		pids[n.Name] = c.State.Pid
	}
	if err := e.rawExec(ctx, ids[sw], "sh", "-c", lab.SwitchScript(spec, pids)); err != nil {
		return fmt.Errorf("raw lab of session %s: wire: %w", spec.SessionID, err)
	}
	for _, n := range spec.Nodes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			id := ids[n.Container]
			if err := e.rawExec(ctx, id, "sh", "-c", lab.NodeScript(spec)); err != nil {
				fail(fmt.Errorf("names in %s: %w", n.Name, err))
				return
			}
			if len(n.Files) > 0 {
				if err := e.rawFiles(ctx, id, n.Files); err != nil {
					fail(fmt.Errorf("files in %s: %w", n.Name, err))
					return
				}
			}
			if n.Setup != "" {
				if err := e.rawExec(ctx, id, "sh", "-c", lab.SetupScript, "setup", n.Setup); err != nil {
					fail(fmt.Errorf("setup in %s: %w", n.Name, err))
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("raw lab of session %s: %w", spec.SessionID, errs[0])
	}
	return nil
}

// rawNode is a segmented lab node's create request: no network until the
// switch wires it.
func rawNode(n lab.Node) map[string]any {
	caps := make([]string, 0, len(n.CapAdd))
	for _, c := range n.CapAdd {
		caps = append(caps, "CAP_"+strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
	}
	cpus, memMB := n.Reserved()
	shares := int64(0)
	if cpus > 0 {
		shares = max(2, int64(math.Round(cpus*1024)))
	}
	hostname := n.Hostname
	if hostname == "" {
		hostname = n.Name
	}
	return map[string]any{
		"Image": n.Image, "Hostname": hostname, "Labels": n.Labels,
		"HostConfig": map[string]any{
			"NetworkMode": "none",
			"Memory":      int64(n.MemoryMB) << 20, "MemorySwap": int64(n.MemoryMB) << 20,
			"NanoCpus": int64(n.CPUs * 1e9), "PidsLimit": n.PidsLimit,
			"MemoryReservation": int64(memMB) << 20, "CpuShares": shares,
			"CapDrop": []string{"ALL"}, "CapAdd": caps,
			"SecurityOpt":   []string{"no-new-privileges"},
			"Sysctls":       n.SegmentedSysctls(),
			"RestartPolicy": map[string]string{"Name": "no"},
			"LogConfig":     map[string]any{"Type": "json-file", "Config": map[string]string{"max-size": "10m", "max-file": "2"}},
		},
	}
}

// rawSwitch is the switch's create request: sleep in the host's PID
// namespace with what wiring needs.
func rawSwitch(image string, labels map[string]string) map[string]any {
	l := map[string]string{lab.LabelPart: lab.PartSwitch}
	for k, v := range labels {
		l[k] = v
	}
	return map[string]any{
		"Image": image, "Hostname": "switch", "Labels": l,
		"Entrypoint": []string{"sleep"}, "Cmd": []string{"infinity"},
		"HostConfig": map[string]any{
			"NetworkMode": "none", "PidMode": "host",
			"Memory": 64 << 20, "MemorySwap": 64 << 20, "NanoCpus": 250_000_000, "PidsLimit": 64,
			"CapDrop": []string{"ALL"}, "CapAdd": []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"},
			"SecurityOpt":   []string{"no-new-privileges"},
			"Sysctls":       lab.NoIPv6(),
			"RestartPolicy": map[string]string{"Name": "no"},
			"LogConfig":     map[string]any{"Type": "json-file", "Config": map[string]string{"max-size": "1m", "max-file": "1"}},
		},
	}
}

// rawExec runs cmd in a container, reads its output to the end and fails
// unless it exits 0.
func (e *Engine) rawExec(ctx context.Context, container string, cmd ...string) error {
	var created struct {
		ID string `json:"Id"`
	}
	body := map[string]any{"Cmd": cmd, "AttachStdout": true, "AttachStderr": true}
	if err := e.do(ctx, "POST", "/containers/"+container+"/exec", nil, body, &created); err != nil {
		return err
	}
	// Without an upgrade the engine streams the output on the response
	// and closes it when the command ends.
	var out bytes.Buffer
	if err := e.doStream(ctx, "/exec/"+created.ID+"/start", map[string]any{"Detach": false, "Tty": false}, &out); err != nil {
		return err
	}
	for {
		var st struct {
			Running  bool
			ExitCode int
		}
		if err := e.do(ctx, "GET", "/exec/"+created.ID+"/json", nil, nil, &st); err != nil {
			return err
		}
		if !st.Running {
			if st.ExitCode != 0 {
				return fmt.Errorf("exit %d: %q", st.ExitCode, tailOf(out.String()))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func tailOf(s string) string {
	if len(s) > 512 {
		return s[len(s)-512:]
	}
	return s
}

// rawFiles writes files into a container through the archive endpoint.
func (e *Engine) rawFiles(ctx context.Context, container string, files []lab.File) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: int64(f.Mode), Size: int64(len(f.Content)), ModTime: time.Now()}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write([]byte(f.Content)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	u := "http://docker/v1.41/containers/" + container + "/archive?" + url.Values{"path": {"/"}, "noOverwriteDirNonDir": {"true"}}.Encode()
	req, err := http.NewRequestWithContext(ctx, "PUT", u, &buf)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := e.stream.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("PUT archive: %s: %s", resp.Status, msg)
	}
	return nil
}

// do is call that also decodes a JSON answer into out (if non-nil). The
// raw lab's calls are bounded by ctx alone, as the runtime's are: under a
// herd of sixteen labs one engine call can take longer than the 30 s a
// check's read is given.
func (e *Engine) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := e.send(ctx, e.stream, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// doStream posts body and copies the answer to w until the engine closes
// it; the context alone bounds it.
func (e *Engine) doStream(ctx context.Context, path string, body any, w io.Writer) error {
	resp, err := e.send(ctx, e.stream, "POST", path, nil, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}
