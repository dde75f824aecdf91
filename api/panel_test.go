package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/fasthttp/websocket"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// Named timeouts of the browser test.
const (
	browserTimeout  = 2*time.Minute + reviewTimeout // the page, then a review lab restored
	terminalTimeout = 30 * time.Second
	downloadTimeout = 2 * time.Minute
)

// typeInTerminal opens the candidate's terminal on node through the relay,
// runs line in the shell and waits until want appears in its output. The
// relay records the terminal as it goes.
func typeInTerminal(t *testing.T, st *testlab.Stack, token, id, node, line, want string) {
	t.Helper()
	url := "ws" + strings.TrimPrefix(st.URL, "http") + "/ws/session/" + id + "/terminal/" + node
	runInTerminal(t, url, http.Header{"Authorization": {"Bearer " + token}}, line, want)
}

// runInTerminal opens the terminal WebSocket at url presenting header,
// types line once the shell shows its prompt and waits until want appears
// in the output.
func runInTerminal(t *testing.T, url string, header http.Header, line, want string) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: terminalTimeout}
	ws, _, err := d.Dial(url, header)
	if err != nil {
		t.Fatalf("open terminal %s: %v", url, err)
	}
	defer ws.Close()
	var out bytes.Buffer
	ws.SetReadDeadline(time.Now().Add(terminalTimeout))
	// Type once the shell shows its prompt, then wait for the answer.
	sent := false
	for !strings.Contains(out.String(), want) {
		typ, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("terminal %s: %v; output so far: %q", url, err, out.String())
		}
		if typ == websocket.BinaryMessage {
			out.Write(b)
		}
		if !sent && strings.HasSuffix(strings.TrimRight(out.String(), " "), "#") {
			if err := ws.WriteMessage(websocket.BinaryMessage, []byte(line+"\r")); err != nil {
				t.Fatal(err)
			}
			sent = true
		}
	}
	ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"))
}

