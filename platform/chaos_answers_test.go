package platform_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
)

// The chaos tests break one part of the platform while candidates work and
// check that nothing acknowledged was lost. This file holds what they
// share: the candidates' saves (answerLoad) and the check of what is on
// disk afterwards.

// chaosExam is the chaos tests' exam: two nodes, three tasks.
func chaosExam(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("testdata/chaos.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// chaosTasks are the task ids of chaosExam.
var chaosTasks = []string{"t1-hostname", "t2-route", "t3-notes"}

// chaosTimed logs how long the test took, so that the suite's cost is in
// every run's output.
func chaosTimed(t *testing.T) {
	t0 := time.Now()
	t.Cleanup(func() { t.Logf("%s took %v", t.Name(), time.Since(t0).Round(100*time.Millisecond)) })
}

// platformLogger is platform options with chaosLogger.
func platformLogger(t testing.TB) platform.Options {
	return platform.Options{Logger: chaosLogger(t)}
}

// requireEngine fails (never skips) when the Docker engine does not
// answer or has no lab image: the chaos tests that need labs run in CI.
func requireEngine(t testing.TB) {
	t.Helper()
	sock := "/var/run/docker.sock"
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		sock = h
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://docker/v1.41/images/examlab/node:bookworm/json")
	if err != nil {
		t.Fatalf("this test needs a running Docker engine at %s: %v", sock, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the lab image examlab/node:bookworm is missing (%d): build it with `make image`", resp.StatusCode)
	}
}

// chaosLogger keeps what the platform logs during the test (chaos makes
// it log an error per refused request) and prints the last of it only
// when the test fails.
func chaosLogger(t testing.TB) *slog.Logger {
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("the platform's last log lines:\n%s", strings.Join(lines, "\n"))
	})
	return slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// answerSlot is one candidate's answer to one task, saved over and over
// with a growing number: "s{slot}-{n}".
type answerSlot struct {
	session, task, token string
	// acked is the last number the API acknowledged (2xx); 0 is none.
	acked int
	// sent is the last number sent, acknowledged or not.
	sent int
}

// answerLoad saves answers through the API, one goroutine per slot, each
// saving its next value as soon as the last one was answered, whatever
// the answer. It keeps, per slot, the last value acknowledged.
type answerLoad struct {
	t     testing.TB
	base  func() string
	http  *http.Client
	slots []*answerSlot
	mu    sync.Mutex // guards the slots' numbers

	acked, refused atomic.Int64
	// statuses counts the answers by status (0: no answer).
	statusMu sync.Mutex
	statuses map[int]int
	bodies   map[int]string

	stop chan struct{}
	wg   sync.WaitGroup
}

// newAnswerLoad prepares the saves of every task of every session, with
// each session's candidate token; base gives the API's URL at the time of
// each request.
func newAnswerLoad(t testing.TB, base func() string, sessions, tokens []string) *answerLoad {
	l := &answerLoad{t: t, base: base, http: &http.Client{Timeout: 15 * time.Second},
		statuses: map[int]int{}, bodies: map[int]string{}}
	// An idle keep-alive connection can hold the API's shutdown until
	// its timeout.
	t.Cleanup(l.http.CloseIdleConnections)
	for i, id := range sessions {
		for _, task := range chaosTasks {
			l.slots = append(l.slots, &answerSlot{session: id, task: task, token: tokens[i]})
		}
	}
	return l
}

// start runs the savers until stop. pause is how long each waits after a
// save that failed, so that an outage is not a busy loop.
func (l *answerLoad) start(pause time.Duration) {
	l.stop = make(chan struct{})
	for i, s := range l.slots {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if !l.saveNext(i, s) {
					select {
					case <-l.stop:
						return
					case <-time.After(pause):
					}
				}
			}
		}()
	}
}

// halt stops the savers and waits for them.
func (l *answerLoad) halt() {
	close(l.stop)
	l.wg.Wait()
}

// saveNext saves the slot's next value and reports whether it was
// acknowledged.
func (l *answerLoad) saveNext(i int, s *answerSlot) bool {
	l.mu.Lock()
	s.sent++
	n := s.sent
	l.mu.Unlock()
	code, body := l.put(s, fmt.Sprintf("s%d-%d", i, n))
	l.statusMu.Lock()
	l.statuses[code]++
	if _, ok := l.bodies[code]; !ok {
		l.bodies[code] = body
	}
	l.statusMu.Unlock()
	if code/100 != 2 {
		l.refused.Add(1)
		return false
	}
	l.mu.Lock()
	s.acked = n
	l.mu.Unlock()
	l.acked.Add(1)
	return true
}

