package relay_test

// These tests drive real parts: a private redis-server (testlab.Redis), the
// whole platform in process, and a real eight-node lab on the local Docker
// engine built from the examlab/node:bookworm image (`make image`). Only the
// labs of sessions these tests create are removed again.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/ratelimit"
	"github.com/examlab/examlab/relay"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

const (
	labImage       = "examlab/node:bookworm"
	destroyTimeout = 2 * time.Minute
	floodBytes     = 50_000_000
	// floodHeapBound is how much the process's heap may grow while 50 MB
	// of output passes through the relay to a client that stalls for a
	// while: the relay holds at most its send queue and replay buffer
	// (512 KiB by default); the rest is garbage the collector has not yet
	// reclaimed and the test's own bookkeeping. A relay that buffered the
	// flood would need about 50 MB more.
	floodHeapBound = 24 << 20
	// floodStallLimit bounds how long the flood's client stays stalled
	// waiting for output to back up into the relay.
	floodStallLimit = 30 * time.Second
)

// requireImage fails the test when the lab image is missing: a skipped
// terminal test would hide a broken setup.
func requireImage(t testing.TB) {
	t.Helper()
	sock := "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		sock = strings.TrimPrefix(h, "unix://")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := hc.Get("http://docker/images/" + labImage + "/json")
	if err != nil {
		t.Fatalf("these tests need the Docker engine at %s: %v", sock, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		t.Fatalf("image %s is missing: run `make image` (deploy/image/build.sh) first", labImage)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("inspect image %s: HTTP %d", labImage, resp.StatusCode)
	}
}

// freeAddr picks a loopback address to listen on, so that the public URL
// (and with it the allowed Origin) is known before the platform starts.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// labStack is a running platform with one candidate's lab up.
type labStack struct {
	*testlab.Stack
	addr      string
	origin    string
	candidate *testlab.Client
	session   string
	token     string
}

func startLab(t testing.TB, o testlab.Options) *labStack {
	t.Helper()
	requireImage(t)
	addr := freeAddr(t)
	edit := o.Config
	o.Config = func(c *config.Config) {
		c.Listen = addr
		c.PublicURL = "http://" + addr
		if edit != nil {
			edit(c)
		}
	}
	// The periodic sweeps stay off: the orphan reaper destroys every lab on
	// the engine that its own store does not know, which would include the
	// labs of other tests running beside this one.
	o.Platform.NoScheduler = true
	if o.Platform.Holder == "" {
		o.Platform.Holder = holderBinary(t)
	}
	st := testlab.Start(t, o)
	cand := st.Client()
	id := cand.Login(t, "candidate-"+strings.ToLower(t.Name()[:4])+"@example.com")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
		defer cancel()
		if err := st.Runtime.Destroy(ctx, id); err != nil {
			t.Errorf("destroy lab %s: %v", id, err)
		}
	})
	cand.StartLab(t, id)
	return &labStack{Stack: st, addr: addr, origin: "http://" + addr, candidate: cand, session: id, token: cand.Token}
}

func (ls *labStack) termURL(node string) string {
	return "ws://" + ls.addr + "/ws/session/" + ls.session + "/terminal/" + node
}

// containerURL is the seed's route to a terminal, by container name.
func (ls *labStack) containerURL(session, node string) string {
	return "ws://" + ls.addr + "/api/terminal/" + lab.ContainerName(session, node)
}

func (ls *labStack) adminURL(node string) string {
	return "ws://" + ls.addr + "/ws/admin/session/" + ls.session + "/terminal/" + node
}

// browser is how the candidate's page connects: cookie and Origin.
func (ls *labStack) browser() dialOpts {
	return dialOpts{cookie: auth.CandidateCookie + "=" + ls.token, origin: ls.origin}
}

