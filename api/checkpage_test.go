package api_test

import (
	"context"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/store"
)

// TestCheckMyWorkInBrowser presses "Check my work" on the candidate page
// (headless Chromium) and reads the result, while neither the page nor
// anything it loaded holds a check's command or expected output.
func TestCheckMyWorkInBrowser(t *testing.T) {
	st, rt := gradingStack(t)
	ctx := startBrowser(t, pageTestTimeout)
	const email = "checker@example.com"

	browserStep(t, ctx, "sign in and start",
		chromedp.Navigate(st.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-email")),
		chromedp.SendKeys(chromedp.CSS("#login-email"), email),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#start-exam")),
		chromedp.Click(chromedp.CSS("#start-exam")),
		pollJS(`!document.getElementById('view-work').hidden`, pageStepTimeout),
		pollJS(`!!document.getElementById('checkwork-run-t1-marker')`, pageStepTimeout),
	)
	res, err := st.Store.List(context.Background(), store.ListQuery{Search: email})
	if err != nil || len(res.Sessions) != 1 {
		t.Fatalf("find the session: %v %+v", err, res)
	}
	id := res.Sessions[0].ID
	if has, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!!document.getElementById('checkwork-run-t2-choice')`)); err != nil || has {
		t.Fatalf("a task without checks got a check button (%v)", err)
	}

	browserStep(t, ctx, "check before the work",
		pollJS(`document.getElementById('checkwork-left-t1-marker').textContent === '2 of 2 checks left'`, pageStepTimeout),
		chromedp.Click(chromedp.CSS("#checkwork-run-t1-marker")),
		pollJS(`document.getElementById('checkwork-result-t1-marker').className.indexOf('fail') >= 0`, pageStepTimeout),
	)
	inNode(t, rt, id, "tokyo", "echo yes > /root/done.txt")
	inNode(t, rt, id, "osaka", "touch /root/ready")
	browserStep(t, ctx, "check after the work",
		pollJS(`!document.getElementById('checkwork-run-t1-marker').disabled`, pageStepTimeout),
		chromedp.Click(chromedp.CSS("#checkwork-run-t1-marker")),
		pollJS(`document.getElementById('checkwork-result-t1-marker').className.indexOf('pass') >= 0`, pageStepTimeout),
		pollJS(`document.getElementById('checkwork-run-t1-marker').disabled`, pageStepTimeout),
	)
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('checkwork-t1-marker').innerText`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"All checks pass.", "tokyo says yes", "osaka is ready", "Hidden checks: 1 passed of 1", "0 of 2 checks left"} {
		if !strings.Contains(text, want) {
			t.Errorf("the check's result does not say %q:\n%s", want, text)
		}
	}
	html, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range checkSecrets {
		if strings.Contains(html, s) {
			t.Errorf("the page holds %q", s)
		}
	}
}
