package api_test

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// leftoverTimeout bounds each wait on the reaper (it runs every second
// here) to retry or clear a leftover.
const leftoverTimeout = 2 * time.Minute

type leftoverDetails struct {
	Session struct {
		Status string `json:"status"`
	} `json:"session"`
	Leftovers []store.Leftover   `json:"leftovers"`
	Audit     []store.AuditEntry `json:"audit"`
}

func leftoverView(t *testing.T, admin *testlab.Client, id string) leftoverDetails {
	t.Helper()
	var d leftoverDetails
	code, err := admin.Do("GET", "/api/admin/session/"+id+"/details", nil, &d)
	must(t, code, err, 200, "details of "+id)
	return d
}

// scrape returns the API's metrics text.
func scrape(t *testing.T, st *testlab.Stack) string {
	t.Helper()
	resp := fetch(t, st.URL+"/metrics", st.AdminToken)
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics: %s %v", resp.Status, err)
	}
	return string(b)
}

// TestEngineHoldingANetworkHoldsNoSession makes the engine refuse to remove
// a lab's network for real: a container that is no lab's stays attached
// to it, so after the lab's containers are gone the engine answers
// "active endpoints", as it does for the empty networks it sometimes will
// not let go of. The session completes all the same; the network is on
// record, in the admin's view and in the metrics, the reaper keeps trying,
// a new lab gets another subnet; once the hold goes the reaper removes the
// network and drops the record.
func TestEngineHoldingANetworkHoldsNoSession(t *testing.T) {
	st := startStack(t, nil)
	eng := testlab.NewEngine(t)
	admin := st.Admin()
	c, id := readyLab(t, st, "held@example.com")
	nets := eng.Networks(t, id)
	if len(nets) != 1 || len(nets[0].IPAM.Config) != 1 {
		t.Fatalf("lab networks %+v, want one with one subnet", nets)
	}
	subnet := nets[0].IPAM.Config[0].Subnet
	release := eng.HoldNetwork(t, "examlab-test-hold-"+id[:8], lab.NetworkName(id), labImage)

	code, err := admin.Do("POST", "/api/admin/session/"+id+"/submit", nil, nil)
	must(t, code, err, 202, "submit")
	c.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
	if left := eng.Containers(t, id); len(left) != 0 {
		t.Fatalf("containers left after cleanup: %s", testlab.Summary(left))
	}
	if n := eng.Networks(t, id); len(n) != 1 {
		t.Fatalf("networks %+v: the engine should still hold the lab's network", n)
	}

	d := waitAudit(t, admin, id, "worker", "lab-leftover")
	ld := leftoverView(t, admin, id)
	if len(ld.Leftovers) != 1 {
		t.Fatalf("leftovers in the details %+v, want the network", ld.Leftovers)
	}
	l := ld.Leftovers[0]
	if l.Kind != lab.LeftoverNetwork || l.Name != lab.NetworkName(id) || l.Subnet != subnet || l.Runtime != "docker" ||
		l.Attempts < 1 || l.FirstSeen.IsZero() || !strings.Contains(l.LastError, "active endpoints") {
		t.Fatalf("leftover %+v, want network %s holding %s refused for active endpoints", l, lab.NetworkName(id), subnet)
	}
	if d.Manifest == nil {
		t.Fatal("no manifest: the archive should be complete before the session completes")
	}
	var all struct {
		Leftovers []store.Leftover `json:"leftovers"`
		Count     int              `json:"count"`
	}
	code, err = admin.Do("GET", "/api/admin/leftovers", nil, &all)
	must(t, code, err, 200, "leftovers")
	if all.Count != 1 || all.Leftovers[0].SessionID != id {
		t.Fatalf("admin leftovers %+v, want the one of %s", all, id)
	}
	code, _ = st.Client().Do("GET", "/api/admin/leftovers", nil, nil)
	if code != 401 {
		t.Fatalf("leftovers without admin: %d, want 401", code)
	}
	m := scrape(t, st)
	for _, want := range []string{`examlab_lab_leftovers{kind="network",runtime="docker"} 1`, `examlab_lab_leftovers_total{event="recorded"} 1`} {
		if !strings.Contains(m, want) {
			t.Fatalf("metrics lack %q", want)
		}
	}

	// The admin panel shows it above the session list and on the session.
	bctx := startBrowser(t, browserTimeout)
	browserStep(t, bctx, "sign in and see the leftover above the list",
		chromedp.Navigate(st.URL+"/admin"),
		chromedp.WaitVisible(chromedp.CSS("#login-token")),
		chromedp.SendKeys(chromedp.CSS("#login-token"), st.AdminToken),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#leftovers")),
		pollJS(`document.getElementById("leftover-list").textContent.includes(`+jsString(lab.NetworkName(id))+`) &&
			document.getElementById("leftover-list").textContent.includes("active endpoints") &&
			document.getElementById("leftover-count").textContent === "1"`, requestTimeout),
	)
	browserStep(t, bctx, "open the session from the leftover",
		chromedp.Click(chromedp.CSS("#leftover-list tbody tr.row")),
		chromedp.WaitVisible(chromedp.CSS("#s-leftovers")),
		pollJS(`document.getElementById("s-id").textContent === `+jsString(id)+` &&
			document.getElementById("s-leftovers").textContent.includes(`+jsString(subnet)+`)`, requestTimeout),
	)

	// The reaper retries it, pass after pass.
	deadline := time.Now().Add(leftoverTimeout)
	for {
		ld = leftoverView(t, admin, id)
		if len(ld.Leftovers) == 1 && ld.Leftovers[0].Attempts >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leftovers %+v: the reaper has not retried it twice in %s", ld.Leftovers, leftoverTimeout)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A new lab is not given the held subnet.
	_, next := readyLab(t, st, "next@example.com")
	nn := eng.Networks(t, next)
	if len(nn) != 1 || len(nn[0].IPAM.Config) != 1 || nn[0].IPAM.Config[0].Subnet == subnet {
		t.Fatalf("new lab's networks %+v: it must not get %s", nn, subnet)
	}

	// The hold goes: the reaper removes the network and drops the record.
	release()
	waitAudit(t, admin, id, "worker", "lab-leftover-cleared")
	if ld = leftoverView(t, admin, id); len(ld.Leftovers) != 0 || ld.Session.Status != "completed" {
		t.Fatalf("after the hold: %s with leftovers %+v, want completed with none", ld.Session.Status, ld.Leftovers)
	}
	if n := eng.Networks(t, id); len(n) != 0 {
		t.Fatalf("networks %+v left after the reaper cleared the record", n)
	}
	m = scrape(t, st)
	if strings.Contains(m, "examlab_lab_leftovers{") || !strings.Contains(m, `examlab_lab_leftovers_total{event="cleared"} 1`) {
		t.Fatalf("metrics after clearing:\n%s", grepLines(m, "examlab_lab_leftovers"))
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return fmt.Sprint(strings.Join(out, "\n"))
}