func TestTerminals(t *testing.T) {
	ls := startLab(t, testlab.Options{})
	nodes := exam.Default().NodeNames()

	t.Run("every node answers hostname", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, node := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tm := dial(t, ls.termURL(node), ls.browser())
				if r := tm.waitReady(); r["node"] != node || r["read_only"] != false {
					t.Errorf("ready message %v", r)
				}
				tm.send("hostname\r")
				tm.waitLine(node)
			}()
		}
		wg.Wait()
	})

	t.Run("resize changes the terminal size", func(t *testing.T) {
		tm := dial(t, ls.termURL("tokyo"), ls.browser())
		tm.waitReady()
		for _, sz := range [][2]int{{33, 101}, {40, 132}} {
			tm.sendJSON(map[string]any{"type": "resize", "rows": sz[0], "cols": sz[1]})
			tm.send("stty size\r")
			tm.waitLine(fmt.Sprintf("%d %d", sz[0], sz[1]))
		}
	})

	t.Run("refusals", func(t *testing.T) {
		other := ls.Client()
		otherID := other.Login(t, "someone-else@example.com")
		cases := []struct {
			name string
			url  string
			opts dialOpts
			keys string // typed before the close arrives
			want int
		}{
			{"no credentials", ls.termURL("tokyo"), dialOpts{origin: ls.origin}, "id\r", relay.CloseAuth},
			{"unknown token", ls.termURL("tokyo"), dialOpts{bearer: "not-a-token", origin: ls.origin}, "", relay.CloseAuth},
			{"another candidate's token", ls.termURL("tokyo"), dialOpts{cookie: auth.CandidateCookie + "=" + other.Token, origin: ls.origin}, "", relay.CloseForbidden},
			{"another candidate's first-frame token", ls.termURL("tokyo"), dialOpts{firstAuth: other.Token}, "", relay.CloseForbidden},
			{"foreign origin", ls.termURL("tokyo"), dialOpts{cookie: auth.CandidateCookie + "=" + ls.token, origin: "http://evil.example"}, "", relay.CloseForbidden},
			{"null origin", ls.termURL("tokyo"), dialOpts{cookie: auth.CandidateCookie + "=" + ls.token, origin: "null"}, "", relay.CloseForbidden},
			{"node outside the lab", ls.termURL("mars"), ls.browser(), "", relay.CloseNotFound},
			{"malformed node", ls.termURL("TOKYO..x"), ls.browser(), "", relay.CloseNotFound},
			{"session that is not theirs", "ws://" + ls.addr + "/ws/session/zzzzzzzzzzzz/terminal/tokyo", ls.browser(), "", relay.CloseForbidden},
			{"admin token on the candidate route", ls.termURL("tokyo"), dialOpts{bearer: ls.AdminToken}, "", relay.CloseForbidden},
			{"candidate on the admin route", ls.adminURL("tokyo"), dialOpts{cookie: auth.AdminCookie + "=" + ls.token, origin: ls.origin}, "", relay.CloseForbidden},
			{"candidate cookie on the admin route", ls.adminURL("tokyo"), ls.browser(), "x", relay.CloseAuth},
			{"admin on a node outside the lab", ls.adminURL("mars"), dialOpts{bearer: ls.AdminToken}, "", relay.CloseNotFound},
			{"seed route to another candidate's container", ls.containerURL(otherID, "tokyo"), ls.browser(), "", relay.CloseForbidden},
			{"seed route with another candidate's token", ls.containerURL(ls.session, "tokyo"), dialOpts{bearer: other.Token}, "", relay.CloseForbidden},
			{"seed route to a node outside the lab", ls.containerURL(ls.session, "mars"), ls.browser(), "", relay.CloseNotFound},
			{"seed route from a foreign origin", ls.containerURL(ls.session, "tokyo"), dialOpts{cookie: auth.CandidateCookie + "=" + ls.token, origin: "http://evil.example"}, "", relay.CloseForbidden},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tm := dial(t, tc.url, tc.opts)
				if tc.keys != "" {
					tm.send(tc.keys)
				}
				code, reason := tm.waitClose()
				if code != tc.want {
					t.Errorf("closed with %d %q, want %d", code, reason, tc.want)
				}
				if reason == "" {
					t.Errorf("close %d has no reason", code)
				}
				tm.mu.Lock()
				defer tm.mu.Unlock()
				for _, m := range tm.controls {
					if m["type"] == "ready" {
						t.Errorf("a refused connection got attached: %v", m)
					}
				}
				if tm.total > 0 {
					t.Errorf("a refused connection received %d bytes of terminal output", tm.total)
				}
			})
		}
	})

	t.Run("first-frame token without a cookie", func(t *testing.T) {
		tm := dial(t, ls.termURL("osaka"), dialOpts{firstAuth: ls.token})
		tm.waitReady()
		tm.send("hostname\r")
		tm.waitLine("osaka")
	})

	t.Run("plain HTTP on a terminal route is told to upgrade", func(t *testing.T) {
		resp, err := http.Get("http://" + ls.addr + "/ws/session/" + ls.session + "/terminal/tokyo")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired {
			t.Errorf("HTTP %d, want 426", resp.StatusCode)
		}
	})

	t.Run("oversized message closes with 1009", func(t *testing.T) {
		tm := dial(t, ls.termURL("g3"), ls.browser())
		tm.waitReady()
		tm.send(strings.Repeat("x", ls.Config.MaxMessageBytes+1))
		if code, reason := tm.waitClose(); code != relay.CloseTooBig {
			t.Errorf("closed with %d %q, want 1009", code, reason)
		}
	})

	t.Run("output flood stays bounded and ctrl-c interrupts", func(t *testing.T) {
		tm := dial(t, ls.termURL("osaka"), ls.browser())
		tm.waitReady()
		// The shell answers first, so that the stall below meets output
		// rather than a login shell still starting.
		tm.send("echo UP-$((1+1))\r")
		tm.waitLine("UP-2")
		tm.mu.Lock()
		tm.counted = 'Z'
		tm.mu.Unlock()

		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)
		var peakHeap uint64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			var ms runtime.MemStats
			for {
				runtime.ReadMemStats(&ms)
				peakHeap = max(peakHeap, ms.HeapAlloc)
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()

		// The client stalls for a moment while the flood starts, so output
		// backs up into the relay; then it reads as fast as it can.
		start := time.Now()
		tm.pause()
		tm.send(fmt.Sprintf("head -c %d /dev/zero | tr '\\0' '\\132'; echo; echo FLOOD-$((6*7))\r", floodBytes))
		// Stalled until the output has backed up into the relay's queue:
		// on a busy machine the flood may take seconds to start. The wait
		// is bounded; a flood that never presses on the queue fails below.
		var stalled relay.Stats
		for deadline := time.Now().Add(floodStallLimit); ; time.Sleep(50 * time.Millisecond) {
			stalled = ls.Relay.Stats()
			if stalled.QueuedBytes >= stalled.QueueLimitBytes/2 || time.Now().After(deadline) {
				break
			}
		}
		stallFor := time.Since(start)
		tm.resume()
		tm.until("the whole flood", 3*time.Minute, func() bool {
			return tm.count >= floodBytes && bytes.Contains(tm.screen.Bytes(), []byte("FLOOD-42\r\n"))
		})
		elapsed := time.Since(start)
		close(stop)
		<-sampled

		st := ls.Relay.Stats()
		t.Logf("flood: %d bytes in %s (%.1f MB/s incl. a %s stall); queued while stalled %d B, peak queued on one connection %d B (limit %d), heap %d -> peak %d (+%.1f MiB)",
			floodBytes, elapsed.Round(time.Millisecond), floodBytes/elapsed.Seconds()/1e6, stallFor.Round(time.Millisecond), stalled.QueuedBytes,
			st.PeakConnQueuedBytes, st.QueueLimitBytes, base.HeapAlloc, peakHeap, float64(peakHeap-min(peakHeap, base.HeapAlloc))/(1<<20))
		if tm.count != floodBytes {
			t.Errorf("received %d flood bytes, want exactly %d", tm.count, floodBytes)
		}
		// The limit is per connection; the relay-wide peak may include
		// other terminals' output queued at the same moment.
		if st.PeakConnQueuedBytes > st.QueueLimitBytes {
			t.Errorf("a connection queued %d bytes at once, above its limit of %d", st.PeakConnQueuedBytes, st.QueueLimitBytes)
		}
		if stalled.QueuedBytes < st.QueueLimitBytes/2 {
			t.Errorf("only %d bytes queued while the client stalled: the test did not press on the queue (limit %d)", stalled.QueuedBytes, st.QueueLimitBytes)
		}
		if grew := peakHeap - min(peakHeap, base.HeapAlloc); grew > floodHeapBound {
			t.Errorf("heap grew by %d bytes during the flood, bound %d", grew, floodHeapBound)
		}

		tm.mu.Lock()
		tm.counted, tm.count = 'y', 0
		tm.mu.Unlock()
		tm.send("yes\r")
		tm.until("yes to flood", outputTimeout, func() bool { return tm.count > 1<<20 })
		tm.send("\x03")
		tm.send("echo INT-$((6*7))\r")
		tm.waitLine("INT-42")
	})

	t.Run("a dropped connection reattaches to the same shell", func(t *testing.T) {
		tm := dial(t, ls.termURL("kyoto"), ls.browser())
		tm.waitReady()
		tm.send("export X=42; echo set-$((40+2))\r")
		tm.waitLine("set-42")
		tm.drop()

		again := dial(t, ls.termURL("kyoto"), ls.browser())
		ready := again.waitReady()
		if ready["reattached"] != true {
			t.Errorf("ready %v: want reattached", ready)
		}
		if replay, _ := ready["replay"].(float64); replay <= 0 {
			t.Errorf("ready %v: want a replay of recent output", ready)
		}
		// The replay restores the screen before anything new arrives.
		again.waitLine("set-42")
		again.send("echo X is $X\r")
		again.waitLine("X is 42")
	})

	t.Run("the seed's route by container name is the same terminal", func(t *testing.T) {
		tm := dial(t, ls.termURL("phoenix"), ls.browser())
		tm.waitReady()
		tm.send("export Y=7; echo set-$((3+4))\r")
		tm.waitLine("set-7")
		tm.drop()

		seed := dial(t, ls.containerURL(ls.session, "phoenix"), dialOpts{firstAuth: ls.token})
		if ready := seed.waitReady(); ready["reattached"] != true || ready["node"] != "phoenix" || ready["session"] != ls.session {
			t.Errorf("ready %v: want phoenix of %s, reattached", ready, ls.session)
		}
		seed.send("echo Y is $Y\r")
		seed.waitLine("Y is 7")
	})

	t.Run("admins watch read-only", func(t *testing.T) {
		cand := dial(t, ls.termURL("g2"), ls.browser())
		cand.waitReady()
		view := dial(t, ls.adminURL("g2"), dialOpts{cookie: auth.AdminCookie + "=" + ls.AdminToken, origin: ls.origin})
		if r := view.waitReady(); r["read_only"] != true {
			t.Errorf("admin ready %v: want read_only", r)
		}
		cand.send("echo seen-$((2+3))\r")
		view.waitLine("seen-5")
		view.send("echo hijack-$((1+1))\r")
		view.until("the read-only notice", outputTimeout, func() bool {
			for _, m := range view.controls {
				if m["type"] == "status" && m["state"] == "read-only" {
					return true
				}
			}
			return false
		})
		cand.send("echo after-$((1+1))\r")
		cand.waitLine("after-2")
		if strings.Contains(cand.screenText(), "hijack") {
			t.Errorf("an admin's keystrokes reached the candidate's shell")
		}
	})

	t.Run("the recording replays what was typed and shown", func(t *testing.T) {
		tm := dial(t, ls.termURL("g1"), ls.browser())
		tm.waitReady()
		tm.send("echo rec-$((3*4))\r")
		tm.waitLine("rec-12")
		tm.ws.Close()

		path, err := ls.Store.Path(ls.session, store.TerminalDir, "g1.cast")
		if err != nil {
			t.Fatal(err)
		}
		var input, output string
		deadline := time.Now().Add(outputTimeout)
		for {
			hdr, evs := readCast(t, path)
			if hdr.Version != 2 || hdr.Width <= 0 || hdr.Height <= 0 {
				t.Fatalf("header %+v is not asciicast v2", hdr)
			}
			input, output = "", ""
			last := -1.0
			for _, e := range evs {
				if e.at < last {
					t.Fatalf("event times go backwards: %v after %v", e.at, last)
				}
				last = e.at
				switch e.kind {
				case "i":
					input += e.data
				case "o":
					output += e.data
				}
			}
			if strings.Contains(input, "echo rec-$((3*4))\r") && strings.Contains(output, "\rrec-12\r\n") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("recording lacks the command or its output: input %q, output ends %q", input, tail(output, 500))
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The earlier hostname command is in the same recording: one shell,
		// one file across connections.
		if !strings.Contains(input, "hostname\r") || !strings.Contains(output, "\rg1\r\n") {
			t.Errorf("the recording does not hold the shell's earlier connection")
		}

		var found bool
		for !found && time.Now().Before(deadline) {
			hs, err := ls.Store.Histories(context.Background(), ls.session)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range hs["g1"].Entries {
				if e.Command == "echo rec-$((3*4))" && e.Source == "relay" {
					found = true
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !found {
			t.Errorf("history of g1 lacks the command typed")
		}
	})

	t.Run("a standalone relay serves the same terminals", func(t *testing.T) {
		solo := testlab.Start(t, testlab.Options{
			Roles: &platform.Roles{Relay: true}, Redis: ls.Config.Redis, StateDir: ls.Config.StateDir,
			Platform: platform.Options{NoScheduler: true},
			Config:   func(c *config.Config) { c.PublicURL = ls.origin },
		})
		addr := solo.RelayAddr()
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("healthz: HTTP %d", resp.StatusCode)
		}
		tm := dial(t, "ws://"+addr+"/ws/session/"+ls.session+"/terminal/g4", ls.browser())
		tm.waitReady()
		tm.send("hostname\r")
		tm.waitLine("g4")
		seed := dial(t, "ws://"+addr+"/api/terminal/"+lab.ContainerName(ls.session, "kyoto"), ls.browser())
		seed.waitReady()
		seed.send("hostname\r")
		seed.waitLine("kyoto")
	})

	t.Run("wrong admin tokens spend the sign-in failure budget", func(t *testing.T) {
		limits, err := ratelimit.NewSignin(ratelimit.SigninOptions{Redis: ls.Redis, Prefix: "relay-limits-test:",
			Budgets: ratelimit.SigninBudgets{FailuresPerAddress: ratelimit.Budget{Limit: 3, Window: 10 * time.Minute}}})
		if err != nil {
			t.Fatal(err)
		}
		_, addr := ownRelay(t, ls, relay.Options{Limits: limits})
		view := func(token string) (int, string) {
			c := dial(t, "ws://"+addr+"/ws/admin/session/"+ls.session+"/terminal/tokyo",
				dialOpts{cookie: auth.AdminCookie + "=" + token, origin: ls.origin})
			return c.waitClose()
		}
		for i := range 3 {
			if code, reason := view(fmt.Sprintf("not-the-admin-token-%d-xxxxxxxx", i)); code != relay.CloseForbidden {
				t.Fatalf("wrong token %d: closed with %d %q, want %d", i+1, code, reason, relay.CloseForbidden)
			}
		}
		if code, reason := view("not-the-admin-token-4-xxxxxxxx"); code != relay.CloseTooMany {
			t.Fatalf("a wrong token past the budget: closed with %d %q, want %d", code, reason, relay.CloseTooMany)
		}
		// While the budget is spent the right token is refused too, so a
		// guess that hits is not told apart.
		if code, reason := view(ls.AdminToken); code != relay.CloseTooMany {
			t.Fatalf("the right token from the guessing address: closed with %d %q, want %d", code, reason, relay.CloseTooMany)
		}
	})

	t.Run("limits, idle and grace", func(t *testing.T) {
		obs := &openCounter{}
		r, addr := ownRelay(t, ls, relay.Options{
			MaxTerminals: 2, IdleTimeout: 2 * time.Second, PingInterval: 200 * time.Millisecond,
			AuthTimeout: 500 * time.Millisecond, Grace: time.Second, SessionCheck: 500 * time.Millisecond,
			Observer: obs,
		})
		url := func(node string) string { return "ws://" + addr + "/ws/session/" + ls.session + "/terminal/" + node }

		silent := dial(t, url("g3"), dialOpts{})
		if code, _ := silent.waitClose(); code != relay.CloseAuth {
			t.Errorf("a client that never authenticates closed with %d, want %d", code, relay.CloseAuth)
		}

		first := dial(t, url("g3"), ls.browser())
		first.waitReady()
		second := dial(t, url("g4"), ls.browser())
		second.waitReady()
		third := dial(t, url("phoenix"), ls.browser())
		if code, reason := third.waitClose(); code != relay.CloseTooMany {
			t.Errorf("third terminal closed with %d %q, want %d", code, reason, relay.CloseTooMany)
		}
		// The same terminal in another window replaces the first.
		replacement := dial(t, url("g3"), ls.browser())
		replacement.waitReady()
		if code, _ := first.waitClose(); code != relay.CloseReplaced {
			t.Errorf("replaced terminal closed with %d, want %d", code, relay.CloseReplaced)
		}

		// No input for IdleTimeout closes the connection.
		if code, reason := second.waitClose(); code != relay.CloseIdle {
			t.Errorf("idle terminal closed with %d %q, want %d", code, reason, relay.CloseIdle)
		}
		replacement.waitClose()
		for deadline := time.Now().Add(closeTimeout); r.Stats().Connections > 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("connections still counted after closing: %+v", r.Stats())
			}
		}

		// A dropped shell is hung up after the grace period, with its jobs.
		tm := dial(t, url("phoenix"), ls.browser())
		tm.waitReady()
		tm.send("sleep 4242 & echo bg-$((1+1))\r")
		tm.waitLine("bg-2")
		tm.drop()
		deadline := time.Now().Add(outputTimeout)
		for {
			out, _, err := lab.Output(context.Background(), ls.Runtime, ls.session, "phoenix", "ps", "-eo", "args")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "sleep 4242") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the dropped shell's job still runs after the grace period:\n%s", out)
			}
			time.Sleep(200 * time.Millisecond)
		}
		after := dial(t, url("phoenix"), ls.browser())
		if r := after.waitReady(); r["reattached"] != false {
			t.Errorf("after the grace period a connection got %v, want a new shell", r)
		}
		if st := r.Stats(); st.Shells < 1 || st.Connections < 1 {
			t.Errorf("stats %+v: want the new shell and its connection counted", st)
		}
		if n := obs.open.Load(); n != 1 {
			t.Errorf("observer counts %d open terminals, want 1", n)
		}
		after.ws.Close()
		for deadline := time.Now().Add(closeTimeout); obs.open.Load() != 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("observer still counts %d open terminals after the last closed", obs.open.Load())
			}
		}
	})

	// Last: submitting ends the session, and with it every terminal.
	t.Run("submit closes the terminals", func(t *testing.T) {
		tm := dial(t, ls.termURL("tokyo"), ls.browser())
		tm.waitReady()
		code, err := ls.candidate.Do("POST", "/api/session/"+ls.session+"/submit", nil, nil)
		if err != nil || code != http.StatusAccepted {
			t.Fatalf("submit: %d %v", code, err)
		}
		if code, reason := tm.waitClose(); code != relay.CloseEnded {
			t.Errorf("closed with %d %q, want %d", code, reason, relay.CloseEnded)
		}
		late := dial(t, ls.termURL("tokyo"), ls.browser())
		if code, _ := late.waitClose(); code != relay.CloseEnded {
			t.Errorf("a terminal opened after submit closed with %d, want %d", code, relay.CloseEnded)
		}
	})
}

