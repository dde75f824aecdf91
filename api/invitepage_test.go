package api_test

import (
	"context"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/testlab"
)

// TestInvitationToTerminalInBrowser is a candidate's front door end to end
// in headless Chromium, on real Redis and real containers: the invitation
// link signs them in (the code never leaves the fragment), start puts
// them in line behind a running lab of their sitting (capacity 1) and the
// page shows their place, the other candidate's submit frees the slot,
// their lab comes up and its terminal answers.
func TestInvitationToTerminalInBrowser(t *testing.T) {
	addr := freeAddr(t)
	edit := queueEdit(t)
	st := testlab.Start(t, testlab.Options{Config: func(c *config.Config) {
		edit(c)
		c.Listen, c.PublicURL = addr, "http://"+addr
		c.Practice = false
	}})
	ctx := context.Background()
	cs, ids := candidates(t, st, "invite", 1, 1)
	holder := ids[0]
	issued, err := st.Store.AddEntries(ctx, "invite", []sitting.Row{{Line: 3, Email: "invited@example.com", Name: "Invited"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	// The other candidate's lab takes the sitting's one slot.
	cs[0].StartLab(t, holder)

	bctx := startBrowser(t, pageTestTimeout+testlab.ProvisionTimeout)
	poll := func(expr string) chromedp.Action[chromedp.Void] { return pollJS(expr, testlab.ProvisionTimeout) }
	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		browserStep(t, bctx, name, actions...)
	}
	note := `document.getElementById('provision-note').textContent`

	step("the invitation link signs the candidate in",
		chromedp.Navigate(st.URL+"/join#code="+issued[0].Code),
		chromedp.WaitVisible(chromedp.CSS("#start-exam")),
		// The code is taken out of the address bar once read.
		poll(`location.hash === '' && document.getElementById('who').textContent === 'invited@example.com'`),
	)
	e, err := st.Store.EntryByEmail(ctx, "invite", "invited@example.com")
	if err != nil || e.SessionID == "" {
		t.Fatalf("the link signed no one in: %+v %v", e, err)
	}
	t.Cleanup(func() {
		dctx, cancel := context.WithTimeout(context.Background(), labDestroyTimeout)
		defer cancel()
		st.Runtime.Destroy(dctx, e.SessionID)
	})
	step("start waits in line behind the running lab",
		chromedp.Click(chromedp.CSS("#start-exam")),
		poll(`!document.getElementById('view-provision').hidden`),
		poll(`/^You are next in line/.test(`+note+`)`),
	)
	// The other candidate submits: their lab is archived and removed, and
	// its slot goes to the one waiting.
	if code, err := cs[0].Do("POST", "/api/session/"+holder+"/submit", nil, nil); err != nil || code != 202 {
		t.Fatalf("submit the running lab: %d %v", code, err)
	}
	step("admitted, the lab comes up and its terminal answers",
		poll(`!document.getElementById('view-work').hidden`),
		poll(`document.querySelector('.pane[data-node="solo"]').getAttribute('data-state') === 'connected'`),
		chromedp.Click(chromedp.CSS(`.pane[data-node="solo"] .xterm-screen`)),
		chromedp.KeyEvent("echo front-$((6*7))\r"),
		poll(`Array.from(document.querySelectorAll('.pane[data-node="solo"] .xterm-rows > div')).some(function (r) { return r.textContent.trim() === 'front-42'; })`),
	)
}
