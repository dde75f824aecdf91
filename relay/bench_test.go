package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/examlab/examlab/auth"
	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/relay"
	"github.com/examlab/examlab/testlab"
)

// One node is enough to measure a terminal, and quicker to bring up.
const benchExam = `id: bench
title: Terminal benchmark
duration: 30m
tasks:
  - id: t1
    title: Nothing
    kind: text
    prompt: Nothing to answer.
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 256, cpus: 1, pids: 256}
  nodes:
    - name: tokyo
      role: branch
`

const (
	keysPerIteration = 50         // keystrokes timed per benchmark iteration
	benchFloodBytes  = 20_000_000 // output per throughput iteration
	benchStepTimeout = time.Minute
)

// stream is a terminal under measurement: keystrokes in, output chunks out.
type stream interface {
	write(p []byte) error
	chunks() <-chan []byte
}

// relayStream is a terminal through the relay's WebSocket.
type relayStream struct {
	ws  *websocket.Conn
	out chan []byte
}

func (s *relayStream) write(p []byte) error  { return s.ws.WriteMessage(websocket.BinaryMessage, p) }
func (s *relayStream) chunks() <-chan []byte { return s.out }

// directStream is a shell exec'd straight into the container, the
// baseline: the same runtime exec the relay uses, without the relay.
type directStream struct {
	p   lab.Process
	out chan []byte
}

func (s *directStream) write(p []byte) error  { _, err := s.p.Write(p); return err }
func (s *directStream) chunks() <-chan []byte { return s.out }

func openRelayStream(b *testing.B, ls *labStack) stream {
	b.Helper()
	h := http.Header{"Cookie": {auth.CandidateCookie + "=" + ls.token}, "Origin": {ls.origin}}
	ws, _, err := websocket.DefaultDialer.Dial(ls.termURL("tokyo"), h)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ws.Close() })
	// A reattach replays earlier output first; only what follows counts.
	var ready struct {
		Type   string `json:"type"`
		Replay int    `json:"replay"`
	}
	for ready.Type != "ready" {
		if err := ws.ReadJSON(&ready); err != nil {
			b.Fatalf("wait for ready: %v", err)
		}
	}
	for skip := ready.Replay; skip > 0; {
		_, data, err := ws.ReadMessage()
		if err != nil {
			b.Fatal(err)
		}
		skip -= len(data)
	}
	s := &relayStream{ws: ws, out: make(chan []byte, 1024)}
	go func() {
		defer close(s.out)
		for {
			typ, data, err := ws.ReadMessage()
			if err != nil {
				return
			}
			if typ == websocket.BinaryMessage {
				s.out <- data
			}
		}
	}()
	return s
}

func openDirectStream(b *testing.B, ls *labStack) stream {
	b.Helper()
	p, err := ls.Runtime.Exec(context.Background(), ls.session, "tokyo", lab.ExecRequest{
		Cmd: relay.DefaultShell, TTY: true, Size: lab.Size{Rows: 24, Cols: 80}, Env: []string{"TERM=xterm-256color"},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		p.Write([]byte("\x03exit\r"))
		p.Close()
	})
	s := &directStream{p: p, out: make(chan []byte, 1024)}
	go func() {
		defer close(s.out)
		buf := make([]byte, 32<<10)
		for {
			n, err := p.Read(buf)
			if n > 0 {
				s.out <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				return
			}
		}
	}()
	return s
}

// expect reads output until marker has been seen, returning the bytes read.
func expect(b *testing.B, s stream, marker string) int64 {
	b.Helper()
	var seen int64
	var tail []byte
	timeout := time.After(benchStepTimeout)
	for {
		select {
		case c, ok := <-s.chunks():
			if !ok {
				b.Fatalf("terminal closed while waiting for %q", marker)
			}
			seen += int64(len(c))
			tail = append(tail, c...)
			if bytes.Contains(tail, []byte(marker)) {
				return seen
			}
			if len(tail) > 256 {
				tail = tail[len(tail)-256:]
			}
		case <-timeout:
			b.Fatalf("no %q within %s", marker, benchStepTimeout)
		}
	}
}

// startBenchLab brings up a one-node lab behind a full platform.
func startBenchLab(b *testing.B) *labStack {
	b.Helper()
	examFile := filepath.Join(b.TempDir(), "bench.yaml")
	if err := os.WriteFile(examFile, []byte(benchExam), 0o600); err != nil {
		b.Fatal(err)
	}
	return startLab(b, testlab.Options{Config: func(c *config.Config) { c.ExamFile = examFile }})
}