// TestAdminPanelInBrowser drives the admin panel in headless Chromium:
// sign in, filter to completed, search the candidate's email, open the
// session, replay the terminal recording the relay made (play, pause,
// seek, speed) and download a snapshot whose sha256 matches the manifest.
func TestAdminPanelInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	// A known address, so that the page's Origin is the configured public
	// URL the relay accepts (the review lab's terminal).
	addr := freeAddr(t)
	st := startStack(t, func(c *config.Config) { c.Listen, c.PublicURL = addr, "http://"+addr })
	cand, id := readyLab(t, st, "replay@example.com")
	for _, other := range []string{"someone@example.com", "else@example.com"} {
		st.Client().Login(t, other) // sessions the filters must hide
	}
	code, err := cand.Do("PUT", "/api/session/"+id+"/answers/t1-hostname", map[string]any{"value": "tokyo"}, nil)
	must(t, code, err, 200, "save answer")
	typeInTerminal(t, st, cand.Token, id, "tokyo", "echo replay-$((6*7))", "replay-42")
	code, err = cand.Do("POST", "/api/session/"+id+"/submit", nil, nil)
	must(t, code, err, 202, "submit")
	cand.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
	castPath, err := st.Store.Path(id, store.TerminalDir, "tokyo.cast")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(castPath); err != nil || !bytes.Contains(b, []byte("replay-42")) {
		t.Fatalf("the relay's recording %s: %v (%d bytes)", castPath, err, len(b))
	}
	manifest, err := st.Store.Manifest(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	tarName := "exam-" + id[:8] + "-tokyo.tar"
	var wantSum string
	for _, f := range manifest.Files {
		if f.Name == tarName {
			wantSum = f.SHA256
		}
	}
	if wantSum == "" {
		t.Fatalf("manifest has no %s: %+v", tarName, manifest.Files)
	}

	downloads := t.TempDir()
	actx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true))...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, browserTimeout)
	t.Cleanup(cancel)

	dump := func() string {
		page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		return page
	}
	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v\npage:\n%s", name, err, dump())
		}
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector(`+jsString(sel)+`).textContent`))
		if err != nil {
			t.Fatalf("read %s: %v\npage:\n%s", sel, err, dump())
		}
		return v
	}
	// js runs a script for its effect.
	js := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Evaluate[any](expr)(ctx, tg)
			return err
		})
	}
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](expr)(ctx, tg)
			return err
		})
	}
	setSelect := func(id, value string) chromedp.Action[chromedp.Void] {
		return js(`(function(){var e=document.getElementById(` + jsString(id) + `); e.value=` + jsString(value) + `; e.dispatchEvent(new Event("change"));})()`)
	}

	step("sign in",
		chromedp.Navigate(st.URL+"/admin"),
		chromedp.WaitVisible(chromedp.CSS("#login-token")),
		chromedp.SendKeys(chromedp.CSS("#login-token"), st.AdminToken),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#sessions tbody tr.row")),
		poll(`document.querySelectorAll("#sessions tbody tr.row").length === 3`),
	)
	step("filter to completed and search the email",
		setSelect("f-status", "completed"),
		poll(`document.getElementById("list-summary").textContent === "1 session"`),
		chromedp.SendKeys(chromedp.CSS("#f-search"), "replay@"),
		chromedp.Click(chromedp.CSS(`#filters button[type="submit"]`)),
		poll(`location.search.includes("q=replay") && document.getElementById("list-summary").textContent === "1 session"`),
	)
	if email, status := text("#sessions tbody tr.row td:nth-child(2)"), text("#sessions tbody tr.row td:nth-child(3)"); email != "replay@example.com" || status != "completed" {
		t.Fatalf("filtered list shows %q %q", email, status)
	}
	step("open the session",
		chromedp.Click(chromedp.CSS("#sessions tbody tr.row")),
		chromedp.WaitVisible(chromedp.CSS("#session")),
		poll(`document.getElementById("s-id").textContent === `+jsString(id)),
		poll(`document.querySelectorAll("#s-audit tbody tr").length > 0 && document.getElementById("s-answers").textContent.includes("tokyo")`),
		poll(`document.getElementById("rec-select").value === "tokyo.cast" && document.getElementById("rec-state").textContent === "paused"`),
	)
	step("replay at 16x to the end",
		setSelect("speed", "16"),
		chromedp.Click(chromedp.CSS("#play")),
		poll(`document.getElementById("rec-state").textContent === "finished"`),
		// xterm.js draws on the next animation frame, not on write.
		poll(`document.getElementById("player-screen").textContent.includes("replay-42")`),
	)
	if screen := text("#player-screen"); !strings.Contains(screen, "replay-42") || !strings.Contains(screen, "echo replay-$((6*7))") {
		t.Fatalf("replayed screen lacks the command and its output:\n%s", screen)
	}
	step("seek back to the start",
		js(`(function(){var s=document.getElementById("seek"); s.value="0"; s.dispatchEvent(new Event("input"));})()`),
		poll(`document.getElementById("rec-time").textContent.indexOf("0.0 /") === 0`),
		poll(`!document.getElementById("player-screen").textContent.includes("replay-42")`),
	)
	if screen := text("#player-screen"); strings.Contains(screen, "replay-42") {
		t.Fatalf("after seeking to 0 the screen still shows the output:\n%s", screen)
	}
	step("play slowly and pause",
		setSelect("speed", "0.5"),
		chromedp.Click(chromedp.CSS("#play")),
		poll(`document.getElementById("rec-state").textContent === "playing"`),
		chromedp.Click(chromedp.CSS("#pause")),
		poll(`document.getElementById("rec-state").textContent === "paused"`),
	)

	row := `#s-snapshots tbody tr[data-file="` + tarName + `"]`
	if shown := text(row + " td:nth-child(3)"); shown != wantSum {
		t.Fatalf("page shows sha256 %q for %s, manifest has %q", shown, tarName, wantSum)
	}
	progress := chromedp.Events(ctx, browser.DownloadProgress)
	step("download the tokyo snapshot",
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
				Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: downloads, EventsEnabled: ptrTo(true),
			})
			return err
		}),
		chromedp.Click(chromedp.CSS(row+" a.download")),
	)
	dctx, dcancel := context.WithTimeout(ctx, downloadTimeout)
	defer dcancel()
	var guid string
	for ev, err := range progress {
		if err != nil {
			t.Fatalf("download of %s: %v", tarName, err)
		}
		if ev.State == browser.DownloadProgressStateCompleted {
			guid = ev.GUID
			break
		}
		if ev.State == browser.DownloadProgressStateCanceled || dctx.Err() != nil {
			t.Fatalf("download of %s: %s", tarName, ev.State)
		}
	}
	f, err := os.Open(filepath.Join(downloads, guid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantSum {
		t.Fatalf("downloaded %s has sha256 %s, manifest %s", tarName, got, wantSum)
	}

	// A review lab restored from the archive, with a terminal in a node.
	t.Cleanup(func() {
		live, _ := st.Store.LiveReviews(context.Background())
		for _, rv := range live {
			st.Runtime.Destroy(context.Background(), rv.ID)
		}
	})
	step("start a review lab, type in its terminal, end it",
		js(`window.confirm = function () { return true; }`),
		poll(`document.getElementById("rv-state").textContent === "none"`),
		chromedp.Click(chromedp.CSS("#rv-start")),
		poll(`document.getElementById("rv-state").textContent === "ready"`),
		setSelect("rv-node", "tokyo"),
		chromedp.Click(chromedp.CSS("#rv-open")),
		poll(`document.getElementById("rv-term-state").textContent.includes("recorded")`),
		chromedp.SendKeys(chromedp.CSS("#rv-terminal .xterm-helper-textarea"), "echo review-$((6*7))\r"),
		poll(`document.getElementById("rv-terminal").textContent.includes("review-42")`),
		chromedp.Click(chromedp.CSS("#rv-end")),
		poll(`document.getElementById("rv-state").textContent === "none"`),
	)
}

func ptrTo[T any](v T) *T { return &v }
