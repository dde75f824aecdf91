package docker

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// threeSegments is a lab of three segments: tokyo's LAN behind g1, a /30
// link from g1 to g2, and osaka's LAN behind g2. The gateways forward but
// know nothing beyond their own networks, so tokyo cannot reach osaka
// until someone adds the routes. osaka is prepared with a file and a setup.
const threeSegments = `
id: three-segments
title: Three segments
duration: 30m
tasks:
  - {id: t1, title: Route, kind: command, prompt: Route tokyo to osaka.}
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 64, cpus: 0.25, pids: 128}
    capabilities: [NET_RAW]
  networks:
    - {name: tokyo-lan, subnet: 192.168.10.0/24}
    - {name: wan-g1-g2, subnet: 10.0.12.0/30}
    - {name: osaka-lan, subnet: 192.168.20.0/24}
  nodes:
    - name: tokyo
      role: branch
      interfaces: [{network: tokyo-lan, address: 192.168.10.10/24}]
      routes: [{to: default, via: 192.168.10.1}]
    - name: g1
      role: gateway
      capabilities: [NET_ADMIN]
      sysctls: {net.ipv4.ip_forward: "1"}
      interfaces:
        - {network: tokyo-lan, address: 192.168.10.1/24}
        - {network: wan-g1-g2, address: 10.0.12.1/30}
    - name: g2
      role: gateway
      capabilities: [NET_ADMIN]
      sysctls: {net.ipv4.ip_forward: "1"}
      interfaces:
        - {network: wan-g1-g2, address: 10.0.12.2/30}
        - {network: osaka-lan, address: 192.168.20.1/24}
    - name: osaka
      role: branch
      interfaces: [{network: osaka-lan, address: 192.168.20.10/24}]
      routes: [{to: default, via: 192.168.20.1}]
      files:
        - {path: /etc/motd, mode: "0640", content: "osaka branch office\n"}
        - {path: /opt/branch/site.conf, content: "site=osaka\n"}
      setup: |
        echo "planted by setup" > /root/setup.txt
        cat /opt/branch/site.conf >> /root/setup.txt
`

// segmentedLab renders exam yaml's lab for a new test session, destroyed
// when the test ends.
func segmentedLab(t testing.TB, r *Runtime, yaml string) lab.Spec {
	t.Helper()
	ex, err := exam.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: newSessionID(t), Candidate: "test"})
	if err != nil {
		t.Fatal(err)
	}
	destroyOnCleanup(t, r, spec.SessionID)
	return spec
}

// sh runs a shell command in a node and returns its output and exit code.
func sh(t testing.TB, r *Runtime, sessionID, node, cmd string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	out, code, err := lab.Output(ctx, r, sessionID, node, "sh", "-c", cmd)
	if err != nil {
		t.Fatalf("%s in %s: %v", cmd, node, err)
	}
	return out, code
}

func mustSh(t testing.TB, r *Runtime, sessionID, node, cmd string) string {
	t.Helper()
	out, code := sh(t, r, sessionID, node, cmd)
	if code != 0 {
		t.Fatalf("%s in %s: exit %d: %s", cmd, node, code, out)
	}
	return out
}

func provision(t testing.TB, r *Runtime, spec lab.Spec) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := r.Provision(ctx, spec); err != nil {
		t.Fatalf("provision: %v", err)
	}
}