// put sends one save and returns the status (0 when no answer came) and
// the body of a refusal.
func (l *answerLoad) put(s *answerSlot, value string) (int, string) {
	body, _ := json.Marshal(map[string]string{"value": value})
	req, err := http.NewRequest(http.MethodPut, l.base()+"/api/session/"+s.session+"/answers/"+s.task, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := l.http.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

// saveOnce saves every slot's next value once, from this goroutine, and
// returns how many were acknowledged.
func (l *answerLoad) saveOnce() int {
	n := 0
	for i, s := range l.slots {
		if l.saveNext(i, s) {
			n++
		}
	}
	return n
}

// waitAcked waits until at least n saves in all were acknowledged.
func (l *answerLoad) waitAcked(n int64, timeout time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for l.acked.Load() < n {
		if time.Now().After(deadline) {
			l.t.Fatalf("only %d of %d saves acknowledged after %v; answers by status: %s", l.acked.Load(), n, timeout, l.summary())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitEachAcked waits until every slot had a save acknowledged.
func (l *answerLoad) waitEachAcked(timeout time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l.mu.Lock()
		all := !slices.ContainsFunc(l.slots, func(s *answerSlot) bool { return s.acked == 0 })
		l.mu.Unlock()
		if all {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("some slots had no save acknowledged after %v; answers by status: %s", timeout, l.summary())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// summary is the count of answers by status, with the first body of each
// refusal.
func (l *answerLoad) summary() string {
	l.statusMu.Lock()
	defer l.statusMu.Unlock()
	var b strings.Builder
	for code, n := range l.statuses {
		fmt.Fprintf(&b, "%d×%d ", code, n)
		if code/100 != 2 {
			fmt.Fprintf(&b, "(%s) ", strings.TrimSpace(l.bodies[code]))
		}
	}
	return strings.TrimSpace(b.String())
}

// number reads the n of a value "s{slot}-{n}".
func number(t testing.TB, value json.RawMessage) int {
	t.Helper()
	var s string
	if err := json.Unmarshal(value, &s); err != nil {
		t.Fatalf("answer %s is not a saved value", value)
	}
	n, err := strconv.Atoi(s[strings.LastIndexByte(s, '-')+1:])
	if err != nil {
		t.Fatalf("answer %q is not a saved value", s)
	}
	return n
}

// checkOnDisk checks every slot's answer file in the state directory: it
// holds a value at least as new as the last acknowledged (a save that was
// not acknowledged may have reached the disk all the same), and, unless
// killed says a writer was killed mid-write, no temp file lies beside it
// (a killed writer leaves its temp file, which no reader takes for an
// answer). It returns how many slots had an acknowledged answer.
func (l *answerLoad) checkOnDisk(stateDir string, killed bool) int {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	checked := 0
	for _, s := range l.slots {
		dir := filepath.Join(stateDir, "sessions", s.session, store.AnswersDir)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") && !killed {
				l.t.Errorf("session %s: a temp file %s is left in answers/", s.session, e.Name())
			}
		}
		if s.acked == 0 {
			continue
		}
		checked++
		b, err := os.ReadFile(filepath.Join(dir, s.task+".json"))
		if err != nil {
			l.t.Errorf("session %s task %s: acknowledged save %d, but %v", s.session, s.task, s.acked, err)
			continue
		}
		var a store.Answer
		if err := json.Unmarshal(b, &a); err != nil {
			l.t.Errorf("session %s task %s: answer file is not whole: %v\n%s", s.session, s.task, err, b)
			continue
		}
		if n := number(l.t, a.Value); n < s.acked || n > s.sent {
			l.t.Errorf("session %s task %s: on disk save %d, but %d was acknowledged (%d sent)", s.session, s.task, n, s.acked, s.sent)
		}
	}
	return checked
}

// checkThroughAPI checks that each session's answers, read through the
// API, are at least as new as the last acknowledged.
func (l *answerLoad) checkThroughAPI() {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	read := map[string]map[string]int{}
	for _, s := range l.slots {
		if read[s.session] == nil {
			read[s.session] = l.readAnswers(s)
		}
		got, ok := read[s.session][s.task]
		if s.acked == 0 {
			continue
		}
		if !ok || got < s.acked || got > s.sent {
			l.t.Errorf("session %s task %s through the API: save %d (present %v), but %d was acknowledged", s.session, s.task, got, ok, s.acked)
		}
	}
}

func (l *answerLoad) readAnswers(s *answerSlot) map[string]int {
	l.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, l.base()+"/api/session/"+s.session+"/answers", nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := l.http.Do(req)
	if err != nil {
		l.t.Fatalf("read answers of %s: %v", s.session, err)
	}
	defer resp.Body.Close()
	var out struct {
		Answers []store.Answer `json:"answers"`
	}
	if resp.StatusCode != 200 {
		l.t.Fatalf("read answers of %s: %d", s.session, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		l.t.Fatalf("read answers of %s: %v", s.session, err)
	}
	m := map[string]int{}
	for _, a := range out.Answers {
		m[a.TaskID] = number(l.t, a.Value)
	}
	return m
}
