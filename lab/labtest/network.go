package labtest

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
)

// listenerTries is how often the suite tries to reach a listener a node
// has just started in a peer.
const listenerTries = 20

func (s *suite) testNetwork(t *testing.T) {
	if !s.h.Network {
		t.Skip("not claimed (Harness.Network): the nodes have no network of their own")
	}
	t.Run("peers reach each other by name", s.testPeers)
	t.Run("isolation", s.testIsolation)
}

// peers returns two nodes of the lab that share a network: any two in a
// flat lab, in a segmented one the first pair plugged into one segment.
func peers(t testing.TB, l lab.Spec) (string, string) {
	t.Helper()
	if !l.Segmented() && len(l.Nodes) > 1 {
		return l.Nodes[0].Name, l.Nodes[1].Name
	}
	for i, a := range l.Nodes {
		for _, b := range l.Nodes[i+1:] {
			for _, x := range a.Interfaces {
				for _, y := range b.Interfaces {
					if x.Segment == y.Segment {
						return a.Name, b.Name
					}
				}
			}
		}
	}
	t.Fatal("no two nodes of the lab share a network")
	return "", ""
}

// listen starts a TCP listener on port in a node, closed with the test.
func (s *suite) listen(t *testing.T, sessionID, node, port string) {
	t.Helper()
	ctx, cancel := context.WithCancel(s.ctx)
	p, err := s.rt.Exec(ctx, sessionID, node, lab.ExecRequest{Cmd: []string{"nc", "-lk", port}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); cancel() })
}

func (s *suite) testPeers(t *testing.T) {
	sid := s.main.SessionID
	a, b := peers(t, s.main)
	if out, code := s.run(t, sid, a, "ping", "-c1", "-W2", b); code != 0 {
		t.Fatalf("ping %s from %s: exit %d: %s", b, a, code, out)
	}
	// A TCP listener on a peer doubles as the positive control for the
	// isolation probes, which use the same nc probe.
	s.listen(t, sid, b, "7777")
	code := -1
	for range listenerTries {
		if _, code = s.run(t, sid, a, "nc", "-z", "-w2", b, "7777"); code == 0 {
			break
		}
		time.Sleep(pollInterval)
	}
	if code != 0 {
		t.Errorf("nc -z %s 7777 from %s: exit %d", b, a, code)
	}
}

func (s *suite) testIsolation(t *testing.T) {
	sid := s.main.SessionID
	// A listener on all of the host's addresses stands in for Redis, the
	// API and every other host service.
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hostIP := primaryIPv4(t)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	own, err := net.Dial("tcp4", net.JoinHostPort(hostIP, port))
	if err != nil {
		t.Fatalf("the host's own listener is not reachable on %s: %v", hostIP, err)
	}
	self := own.LocalAddr().String()
	own.Close()
	// Every connection but the host's own check above came from a lab.
	var mu sync.Mutex
	var fromLabs []string
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if from := c.RemoteAddr().String(); from != self {
				mu.Lock()
				fromLabs = append(fromLabs, from)
				mu.Unlock()
			}
			c.Close()
		}
	}()

	// Addresses as the nodes see them: not every runtime's Status knows.
	// A segmented lab's addresses are the same in every lab of its exam, so
	// the probes between the labs aim at a port only the target listens
	// on: a probe that lands on its own lab's twin of the target finds
	// nothing there either way.
	_, peer := peers(t, s.main)
	myNet := s.address(t, sid, "tokyo")
	mine := s.address(t, sid, peer).Addr().String()
	theirNode := s.other.Nodes[0].Name
	theirs := s.address(t, s.other.SessionID, theirNode).Addr().String()
	gateway := myNet.Masked().Addr().Next().String()
	const labPort = "7788"
	s.listen(t, sid, peer, labPort)
	s.listen(t, s.other.SessionID, theirNode, labPort)
	cases := []struct {
		name    string
		session string
		node    string
		cmd     string
	}{
		{"host service on the bridge gateway", sid, "tokyo", "nc -z -w1 " + gateway + " " + port},
		{"host service on the host's primary address", sid, "tokyo", "nc -z -w1 " + hostIP + " " + port},
		{"cloud metadata", sid, "tokyo", "nc -z -w1 169.254.169.254 80"},
		{"other session's node", sid, peer, "nc -z -w1 " + theirs + " " + labPort},
		{"this session's node from the other", s.other.SessionID, theirNode, "nc -z -w1 " + mine + " " + labPort},
		// g1 and g2 have NET_ADMIN: they may reroute, and still must not
		// get out.
		{"host from a node that rewrites its routes", sid, "g1",
			"ip route replace default dev eth0 || echo reroute failed; nc -z -w1 " + hostIP + " " + port},
		{"metadata from a node that rewrites its routes", sid, "g2",
			"ip route replace default dev eth0 || echo reroute failed; nc -z -w1 169.254.169.254 80"},
	}
	// Each blocked probe waits out its timeout, a second: plenty for an
	// answer across one bridge, as the peers' check gets. Run them all at
	// once (not as parallel subtests, which -parallel caps at the number
	// of CPUs), then report each.
	type result struct {
		out  string
		code int
		err  error
	}
	results := make([]result, len(cases))
	var wg sync.WaitGroup
	for i, tc := range cases {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(s.ctx, execTimeout)
			defer cancel()
			r := &results[i]
			r.out, r.code, r.err = lab.Output(ctx, s.rt, tc.session, tc.node, "sh", "-c", tc.cmd)
		})
	}
	wg.Wait()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := results[i]
			switch {
			case r.err != nil:
				t.Errorf("exec %q in %s: %v", tc.cmd, tc.node, r.err)
			case r.code == 0:
				t.Errorf("%q in %s succeeded, want it blocked: %s", tc.cmd, tc.node, r.out)
			case strings.Contains(r.out, "reroute failed"):
				t.Errorf("the node could not reroute, so the probe proves nothing: %s", r.out)
			}
		})
	}
	ln.Close()
	<-accepted
	mu.Lock()
	defer mu.Unlock()
	if len(fromLabs) > 0 {
		t.Errorf("the host listener accepted connections from labs: %v", fromLabs)
	}
}

// address returns the node's IPv4 address on its lab network, with the
// network's prefix, as the node itself sees it.
func (s *suite) address(t *testing.T, sessionID, node string) netip.Prefix {
	t.Helper()
	out, code := s.run(t, sessionID, node, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	f := strings.Fields(out)
	for i := 0; code == 0 && i+1 < len(f); i++ {
		if f[i] != "inet" {
			continue
		}
		if p, err := netip.ParsePrefix(f[i+1]); err == nil {
			return p
		}
	}
	t.Fatalf("no IPv4 address on eth0 of %s (exit %d): %q", node, code, out)
	return netip.Prefix{}
}

// primaryIPv4 returns an address the host holds on a real interface, not
// on loopback or a Docker bridge.
func primaryIPv4(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 ||
			strings.HasPrefix(ifc.Name, "docker") || strings.HasPrefix(ifc.Name, "br-") || strings.HasPrefix(ifc.Name, "veth") {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return ipn.IP.String()
			}
		}
	}
	t.Fatal("no IPv4 address on a host interface")
	return ""
}
