package api_test

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/testlab"
)

// TestQueuedPageInBrowser: the candidate page, in headless Chromium, tells
// a waiting candidate their place in line and the estimate in plain
// words, and follows the line as it moves without a reload: second, next,
// then their lab being prepared. The platform runs without a worker, so
// an admitted session holds its slot and no lab is ever made.
func TestQueuedPageInBrowser(t *testing.T) {
	addr := freeAddr(t)
	edit := queueEdit(t)
	st := testlab.Start(t, testlab.Options{Roles: &platform.Roles{API: true, Relay: true}, Config: func(c *config.Config) {
		edit(c)
		c.Listen, c.PublicURL = addr, "http://"+addr
	}})
	ctx := context.Background()
	cs, ids := candidates(t, st, "page1", 1, 2)
	holder, ahead := ids[0], ids[1]
	// The candidate the browser signs in as.
	issued, err := st.Store.AddEntries(ctx, "page1", []sitting.Row{{Line: 3, Email: "page1-browser@example.com", Name: "Browser"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	// Two labs of the sitting ended a moment ago: slots come free quickly,
	// so the page has an estimate to give.
	for _, id := range ids {
		sess, err := st.Store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Store.TakeSlot(ctx, sess); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Store.ReleaseSlot(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// The first start takes the one slot (its lab never comes: no
	// worker), the second waits.
	for i := range 2 {
		if code, err := cs[i].Do("POST", "/api/session/"+ids[i]+"/start", nil, nil); err != nil || code != 202 {
			t.Fatalf("start %d: %d %v", i+1, code, err)
		}
	}

	bctx := startBrowser(t, pageTestTimeout)
	poll := func(expr string) chromedp.Action[chromedp.Void] { return pollJS(expr, pageStepTimeout) }
	note := `document.getElementById('provision-note').textContent`
	title := `document.querySelector('#view-provision h1').textContent`
	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		browserStep(t, bctx, name, actions...)
	}

	// The candidate signs in with their code (through the API, whatever
	// the sign-in form looks like) and presses start on the page.
	code := issued[0].Code
	step("sign in and start",
		chromedp.Navigate(st.URL+"/"),
		chromedp.Evaluate[chromedp.Void](`fetch('/api/login', {method: 'POST', credentials: 'same-origin',
			headers: {'Content-Type': 'application/json'}, body: JSON.stringify({code: `+jsString(code)+`})})`, chromedp.EvalAwaitPromise),
		chromedp.Navigate(st.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#start-exam")),
		chromedp.Click(chromedp.CSS("#start-exam")),
		poll(`!document.getElementById('view-provision').hidden`),
		poll(title+` === 'Waiting for a free lab'`),
		poll(`/^You are number 2 in line; (less than a minute|about \d+ minutes?)\./.test(`+note+`)`),
		poll(`document.getElementById('clock').hidden && document.getElementById('node-progress').hidden`),
	)
	// The one ahead is taken out of the line: the page follows.
	if code, err := st.Admin().Do("DELETE", "/api/admin/queue/"+ahead, nil, nil); err != nil || code != 200 {
		t.Fatalf("remove: %d %v", code, err)
	}
	step("next in line", poll(`/^You are next in line/.test(`+note+`)`))
	// The lab holding the slot ends: the candidate is admitted.
	if err := scheduler.Release(ctx, st.Store, st.Enqueuer, holder, time.Now()); err != nil {
		t.Fatal(err)
	}
	step("admitted", poll(title+` === 'Preparing your lab' && !/in line/.test(`+note+`) && !document.getElementById('node-progress').hidden`))
}
