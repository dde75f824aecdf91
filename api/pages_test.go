package api_test

// The candidate page, tested as a candidate uses it: headless Chromium
// (Debian's chromium, `make deps`) against the whole platform in process,
// a private redis-server and a real lab on the local Docker engine
// (image examlab/node:bookworm, `make image`).

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// Named timeouts of the page tests.
const (
	pageStepTimeout   = 30 * time.Second
	pageTestTimeout   = 8 * time.Minute
	labDestroyTimeout = 2 * time.Minute
)

// startPageStack runs the platform on a known address, so that the page's
// Origin is the configured public URL as in production. The periodic sweeps
// stay off: the orphan reaper would destroy other tests' labs.
func startPageStack(t *testing.T) *testlab.Stack {
	t.Helper()
	addr := freeAddr(t)
	return testlab.Start(t, testlab.Options{
		Config:   func(c *config.Config) { c.Listen = addr; c.PublicURL = "http://" + addr },
		Platform: platform.Options{NoScheduler: true},
	})
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestExamPageAssets(t *testing.T) {
	st := startPageStack(t)

	resp, body := get(t, st.URL+"/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-eval") || strings.Contains(strings.SplitN(csp, "script-src", 2)[1], "unsafe-inline;") {
		t.Errorf("CSP %q lets scripts run inline or from eval", csp)
	}
	// With script-src 'self' an inline script would not run; the page has none.
	for _, tag := range regexp.MustCompile(`<script[^>]*>`).FindAllString(body, -1) {
		if !strings.Contains(tag, ` src="/static/`) {
			t.Errorf("inline or foreign script tag %s", tag)
		}
	}

	cases := []struct {
		name, path string
		status     int
		typ        string
	}{
		{"page script", "/static/exam.js", 200, "javascript"},
		{"page styles", "/static/exam.css", 200, "text/css"},
		{"xterm.js", "/static/vendor/xterm/xterm.js", 200, "javascript"},
		{"xterm styles", "/static/vendor/xterm/xterm.css", 200, "text/css"},
		{"unknown asset", "/static/nope.js", 404, ""},
		{"traversal out of the assets", "/static/../../go.mod", 404, ""},
		{"encoded traversal", "/static/%2e%2e/%2e%2e/go.mod", 404, ""},
		{"admin pages are not under the candidate's assets", "/static/../admin/admin.js", 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, st.URL+tc.path)
			if tc.path == "/static/vendor/xterm/xterm.js" && resp.StatusCode == http.StatusNotFound {
				t.Fatalf("xterm.js is not embedded: run `make web` (deploy/web.sh) before building")
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("GET %s: %d, want %d", tc.path, resp.StatusCode, tc.status)
			}
			if tc.typ != "" && !strings.Contains(resp.Header.Get("Content-Type"), tc.typ) {
				t.Errorf("GET %s: content type %q, want %s", tc.path, resp.Header.Get("Content-Type"), tc.typ)
			}
			if strings.Contains(body, "module github.com/examlab") {
				t.Errorf("GET %s served a file from outside the assets", tc.path)
			}
		})
	}
}

func TestExamPageInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found: run `make deps` (installs Debian's chromium): %v", err)
	}
	st := startPageStack(t)
	const email = "browser-candidate@example.com"

	actx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1400, 900))...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, pageTestTimeout)
	t.Cleanup(cancel)
	// The first action starts the browser and ties it to its context, so
	// it runs on the test's context, not on one step's.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}

	// Script errors on the page fail the test.
	var (
		errMu      sync.Mutex
		pageErrors []string
	)
	go func() {
		for msg, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			if msg.Type == "error" || msg.Type == chromedp.ConsoleException {
				errMu.Lock()
				pageErrors = append(pageErrors, msg.Text)
				errMu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		errMu.Lock()
		defer errMu.Unlock()
		for _, e := range pageErrors {
			if !strings.Contains(e, "Failed to load resource") {
				t.Errorf("page error: %s", e)
			}
		}
	})

	dump := func() string {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		page, err := chromedp.Run(dctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
		if err != nil {
			return "(page unreadable: " + err.Error() + ")"
		}
		return page
	}
	// step runs actions within the step timeout; waits that may take longer
	// (the lab coming up) carry their own polling timeout.
	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, testlab.ProvisionTimeout+pageStepTimeout)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v\npage:\n%s", name, err, dump())
		}
	}
	poll := func(expr string, timeout time.Duration) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(timeout))(ctx, tg)
			return err
		})
	}
	// screenHas is true once the terminal of node shows line as a row.
	screenHas := func(node, line string) string {
		return `Array.from(document.querySelectorAll('.pane[data-node=` + jsString(node) + `] .xterm-rows > div'))` +
			`.some(function (r) { return r.textContent.trim() === ` + jsString(line) + `; })`
	}
	typeInto := func(node, keys string) chromedp.Action[chromedp.Void] {
		return chromedp.Steps(
			chromedp.Click(chromedp.CSS(`.pane[data-node="`+node+`"] .xterm-screen`)),
			chromedp.KeyEvent(keys),
		)
	}

	step("sign in",
		chromedp.Navigate(st.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-email")),
		chromedp.SendKeys(chromedp.CSS("#login-email"), email),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#start-exam")),
	)
	res, err := st.Store.List(ctx, store.ListQuery{Search: email})
	if err != nil || len(res.Sessions) != 1 {
		t.Fatalf("find the session of %s: %v %+v", email, err, res)
	}
	id := res.Sessions[0].ID
	t.Cleanup(func() {
		dctx, cancel := context.WithTimeout(context.Background(), labDestroyTimeout)
		defer cancel()
		if err := st.Runtime.Destroy(dctx, id); err != nil {
			t.Errorf("destroy lab %s: %v", id, err)
		}
	})

	step("start the exam and watch the lab come up node by node",
		chromedp.Click(chromedp.CSS("#start-exam")),
		poll(`!document.getElementById('view-provision').hidden || !document.getElementById('view-work').hidden`, pageStepTimeout),
	)
	step("wait for the lab",
		poll(`document.querySelectorAll('#node-progress li').length === 8 || !document.getElementById('view-work').hidden`, pageStepTimeout),
		poll(`!document.getElementById('view-work').hidden`, testlab.ProvisionTimeout),
		poll(`/^\d+:\d\d:\d\d$/.test(document.getElementById('clock-value').textContent) && !document.getElementById('clock').hidden`, pageStepTimeout),
	)
	step("hostname in the tokyo terminal",
		poll(`document.querySelector('.pane[data-node="tokyo"]').getAttribute('data-state') === 'connected'`, pageStepTimeout),
		typeInto("tokyo", "hostname\r"),
		poll(screenHas("tokyo", "tokyo"), pageStepTimeout),
	)
	step("another tab, another machine",
		chromedp.Click(chromedp.CSS("#tab-g1")),
		poll(`document.querySelector('.pane[data-node="g1"]').getAttribute('data-state') === 'connected'`, pageStepTimeout),
		typeInto("g1", "hostname\r"),
		poll(screenHas("g1", "g1"), pageStepTimeout),
	)

	const answer = "tokyo has 192.168.10.10/24 on eth0"
	t5, ok := st.Exam.Task("t5-diagnosis")
	if !ok || len(t5.Options) == 0 {
		t.Fatalf("the exam has no choice task t5-diagnosis: %+v", t5)
	}
	step("answers save as they are typed",
		chromedp.SendKeys(chromedp.CSS("#answer-t1-addressing"), answer),
		chromedp.Click(chromedp.CSS(`#answer-t5-diagnosis-0`)),
		poll(`document.getElementById('saved-t1-addressing').textContent.indexOf('Saved') === 0`, pageStepTimeout),
		poll(`document.getElementById('saved-t5-diagnosis').textContent.indexOf('Saved') === 0`, pageStepTimeout),
	)
	answers, err := st.Store.Answers(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	saved := map[string]string{}
	for _, a := range answers {
		var v string
		if err := json.Unmarshal(a.Value, &v); err != nil {
			t.Fatalf("answer %s is not a string: %s", a.TaskID, a.Value)
		}
		saved[a.TaskID] = v
	}
	if saved["t1-addressing"] != answer || saved["t5-diagnosis"] != t5.Options[0] {
		t.Fatalf("saved answers %v", saved)
	}

	step("a reload keeps the answers and resumes the shell",
		chromedp.Reload(),
		poll(`!document.getElementById('view-work').hidden`, pageStepTimeout),
		poll(`document.getElementById('answer-t1-addressing').value === `+jsString(answer), pageStepTimeout),
		poll(`document.getElementById('answer-t5-diagnosis-0').checked`, pageStepTimeout),
		poll(`document.querySelector('.pane[data-node="tokyo"]').getAttribute('data-state') === 'connected'`, pageStepTimeout),
		// The relay replays the shell's recent output into the new page.
		poll(screenHas("tokyo", "tokyo"), pageStepTimeout),
		typeInto("tokyo", "echo again-$((40+2))\r"),
		poll(screenHas("tokyo", "again-42"), pageStepTimeout),
	)

	step("submit with confirmation",
		chromedp.Click(chromedp.CSS("#submit-open")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm-cancel")),
		poll(`document.getElementById('confirm').hidden && !document.getElementById('view-work').hidden`, pageStepTimeout),
		chromedp.Click(chromedp.CSS("#submit-open")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm-submit")),
		chromedp.WaitVisible(chromedp.CSS("#view-done")),
		poll(`document.getElementById('done-title').textContent === 'Exam submitted'`, pageStepTimeout),
		poll(`document.getElementById('submit-open').hidden && document.getElementById('clock').hidden`, pageStepTimeout),
	)
	sess, err := st.Store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if sess.SubmittedAt.IsZero() || sess.SubmitReason != "candidate" {
		t.Fatalf("session after submit: status %s, submitted %v, reason %q", sess.Status, sess.SubmittedAt, sess.SubmitReason)
	}
	step("after a reload the page still says the exam is submitted",
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS("#view-done")),
		poll(`document.getElementById('done-title').textContent === 'Exam submitted'`, pageStepTimeout),
		poll(`document.querySelectorAll('.pane[data-state="connected"]').length === 0`, pageStepTimeout),
	)
	// The archive runs on after the page says submitted; the lab is
	// removed by its cleanup, not by this test's, which would race the
	// capture's containers.
	waitState(t, st, id, session.StateCompleted, labDestroyTimeout)
}