func TestSegmentedLab(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, threeSegments)
	provision(t, r, spec)
	sid := spec.SessionID

	t.Run("each node has exactly its declared routes", func(t *testing.T) {
		want := map[string][]string{
			"tokyo": {"default via 192.168.10.1 dev eth0", "192.168.10.0/24 dev eth0 proto kernel scope link src 192.168.10.10"},
			"g1":    {"10.0.12.0/30 dev eth1 proto kernel scope link src 10.0.12.1", "192.168.10.0/24 dev eth0 proto kernel scope link src 192.168.10.1"},
			"g2":    {"10.0.12.0/30 dev eth0 proto kernel scope link src 10.0.12.2", "192.168.20.0/24 dev eth1 proto kernel scope link src 192.168.20.1"},
			"osaka": {"default via 192.168.20.1 dev eth0", "192.168.20.0/24 dev eth0 proto kernel scope link src 192.168.20.10"},
		}
		for node, routes := range want {
			got := strings.Split(strings.TrimSpace(mustSh(t, r, sid, node, "ip -4 route")), "\n")
			for i := range got {
				got[i] = strings.TrimSpace(got[i])
			}
			if strings.Join(got, "\n") != strings.Join(routes, "\n") {
				t.Errorf("ip route on %s:\n%s\nwant:\n%s", node, strings.Join(got, "\n"), strings.Join(routes, "\n"))
			}
		}
		if out := mustSh(t, r, sid, "g1", "ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | tr '\\n' ' '"); out != "eth0 eth1 lo " {
			t.Errorf("g1's links: %q, want eth0 eth1 lo", out)
		}
		if out := mustSh(t, r, sid, "g1", "ip -6 addr"); strings.TrimSpace(out) != "" {
			t.Errorf("g1 has IPv6 addresses: %s", out)
		}
	})

	t.Run("names resolve to the exam's addresses", func(t *testing.T) {
		out := mustSh(t, r, sid, "tokyo", "getent hosts osaka g1 "+lab.ContainerName(sid, "g2"))
		for _, want := range []string{"192.168.20.10", "192.168.10.1", "10.0.12.2"} {
			if !strings.Contains(out, want) {
				t.Errorf("getent from tokyo: %q lacks %s", out, want)
			}
		}
		if out := mustSh(t, r, sid, "tokyo", "ping -c1 -W2 g1"); !strings.Contains(out, "192.168.10.1") {
			t.Errorf("ping g1 by name: %s", out)
		}
	})

	t.Run("files and setup are applied", func(t *testing.T) {
		if out := mustSh(t, r, sid, "osaka", "stat -c '%a %U' /etc/motd; cat /etc/motd"); out != "640 root\nosaka branch office\n" {
			t.Errorf("motd: %q", out)
		}
		if out := mustSh(t, r, sid, "osaka", "cat /root/setup.txt"); out != "planted by setup\nsite=osaka\n" {
			t.Errorf("setup's output: %q", out)
		}
		if _, code := sh(t, r, sid, "tokyo", "test -e "+lab.PreparedMarker); code == 0 {
			t.Error("tokyo, which has no files or setup, holds the prepared marker")
		}
	})

	t.Run("gateways forward only once the routes allow it", func(t *testing.T) {
		if out, code := sh(t, r, sid, "tokyo", "ping -c1 -W1 osaka"); code == 0 {
			t.Fatalf("tokyo reaches osaka before any route exists: %s", out)
		}
		mustSh(t, r, sid, "g1", "ip route add 192.168.20.0/24 via 10.0.12.2")
		mustSh(t, r, sid, "g2", "ip route add 192.168.10.0/24 via 10.0.12.1")
		mustSh(t, r, sid, "tokyo", "ping -c1 -W2 osaka")
		out := mustSh(t, r, sid, "tokyo", "traceroute -n -q1 -w2 osaka")
		var hops []string
		for _, line := range strings.Split(out, "\n")[1:] {
			if f := strings.Fields(line); len(f) >= 2 {
				hops = append(hops, f[1])
			}
		}
		if strings.Join(hops, " ") != "192.168.10.1 10.0.12.2 192.168.20.10" {
			t.Errorf("traceroute hops %v, want g1 192.168.10.1, g2 10.0.12.2, osaka 192.168.20.10:\n%s", hops, out)
		}
	})

	t.Run("a reprovision keeps the candidate's network", func(t *testing.T) {
		mustSh(t, r, sid, "g1", "ip route add 172.16.0.0/16 via 10.0.12.2")
		provision(t, r, spec)
		if out := mustSh(t, r, sid, "g1", "ip route show 172.16.0.0/16"); !strings.Contains(out, "via 10.0.12.2") {
			t.Errorf("the candidate's route on g1 is gone after a reprovision: %q", out)
		}
		mustSh(t, r, sid, "tokyo", "ping -c1 -W2 osaka")
	})

	t.Run("a crashed node comes back wired and is not set up twice", func(t *testing.T) {
		mustSh(t, r, sid, "osaka", "echo again >> /root/setup.txt")
		ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
		defer cancel()
		if err := stopContainer(ctx, r, lab.ContainerName(sid, "osaka")); err != nil {
			t.Fatal(err)
		}
		provision(t, r, spec)
		mustSh(t, r, sid, "tokyo", "ping -c1 -W2 osaka")
		if out := mustSh(t, r, sid, "osaka", "cat /root/setup.txt"); out != "planted by setup\nsite=osaka\nagain\n" {
			t.Errorf("setup ran again in the restarted node: %q", out)
		}
	})

	t.Run("a reset node is wired and set up afresh", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
		defer cancel()
		if err := r.ResetNode(ctx, spec, "osaka"); err != nil {
			t.Fatal(err)
		}
		mustSh(t, r, sid, "tokyo", "ping -c1 -W2 osaka")
		if out := mustSh(t, r, sid, "osaka", "cat /root/setup.txt"); out != "planted by setup\nsite=osaka\n" {
			t.Errorf("setup of the reset node: %q", out)
		}
	})

	t.Run("status reports the exam's addresses", func(t *testing.T) {
		if st := specNodeStatus(t, r, spec, "osaka"); st.State != lab.StateRunning || st.IP != "192.168.20.10" {
			t.Errorf("osaka: %+v", st)
		}
	})

	t.Run("nothing of the lab is on the host", func(t *testing.T) {
		conts, nets := sessionResources(t, r, sid)
		if len(nets) != 0 {
			t.Errorf("a segmented lab made engine networks: %+v", nets)
		}
		if len(conts) != len(spec.Nodes)+1 {
			t.Errorf("%d containers, want %d nodes and the switch", len(conts), len(spec.Nodes))
		}
	})
}

