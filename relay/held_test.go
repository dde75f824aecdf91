package relay_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/relay"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// holderBuild is the static examlab binary the tests' labs get as their
// terminal holder, built once per test binary.
var holderBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

// holderBinary builds cmd/examlab static (CGO_ENABLED=0), as `make build`
// does, for the Docker runtime to ship into the nodes.
func holderBinary(t testing.TB) string {
	t.Helper()
	holderBuild.once.Do(func() {
		holderBuild.dir, holderBuild.err = os.MkdirTemp("", "examlab-holder-")
		if holderBuild.err != nil {
			return
		}
		holderBuild.path = filepath.Join(holderBuild.dir, "examlab")
		cmd := exec.Command("go", "build", "-o", holderBuild.path, "../cmd/examlab")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		holderBuild.out, holderBuild.err = cmd.CombinedOutput()
	})
	if holderBuild.err != nil {
		t.Fatalf("build the terminal holder (go build ./cmd/examlab): %v\n%s", holderBuild.err, holderBuild.out)
	}
	return holderBuild.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if holderBuild.dir != "" {
		os.RemoveAll(holderBuild.dir)
	}
	os.Exit(code)
}

// relayURL is the candidate's terminal on a relay of the test's own.
func (ls *labStack) relayURL(addr, node string) string {
	return "ws://" + addr + "/ws/session/" + ls.session + "/terminal/" + node
}

