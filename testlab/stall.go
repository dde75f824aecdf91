package testlab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A test that waits for a lab in vain may be waiting on an engine that
// no longer answers at all: then every later test would wait its whole
// time too, and the run would say nothing of why. EngineTrouble tells the
// two apart, and once the engine was found stalled, Start re-checks it
// and fails at once while it stays so.

// engineProbeTimeout bounds each probe call: a healthy engine answers
// them in milliseconds, even under a herd of labs.
var engineProbeTimeout = 15 * time.Second

// dockerdPidFile names the engine's process, to ask it for its stacks.
var dockerdPidFile = "/var/run/docker.pid"

// engineStalled is set once a probe found the engine stalled.
var engineStalled atomic.Bool

// probeEngine asks the engine for a ping and the lists of its containers
// and networks, each bounded; it answers the first that did not come back.
func probeEngine() error {
	e := newEngine()
	for _, path := range []string{"/_ping", "/containers/json?all=1", "/networks"} {
		ctx, cancel := context.WithTimeout(context.Background(), engineProbeTimeout)
		req, err := http.NewRequestWithContext(ctx, "GET", "http://docker/v1.41"+path, nil)
		if err != nil {
			cancel()
			return err
		}
		resp, err := e.stream.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		if err != nil {
			return fmt.Errorf("GET %s did not answer within %s: %w", path, engineProbeTimeout, err)
		}
	}
	return nil
}

// EngineTrouble is "" while the engine answers, and otherwise says so, with
// what the host shows of it: the goroutines of dockerd blocked for
// minutes (from the stack dump SIGUSR1 makes it write), processes stuck
// in the kernel and the tail of its log, where this process may read them.
func EngineTrouble() string {
	err := probeEngine()
	if err == nil {
		engineStalled.Store(false)
		return ""
	}
	engineStalled.Store(true)
	return "\nTHE DOCKER ENGINE IS STALLED: " + err.Error() + "\n" + engineDiagnosis()
}

// checkEngine fails t at once when an earlier test found the engine
// stalled and it still is.
func checkEngine(t testing.TB) {
	t.Helper()
	if !engineStalled.Load() {
		return
	}
	if err := probeEngine(); err != nil {
		t.Fatalf("the Docker engine stalled earlier in this run and still does not answer (%v); see the first failure for its state", err)
	}
	engineStalled.Store(false)
}

// engineDiagnosis gathers what the host shows of a stalled engine; what
// it cannot read it leaves out.
func engineDiagnosis() string {
	var b strings.Builder
	if stacks := dockerdStacks(); stacks != "" {
		b.WriteString("dockerd goroutines blocked for a minute or more:\n" + stacks)
	}
	if d := stuckProcesses(); d != "" {
		b.WriteString("processes in uninterruptible sleep:\n" + d)
	}
	if tail := fileTail("/var/log/dockerd.log", 25); tail != "" {
		b.WriteString("the end of /var/log/dockerd.log:\n" + tail)
	}
	return b.String()
}

// dockerdStacks asks dockerd for a dump of its goroutines and answers a
// summary of those blocked for a minute or more: how many share each
// wait and top frames, most common first.
func dockerdStacks() string {
	raw, err := os.ReadFile(dockerdPidFile)
	if err != nil {
		return ""
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return ""
	}
	before := time.Now()
	if syscall.Kill(pid, syscall.SIGUSR1) != nil {
		return ""
	}
	var dump string
	for range 20 {
		time.Sleep(250 * time.Millisecond)
		files, _ := filepath.Glob("/var/run/docker/goroutine-stacks-*.log")
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil && fi.ModTime().After(before.Add(-time.Second)) {
				dump = f
			}
		}
		if dump != "" {
			break
		}
	}
	if dump == "" {
		return ""
	}
	time.Sleep(250 * time.Millisecond) // let it finish writing
	data, err := os.ReadFile(dump)
	if err != nil {
		return ""
	}
	return summariseStacks(data, 8, 6) + "(full dump: " + dump + ")\n"
}

// longWait matches a goroutine header blocked for minutes:
// "goroutine 123 [semacquire, 3 minutes]:".
var longWait = regexp.MustCompile(`^goroutine \d+ \[([^,\]]+), (\d+) minutes?(, locked to thread)?\]:$`)

// summariseStacks groups the goroutines of a Go stack dump blocked for a
// minute or more by their wait and top frames, and answers the top groups.
func summariseStacks(dump []byte, groups, frames int) string {
	count := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(dump))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var (
		key   strings.Builder
		in    bool
		taken int
	)
	flush := func() {
		if in {
			count[key.String()]++
		}
		in, taken = false, 0
		key.Reset()
	}
	for sc.Scan() {
		line := sc.Text()
		if m := longWait.FindStringSubmatch(line); m != nil {
			flush()
			in = true
			key.WriteString("  [" + m[1] + "]\n")
			continue
		}
		if strings.HasPrefix(line, "goroutine ") || line == "" {
			flush()
			continue
		}
		// Function lines, not their file:line lines, make the key.
		if in && taken < frames && !strings.HasPrefix(line, "\t") {
			key.WriteString("    " + line + "\n")
			taken++
		}
	}
	flush()
	keys := make([]string, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return count[keys[i]] > count[keys[j]] })
	var b strings.Builder
	for i, k := range keys {
		if i == groups {
			break
		}
		fmt.Fprintf(&b, "%d goroutine(s):\n%s", count[k], k)
	}
	return b.String()
}

// stuckProcesses lists processes in uninterruptible sleep (state D), with
// what they wait in.
func stuckProcesses() string {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var b strings.Builder
	for _, d := range dirs {
		stat, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) S ...: the state follows the last ')'.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || s[i+2] != 'D' {
			continue
		}
		cmd, _ := os.ReadFile(d + "/cmdline")
		wchan, _ := os.ReadFile(d + "/wchan")
		fmt.Fprintf(&b, "  %s %s (in %s)\n", filepath.Base(d), strings.ReplaceAll(strings.TrimSpace(string(cmd)), "\x00", " "), wchan)
	}
	return b.String()
}

// fileTail answers the last n lines of path, or "".
func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}
