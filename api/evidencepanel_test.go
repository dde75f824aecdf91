package api_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// The panel shows each session's evidence state in the list and on the
// session page, with each problem named; "Verify now" hashes the files.
// In-memory lab runtime (no Docker); needs Debian's chromium (make deps).
// EXAMLAB_SCREENSHOTS=DIR saves what the browser showed.
func TestEvidenceInThePanel(t *testing.T) {
	ctx := startBrowser(t, browserTimeout)
	st := memStack(t, nil)
	ended := func(email string) string {
		c := st.Client()
		id := c.Login(t, email)
		c.StartLab(t, id)
		code, err := c.Do("PUT", "/api/session/"+id+"/answers/t2-notes", map[string]any{"value": "notes of " + email}, nil)
		must(t, code, err, 200, "save answer")
		code, err = c.Do("POST", "/api/session/"+id+"/submit", nil, nil)
		must(t, code, err, 202, "submit")
		c.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
		dir := filepath.Join(st.Config.StateDir, "sessions", id)
		for deadline := time.Now().Add(sealTimeout); ; time.Sleep(20 * time.Millisecond) {
			if ok, _ := evidence.IsSealed(dir); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("session %s not sealed", id)
			}
		}
		return id
	}
	good, bad := ended("kept@example.com"), ended("changed@example.com")
	st.Client().Login(t, "waiting@example.com")
	answer, err := st.Store.Path(bad, store.AnswersDir, "t2-notes.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(answer, []byte(`{"task_id":"t2-notes","value":"rewritten"}`), 0o640); err != nil {
		t.Fatal(err)
	}

	shot := func(name string) {
		dir := os.Getenv("EXAMLAB_SCREENSHOTS")
		if dir == "" {
			return
		}
		b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name+".png"), b, 0o644)
		}
		if err != nil {
			t.Logf("screenshot %s: %v", name, err)
		}
	}
	cell := func(id string) string {
		return `(function(){var r=document.querySelector('#sessions tr[data-id="` + id + `"]'); return r ? r.cells[4].textContent : "";})()`
	}
	browserStep(t, ctx, "sign in and list",
		chromedp.Navigate(st.URL+"/admin"),
		chromedp.WaitVisible(chromedp.CSS("#login-token")),
		chromedp.SendKeys(chromedp.CSS("#login-token"), st.AdminToken),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		pollJS(`document.querySelectorAll("#sessions tbody tr.row").length === 3`, requestTimeout),
		pollJS(cell(good)+` === "verified"`, requestTimeout),
		pollJS(cell(bad)+` === "FAILED"`, requestTimeout),
		pollJS(`document.querySelector("#sessions tbody").textContent.includes("not sealed yet")`, requestTimeout),
	)
	shot("evidence-list")
	browserStep(t, ctx, "open the changed session",
		chromedp.Navigate(st.URL+"/admin/session/"+bad),
		pollJS(`document.getElementById("ev-badge").textContent === "FAILED"`, requestTimeout),
		pollJS(`document.getElementById("ev-problems").textContent.includes("changed answers/t2-notes.json")`, requestTimeout),
	)
	shot("evidence-failed")
	// Put the answer back as it was sealed: a full verification finds the
	// folder whole again.
	browserStep(t, ctx, "open the kept session and verify it now",
		chromedp.Navigate(st.URL+"/admin/session/"+good),
		pollJS(`document.getElementById("ev-badge").textContent === "verified"`, requestTimeout),
		pollJS(`document.getElementById("ev-summary").textContent.includes("Key SHA256:")`, requestTimeout),
		chromedp.Click(chromedp.CSS("#ev-verify")),
		pollJS(`document.getElementById("s-message").textContent.indexOf("Verified") === 0`, requestTimeout),
	)
	shot("evidence-verified")
	summary, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("ev-summary").textContent`))
	if err != nil || !strings.Contains(summary, "Every file matches") {
		t.Fatalf("summary %q: %v", summary, err)
	}
}