func mustDir(t *testing.T, ls *labStack) string {
	t.Helper()
	dir, err := ls.Store.Path(ls.session, store.TerminalDir)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// castText is a recording's output, its markers, and its files.
func castText(t *testing.T, ls *labStack, node string) (out string, marks []string, files []string) {
	t.Helper()
	dir, err := ls.Store.Path(ls.session, store.TerminalDir)
	if err != nil {
		t.Fatal(err)
	}
	files, _ = filepath.Glob(filepath.Join(dir, node+".*cast"))
	_, evs := readCast(t, filepath.Join(dir, node+".cast"))
	var b strings.Builder
	for _, e := range evs {
		switch e.kind {
		case "o":
			b.WriteString(e.data)
		case "m":
			marks = append(marks, e.data)
		}
	}
	return b.String(), marks, files
}

// waitCast waits until node's recording holds want (it is written in
// pieces a moment apart).
func waitCast(t *testing.T, ls *labStack, node, want string) (string, []string, []string) {
	t.Helper()
	deadline := time.Now().Add(outputTimeout)
	for {
		out, marks, files := castText(t, ls, node)
		if strings.Contains(out, want) {
			return out, marks, files
		}
		if time.Now().After(deadline) {
			t.Fatalf("recording of %s has no %q after %s; markers %q; output ends %q", node, want, outputTimeout, marks, tail(out, 500))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func stopRelay(t *testing.T, r *relay.Relay) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		t.Fatalf("relay shutdown: %v", err)
	}
}

// TestHeldTerminals: the shell lives in the node's holder, so a relay that
// restarts, or a second relay, reattaches the candidate to the same shell
// with its scrollback, and the recording goes on in one file.
func TestHeldTerminals(t *testing.T) {
	ls := startLab(t, testlab.Options{})

	t.Run("a relay restart keeps the shell, its scrollback and its recording", func(t *testing.T) {
		r1, addr1 := ownRelay(t, ls, relay.Options{})
		tm := dial(t, ls.relayURL(addr1, "tokyo"), ls.browser())
		if r := tm.waitReady(); r["reattached"] != false {
			t.Errorf("first open: ready %v; want a fresh terminal", r)
		}
		tm.send("export X=42; echo hel''lo\r")
		tm.waitLine("hello")

		stopRelay(t, r1)
		if code, _ := tm.waitClose(); code != relay.CloseGoingAway {
			t.Errorf("the stopping relay closed the terminal with %d, want %d", code, relay.CloseGoingAway)
		}

		_, addr2 := ownRelay(t, ls, relay.Options{})
		tm2 := dial(t, ls.relayURL(addr2, "tokyo"), ls.browser())
		ready := tm2.waitReady()
		if ready["reattached"] != true {
			t.Errorf("after the restart: ready %v; want reattached", ready)
		}
		tm2.waitLine("hello") // the scrollback
		tm2.send("echo X=$X; echo se''cond\r")
		tm2.waitLine("X=42")

		out, marks, files := waitCast(t, ls, "tokyo", "second")
		if len(files) != 1 {
			t.Errorf("recordings of tokyo: %v; want one, continued", files)
		}
		if n := strings.Count(out, "hello\r\n"); n != 1 {
			t.Errorf("the recording has hello %d times; want once (recorded before the restart, not again from the scrollback): %q", n, out)
		}
		if !strings.Contains(out, "X=42") {
			t.Errorf("the recording lacks the output after the restart: %q", tail(out, 500))
		}
		var kinds []string
		for _, m := range marks {
			kinds = append(kinds, strings.Fields(m)[0])
		}
		if got := strings.Join(kinds, " "); !strings.HasPrefix(got, "attached detached attached") {
			t.Errorf("markers %q; want attached, detached, attached", marks)
		}
	})

	t.Run("a second relay takes the terminal over", func(t *testing.T) {
		_, addr1 := ownRelay(t, ls, relay.Options{})
		_, addr2 := ownRelay(t, ls, relay.Options{})
		tm1 := dial(t, ls.relayURL(addr1, "osaka"), ls.browser())
		tm1.waitReady()
		tm1.send("export Y=7; echo fir''st\r")
		tm1.waitLine("first")

		tm2 := dial(t, ls.relayURL(addr2, "osaka"), ls.browser())
		if r := tm2.waitReady(); r["reattached"] != true {
			t.Errorf("the second relay's ready %v; want reattached", r)
		}
		if code, _ := tm1.waitClose(); code != relay.CloseReplaced {
			t.Errorf("the first relay's terminal closed with %d, want %d (replaced)", code, relay.CloseReplaced)
		}
		tm2.waitLine("first")
		tm2.send("echo Y=$Y\r")
		tm2.waitLine("Y=7")
		_, _, files := waitCast(t, ls, "osaka", "Y=7")
		if len(files) != 1 {
			t.Errorf("recordings of osaka: %v; want one", files)
		}
	})

	t.Run("a node without the holder gets a shell of the relay", func(t *testing.T) {
		_, addr := ownRelay(t, ls, relay.Options{Holder: "/.examlab/no-such-holder"})
		tm := dial(t, ls.relayURL(addr, "g1"), ls.browser())
		tm.waitReady()
		tm.send("test -e /run/examlab/term-g1.sock || echo no-ho''lder\r")
		tm.waitLine("no-holder")
		if _, err := os.Stat(filepath.Join(mustDir(t, ls), "g1.cast")); err != nil {
			t.Errorf("the relay's own shell is not recorded: %v", err)
		}
	})

	t.Run("a 1 MB paste cut by a relay restart", func(t *testing.T) {
		r1, addr1 := ownRelay(t, ls, relay.Options{})
		tm := dial(t, ls.relayURL(addr1, "kyoto"), ls.browser())
		tm.waitReady()
		tm.send("stty -echo; echo rea''dy; cat > /tmp/paste\r")
		tm.waitLine("ready")
		line := strings.Repeat("p", 1023) + "\r"
		chunk := strings.Repeat(line, 32) // 32 KiB per message
		sent := 0
		for i := 0; i < 32; i++ { // 1 MiB
			if i == 8 {
				go func() { // mid-paste
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if err := r1.Shutdown(ctx); err != nil {
						t.Errorf("relay shutdown: %v", err)
					}
				}()
			}
			if err := tm.ws.WriteMessage(2, []byte(chunk)); err != nil {
				break // the relay went; the rest of the paste is lost
			}
			sent += len(chunk)
		}
		tm.waitClose()

		_, addr2 := ownRelay(t, ls, relay.Options{})
		tm2 := dial(t, ls.relayURL(addr2, "kyoto"), ls.browser())
		if r := tm2.waitReady(); r["reattached"] != true {
			t.Errorf("after the restart: ready %v; want reattached", r)
		}
		tm2.send("\x04") // end cat's input
		tm2.send("stty echo; wc -c < /tmp/paste; echo ali''ve\r")
		tm2.waitLine("alive")
		m := regexp.MustCompile(`\r\n(\d+)\r\nalive\r\n`).FindStringSubmatch(tm2.screenText())
		if m == nil {
			t.Fatalf("no byte count before alive: %q", tail(tm2.screenText(), 300))
		}
		got, _ := strconv.Atoi(m[1])
		t.Logf("sent %d bytes before the relay went; the shell received %d; screen %q", sent, got, tail(tm2.screenText(), 3000))
		// What reached the shell is whole lines of whole messages: a frame
		// the restart cut short is dropped, never typed in part.
		if got > sent || got%1024 != 0 {
			t.Errorf("the shell received %d bytes of a paste of %d sent; want whole 1 KiB lines, no more than sent", got, sent)
		}
	})
}