// ownRelay runs a relay with options of the test's choosing beside the
// stack's own, on the same store and lab.
func ownRelay(t testing.TB, ls *labStack, o relay.Options) (*relay.Relay, string) {
	t.Helper()
	o.Store, o.Runner, o.Origins = ls.Store, ls.Runtime, []string{ls.origin}
	o.Exams = func(id string) (*exam.Exam, bool) { return ls.Exam, id == ls.Exam.ID }
	o.Auth = ls.Auth
	o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := relay.New(o)
	if err != nil {
		t.Fatal(err)
	}
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	r.Register(app)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Listener(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("relay shutdown: %v", err)
		}
		app.ShutdownWithContext(ctx)
	})
	return r, ln.Addr().String()
}

// openCounter counts terminal connections the way the platform's metrics do.
type openCounter struct{ open atomic.Int64 }

func (o *openCounter) TerminalOpened() func() {
	o.open.Add(1)
	var once sync.Once
	return func() { once.Do(func() { o.open.Add(-1) }) }
}

// castEvent is one asciicast v2 event.
type castEvent struct {
	at   float64
	kind string
	data string
}

type castHeader struct {
	Version int `json:"version"`
	Width   int `json:"width"`
	Height  int `json:"height"`
}

// readCast parses an asciicast v2 file the way a player would.
func readCast(t *testing.T, path string) (castHeader, []castEvent) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open recording: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var h castHeader
	if !sc.Scan() || json.Unmarshal(sc.Bytes(), &h) != nil {
		t.Fatalf("%s has no asciicast header", filepath.Base(path))
	}
	var evs []castEvent
	for sc.Scan() {
		var raw [3]json.RawMessage
		var e castEvent
		if json.Unmarshal(sc.Bytes(), &raw) != nil || json.Unmarshal(raw[0], &e.at) != nil ||
			json.Unmarshal(raw[1], &e.kind) != nil || json.Unmarshal(raw[2], &e.data) != nil {
			// A line being written right now may be torn; stop there.
			break
		}
		evs = append(evs, e)
	}
	return h, evs
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
