package api_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/testlab"
)

// waitState waits until the store records session id in state want.
func waitState(t *testing.T, st *testlab.Stack, id string, want session.State, timeout time.Duration) *session.Session {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		sess, err := st.Store.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if sess.Status == want {
			return sess
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s is %s after %v, want %s", id, sess.Status, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestQueuePanelInBrowser: the admin panel's queue view, in headless
// Chromium, on a sitting of capacity 1. The platform runs without a
// worker, so an admitted session holds its slot and no lab is ever made.
// From the sitting's page the admin follows the link to its line, admits
// the one waiting, sees a new start join the line without a reload, takes
// it out with a reason, and is told in words when the candidate they
// meant to remove had already left the line.
func TestQueuePanelInBrowser(t *testing.T) {
	st := testlab.Start(t, testlab.Options{Roles: &platform.Roles{API: true, Relay: true}, Config: queueEdit(t)})
	cs, ids := candidates(t, st, "panel1", 1, 4)
	start := func(i int) {
		t.Helper()
		if code, err := cs[i].Do("POST", "/api/session/"+ids[i]+"/start", nil, nil); err != nil || code != 202 {
			t.Fatalf("start %d: %d %v", i+1, code, err)
		}
	}
	// The first takes the one slot, the second waits.
	start(0)
	start(1)
	waitState(t, st, ids[0], session.StateProvisioning, pageStepTimeout)
	waitState(t, st, ids[1], session.StateQueued, pageStepTimeout)

	ctx := startBrowser(t, browserTimeout)

	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		browserStep(t, ctx, name, actions...)
	}
	js := evalJS
	poll := func(expr string) chromedp.Action[chromedp.Void] { return pollJS(expr, pageStepTimeout) }
	text := func(expr string) string { return expr + `.textContent` }
	rowOf := func(id string) string {
		return `document.querySelector('#q-sittings tr[data-session=` + jsString(id) + `]')`
	}
	message := `document.getElementById('q-message')`
	card := `document.querySelector('#q-sittings [data-sitting="panel1"]')`

	step("sign in on the sitting's page, which says one waits and links to the line",
		chromedp.Navigate(st.URL+"/admin/sittings/panel1"),
		chromedp.WaitVisible(chromedp.CSS("#login-token")),
		chromedp.SendKeys(chromedp.CSS("#login-token"), st.AdminToken),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#sitting")),
		poll(text(`document.getElementById('t-facts')`)+`.includes("1 candidate waiting: see its line")`),
		chromedp.Click(chromedp.CSS("#t-queue-link")),
		poll(`location.pathname === "/admin/queue" && location.search === "?sitting=panel1" && !document.getElementById('queue').hidden`),
	)
	step("the waiting candidate at position 1, the sitting full",
		poll(rowOf(ids[1])+` !== null`),
		poll(text(rowOf(ids[1])+`.cells[0]`)+` === "1" && `+text(rowOf(ids[1])+`.cells[1]`)+`.includes("panel1-2@example.com")`),
		poll(`/^\d+ s$/.test(`+text(rowOf(ids[1])+`.cells[2]`)+`)`),
		poll(text(card+`.querySelector('.slots')`)+`.startsWith("Labs running: 1 of 1 (its capacity).")`),
		poll(`document.querySelectorAll('#q-sittings tr[data-session]').length === 1`),
	)
	step("admit now",
		js(`window.confirm = function () { return true; }`),
		chromedp.Click(chromedp.CSS(`#q-sittings tr[data-session="`+ids[1]+`"] button.admit`)),
		poll(text(message)+` === "panel1-2@example.com was admitted: their lab is being prepared."`),
	)
	waitState(t, st, ids[1], session.StateProvisioning, pageStepTimeout)
	step("the line empty, both labs counted",
		poll(rowOf(ids[1])+` === null && `+text(card)+`.includes("Nobody waiting.")`),
		poll(text(card+`.querySelector('.slots')`)+`.startsWith("Labs running: 2 of 1 (its capacity).")`),
	)

	// A start joins the line while the admin watches: the view follows
	// without a reload.
	start(2)
	step("a new start appears in the line",
		poll(rowOf(ids[2])+` !== null && `+text(rowOf(ids[2])+`.cells[0]`)+` === "1"`),
	)
	step("remove it with a reason",
		chromedp.Click(chromedp.CSS(`#q-sittings tr[data-session="`+ids[2]+`"] button.remove`)),
		poll(`document.getElementById('q-remove').open && `+text(`document.getElementById('q-remove-who')`)+` === "panel1-3@example.com"`),
		chromedp.SendKeys(chromedp.CSS("#q-remove-reason"), "wrong sitting"),
		chromedp.Click(chromedp.CSS("#q-remove-confirm")),
		poll(`!document.getElementById('q-remove').open`),
		poll(text(message)+`.startsWith("panel1-3@example.com was taken out of the line")`),
	)
	removed := waitState(t, st, ids[2], session.StateFailed, pageStepTimeout)
	if removed.Error != "removed from the queue by the exam staff: wrong sitting" {
		t.Fatalf("removed session's error %q, want the reason", removed.Error)
	}
	step("the line empty again", poll(rowOf(ids[2])+` === null`))

	// Someone else takes the candidate out while the admin's dialog is
	// open: the admin reads the API's reason, not a status code.
	start(3)
	step("open the remove dialog for the next start",
		poll(rowOf(ids[3])+` !== null`),
		chromedp.Click(chromedp.CSS(`#q-sittings tr[data-session="`+ids[3]+`"] button.remove`)),
		poll(`document.getElementById('q-remove').open`),
	)
	if code, err := st.Admin().Do("DELETE", "/api/admin/queue/"+ids[3], nil, nil); err != nil || code != 200 {
		t.Fatalf("remove through the API: %d %v", code, err)
	}
	step("the refusal in words",
		chromedp.Click(chromedp.CSS("#q-remove-confirm")),
		poll(message+`.className === "error" && `+text(message)+`.startsWith("Could not remove panel1-4@example.com: ")`),
	)
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[string](text(message)))
	if err != nil || !strings.Contains(shown, "is not waiting in the queue") || strings.Contains(shown, "409") {
		t.Fatalf("the refusal reads %q (%v), want the API's message", shown, err)
	}
}