// TestLabsShareSubnets runs two labs of one exam at once on one engine:
// the same addresses in both, and each reaches only its own nodes.
func TestLabsShareSubnets(t *testing.T) {
	r := newTestRuntime(t)
	a := segmentedLab(t, r, threeSegments)
	b := segmentedLab(t, r, threeSegments)
	var wg sync.WaitGroup
	for _, spec := range []lab.Spec{a, b} {
		wg.Go(func() { provision(t, r, spec) })
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, spec := range []lab.Spec{a, b} {
		mustSh(t, r, spec.SessionID, "g1", "echo "+spec.SessionID+" > /tmp/who")
		ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
		p, err := r.Exec(ctx, spec.SessionID, "g1", lab.ExecRequest{Cmd: []string{"sh", "-c", "while true; do nc -l -p 7000 -q0 < /tmp/who; done"}})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(); cancel() })
	}
	for _, spec := range []lab.Spec{a, b} {
		var out string
		for range 20 {
			if out, _ = sh(t, r, spec.SessionID, "tokyo", "nc -w2 192.168.10.1 7000"); strings.TrimSpace(out) != "" {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if strings.TrimSpace(out) != spec.SessionID {
			t.Errorf("tokyo of %s reached g1 of %q at 192.168.10.1", spec.SessionID, strings.TrimSpace(out))
		}
		mac := strings.TrimSpace(mustSh(t, r, spec.SessionID, "g1", "cat /sys/class/net/eth0/address"))
		neigh := mustSh(t, r, spec.SessionID, "tokyo", "ip neigh show 192.168.10.1")
		if !strings.Contains(neigh, mac) {
			t.Errorf("tokyo of %s sees 192.168.10.1 at %q, not its own g1's %s", spec.SessionID, neigh, mac)
		}
	}
}

func TestSegmentedLabBadSetup(t *testing.T) {
	r := newTestRuntime(t)
	cases := []struct {
		name, setup, timeout, want string
	}{
		{"exits non-zero", "echo half done; exit 3", "", "node osaka: setup exited 3: half done"},
		{"hangs", "sleep 600", "setup_timeout: 2s", "node osaka: setup did not finish within 2s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			y := strings.Replace(threeSegments, "      setup: |\n        echo \"planted by setup\" > /root/setup.txt\n        cat /opt/branch/site.conf >> /root/setup.txt\n",
				"      setup: \""+tc.setup+"\"\n", 1)
			if tc.timeout != "" {
				y = strings.Replace(y, "      setup: ", "      "+tc.timeout+"\n      setup: ", 1)
			}
			spec := segmentedLab(t, r, y)
			ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
			defer cancel()
			err := r.Provision(ctx, spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("provision: %v, want an error with %q", err, tc.want)
			}
			// The failed node is gone, so a retry starts it afresh.
			if st := specNodeStatus(t, r, spec, "osaka"); st.State != lab.StateMissing {
				t.Errorf("osaka after its failed setup: %+v, want it removed", st)
			}
		})
	}
}

// TestSegmentedLabImageWithoutIP gives a node an image that lacks the ip
// command: the provision fails naming the node and its image.
func TestSegmentedLabImageWithoutIP(t *testing.T) {
	r := newTestRuntime(t)
	image := noIPImage(t, r)
	y := strings.Replace(threeSegments, "    - name: tokyo\n      role: branch\n", "    - name: tokyo\n      role: branch\n      image: "+image+"\n", 1)
	spec := segmentedLab(t, r, y)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	err := r.Provision(ctx, spec)
	want := "node tokyo: its image " + image + " has no ip command"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("provision: %v, want an error with %q", err, want)
	}
	if err := r.Destroy(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	if conts, nets := sessionResources(t, r, spec.SessionID); len(conts)+len(nets) != 0 {
		t.Errorf("left behind after destroy: %d containers, %d networks", len(conts), len(nets))
	}
}

// noIPImage commits, once per engine, a copy of the lab image without the
// ip command.
func noIPImage(t testing.TB, r *Runtime) string {
	t.Helper()
	const image = "examlab/test-noip:latest"
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := r.client.do(ctx, http.MethodGet, "/images/"+image+"/json", nil, nil, nil); err == nil {
		return image
	}
	cc := containerCreate{Image: testImage, Entrypoint: []string{"sh", "-c"}, Cmd: []string{"rm -f /bin/ip /sbin/ip /usr/bin/ip /usr/sbin/ip"},
		Labels: map[string]string{"examlab.test": "noip"}}
	id, err := r.client.createContainer(ctx, "", cc)
	if err != nil {
		t.Fatal(err)
	}
	defer r.client.removeContainer(context.Background(), id)
	if err := r.client.startContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := r.client.do(ctx, http.MethodPost, "/containers/"+id+"/wait", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	q := url.Values{"container": {id}, "repo": {"examlab/test-noip"}, "tag": {"latest"},
		"changes": {`ENTRYPOINT ["/usr/bin/tini", "--"]`, `CMD ["/usr/local/sbin/examlab-node"]`}}
	if err := r.client.do(ctx, http.MethodPost, "/commit", q, nil, nil); err != nil {
		t.Fatal(err)
	}
	return image
}