// BenchmarkTerminal compares a terminal through the relay with a shell
// exec'd directly into the same container, in the same run: keystroke echo
// latency (the terminal's own echo of one typed byte) and output
// throughput.
func BenchmarkTerminal(b *testing.B) {
	ls := startBenchLab(b)
	paths := []struct {
		name string
		open func(*testing.B, *labStack) stream
	}{
		{"direct", openDirectStream},
		{"relay", openRelayStream},
	}
	for _, p := range paths {
		b.Run("echo/"+p.name, func(b *testing.B) {
			s := p.open(b, ls)
			// cat leaves echoing to the terminal itself, the same on both
			// paths. Timing starts once the marker the command line prints
			// (not its echo) is seen: by then the shell has handed the
			// terminal to cat, and no keystroke can fall between modes.
			if err := s.write([]byte("stty -echoctl; echo CAT-$((1+1)); cat >/dev/null\r")); err != nil {
				b.Fatal(err)
			}
			expect(b, s, "CAT-2\r\n")
			var lat []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for k := 0; k < keysPerIteration; k++ {
					key := []byte{'a' + byte(k%26)}
					t0 := time.Now()
					if err := s.write(key); err != nil {
						b.Fatal(err)
					}
					expect(b, s, string(key))
					lat = append(lat, time.Since(t0))
				}
				b.StopTimer()
				s.write([]byte("\r"))
				expect(b, s, "\n")
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "us-p50")
			b.ReportMetric(float64(lat[len(lat)*95/100].Microseconds()), "us-p95")
			// Leave the shell at its prompt for the next run.
			s.write([]byte("\x04echo DONE-$((2+2))\r"))
			expect(b, s, "DONE-4\r\n")
		})
	}
	for _, p := range paths {
		b.Run("throughput/"+p.name, func(b *testing.B) {
			s := p.open(b, ls)
			s.write([]byte("stty -echo; echo READY-$((1+1))\r"))
			expect(b, s, "READY-2")
			b.SetBytes(benchFloodBytes)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cmd := fmt.Sprintf("head -c %d /dev/zero | tr '\\0' Z; echo END-$((%d+1))\r", benchFloodBytes, i)
				if err := s.write([]byte(cmd)); err != nil {
					b.Fatal(err)
				}
				if n := expect(b, s, fmt.Sprintf("END-%d", i+1)); n < benchFloodBytes {
					b.Fatalf("got %d bytes, want at least %d", n, benchFloodBytes)
				}
			}
			b.StopTimer()
			s.write([]byte("stty echo; echo DONE-$((2+2))\r"))
			expect(b, s, "DONE-4\r\n")
		})
	}
}

// BenchmarkReattach measures what a relay restart costs a candidate: the
// time from dialling a new relay to a command's answer in the same shell,
// beside opening a fresh terminal in the same run, held in the node
// (fresh-held) and, the baseline, run by the relay itself (fresh-relay,
// how every terminal opened before the holder). Relays start and stop
// outside the timed part.
func BenchmarkReattach(b *testing.B) {
	ls := startBenchLab(b)
	url := func(addr string) string { return ls.relayURL(addr, "tokyo") }
	// roundTrip dials, waits for the ready message and a command's answer.
	roundTrip := func(b *testing.B, addr string, i int) (*term, time.Duration) {
		t0 := time.Now()
		tm := dial(b, url(addr), ls.browser())
		tm.waitReady()
		tm.send(fmt.Sprintf("echo R-$((%d+1))\r", i))
		tm.waitLine(fmt.Sprintf("R-%d", i+1))
		return tm, time.Since(t0)
	}
	fresh := func(holder string) func(b *testing.B) {
		return func(b *testing.B) {
			_, addr := ownRelay(b, ls, relay.Options{Holder: holder})
			var ds []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tm, d := roundTrip(b, addr, i)
				ds = append(ds, d)
				b.StopTimer()
				tm.send("exit\r") // the next open starts a new shell
				tm.waitClose()
				b.StartTimer()
			}
			b.StopTimer()
			testlab.ReportDurations(b, ds)
		}
	}
	b.Run("fresh-relay", fresh("none"))
	b.Run("fresh-held", fresh(""))
	b.Run("reattach-after-restart", func(b *testing.B) {
		r, addr := ownRelay(b, ls, relay.Options{})
		tm, _ := roundTrip(b, addr, 0)
		var ds []time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			ctx, cancel := context.WithTimeout(context.Background(), benchStepTimeout)
			if err := r.Shutdown(ctx); err != nil {
				b.Fatalf("relay shutdown: %v", err)
			}
			cancel()
			tm.waitClose()
			r, addr = ownRelay(b, ls, relay.Options{})
			b.StartTimer()
			var d time.Duration
			tm, d = roundTrip(b, addr, i+1)
			if tm.waitReady()["reattached"] != true {
				b.Fatal("the new relay started a new shell instead of reattaching")
			}
			ds = append(ds, d)
		}
		b.StopTimer()
		testlab.ReportDurations(b, ds)
		tm.send("exit\r")
		tm.waitClose()
	})
}
