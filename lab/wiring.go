package lab

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// A segmented lab is wired inside one extra container of its own, the
// switch: a network namespace with nothing in it but one bridge per
// segment. Each node interface is one end of a veth pair whose other end is
// a port of its segment's bridge. Nothing is on the host's side: no bridge,
// no address, no route, so labs can use the same subnets side by side and
// no segment reaches the host, another lab or the outside. The runtimes run
// the scripts below: SwitchScript with every privilege in the switch (it
// must see the nodes' processes to reach their network namespaces), then
// NodeScript in each node whose interfaces it made.

// SwitchName is a segmented lab's switch container: exam-{id8}.net. The dot
// keeps it apart from every node's container name.
func SwitchName(sessionID string) string { return "exam-" + Short(sessionID) + ".net" }

// LabelPart marks a lab's containers that are not nodes: its switch, and
// the short-lived containers a snapshot reads a node's changes through.
const (
	LabelPart   = "examlab.part"
	PartSwitch  = "switch"
	PartCapture = "capture"
)

// PreparedMarker is the file a node holds once its files and setup have
// been applied, so that a provision run again does not run setup twice.
const PreparedMarker = preparedDir + "/prepared"

const preparedDir = "/var/lib/examlab"

// NoIPExit is the exit code of NodeScript in a node without the ip
// command: the shell's "command not found".
const NoIPExit = 127

// NoIPv6 returns the sysctls that turn IPv6 off in a network namespace,
// for the interfaces made in it later too. A segmented lab's nodes and its
// switch speak IPv4 only, so that a node's addresses are the exam's alone.
func NoIPv6() map[string]string {
	return map[string]string{
		"net.ipv6.conf.all.disable_ipv6":     "1",
		"net.ipv6.conf.default.disable_ipv6": "1",
	}
}

// SegmentedSysctls are the node's sysctls in a segmented lab: NoIPv6 under
// the node's own, which win.
func (n Node) SegmentedSysctls() map[string]string {
	out := NoIPv6()
	for k, v := range n.Sysctls {
		out[k] = v
	}
	return out
}

// BridgeName is segment i's bridge in the switch.
func BridgeName(i int) string { return "s" + strconv.Itoa(i) }

// PortName is the switch's end of node i's interface j.
func PortName(node, iface int) string { return "n" + strconv.Itoa(node) + "e" + strconv.Itoa(iface) }

// InterfaceMAC is the hardware address of node i's interface j. It is
// fixed, like the interface's IP address, so that a node whose container
// is replaced (reset, or restarted after a crash) comes back with the same
// one: its neighbours' ARP caches, which would otherwise send to the old
// address for half a minute, stay right. Locally administered, it needs to
// be unique only on the lab's own segments.
func InterfaceMAC(node, iface int) string {
	return fmt.Sprintf("02:e1:%02x:%02x:%02x:00", node>>8&0xff, node&0xff, iface&0xff)
}

// WiredAlias marks a node's loopback once its network is configured.
// The interfaces' addresses are lost with the namespace, and the alias with
// them, so a node without it is (re)configured and one with it is left as
// the candidate has made it.
const WiredAlias = "examlab-wired"

// SwitchScript is the shell script, run in the switch with NET_ADMIN,
// SYS_ADMIN and SYS_PTRACE and the host's PID namespace, that makes the
// lab's bridges and wires every node in pids (node name → the host PID of a
// process in the node's network namespace): it plugs each interface into
// its segment's bridge and, from inside the node's network namespace,
// gives it its address, brings it up and adds the node's declared routes
// (and no others: a fresh namespace has none but those of its own
// networks). It is idempotent: a wired node is left alone. For each node it
// wires it prints "wired NODE", so the runtime knows which nodes to finish.
func SwitchScript(l Spec, pids map[string]int) string {
	var b strings.Builder
	// One wiring at a time: a provision cancelled halfway leaves its
	// script running in the switch, and the next waits for it here.
	fmt.Fprintf(&b, `set -eu
exec 9>/tmp/examlab-wiring.lock
flock 9
bridge() {
	ip link show dev "$1" >/dev/null 2>&1 || ip link add "$1" type bridge
	ip link set dev "$1" up
}
port() { # port NAME BRIDGE PID IFNAME MAC
	# Only a node that is not wired gets here, so a port of that name is
	# left from a namespace the node has lost (its removal lags behind
	# the container's death) or from a run that stopped halfway.
	ip link del dev "$1" 2>/dev/null || true
	ip link add "$1" type veth peer name "$4" address "$5" netns "$3"
	ip link set dev "$1" master "$2" up
}
wired() { nsenter -t "$1" -n ip link show dev lo | grep -q 'alias %s'; }
`, WiredAlias)
	bridges := make(map[string]string, len(l.Segments))
	for i, s := range l.Segments {
		bridges[s.Name] = BridgeName(i)
		fmt.Fprintf(&b, "bridge %s # %s %s\n", BridgeName(i), s.Name, s.Subnet)
	}
	for i, n := range l.Nodes {
		pid, ok := pids[n.Name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "if ! wired %d; then # %s\n", pid, n.Name)
		for j, ifc := range n.Interfaces {
			fmt.Fprintf(&b, "\tport %s %s %d %s %s\n", PortName(i, j), bridges[ifc.Segment], pid, ifc.Name, InterfaceMAC(i, j))
		}
		fmt.Fprintf(&b, "\tnsenter -t %d -n sh -ec '\n", pid)
		b.WriteString("\t\tip link set dev lo up\n")
		for _, ifc := range n.Interfaces {
			fmt.Fprintf(&b, "\t\tip addr replace %s dev %s\n\t\tip link set dev %s up\n", ifc.Address, ifc.Name, ifc.Name)
		}
		for _, r := range n.Routes {
			fmt.Fprintf(&b, "\t\tip route replace %s via %s\n", r.To, r.Via)
		}
		fmt.Fprintf(&b, "\t\tip link set dev lo alias %s'\n", WiredAlias)
		fmt.Fprintf(&b, "\techo wired %s\nfi\n", n.Name)
	}
	return b.String()
}

// Wired parses SwitchScript's output into the names of the nodes it wired.
func Wired(out string) []string {
	seen := map[string]bool{}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "wired "); ok && !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// NodeScript is the shell script, run in a node the switch has just
// wired, with the node's own capabilities, that checks the node has the ip
// command its candidate needs and writes the lab's names into /etc/hosts.
// Names resolve from that file only: a lab has no name server.
func NodeScript(l Spec) string {
	var b strings.Builder
	fmt.Fprintf(&b, `command -v ip >/dev/null 2>&1 || { echo "the image has no ip command (iproute2)" >&2; exit %d; }
set -e
cat >/etc/hosts <<'EXAMLAB_HOSTS'
`, NoIPExit)
	b.WriteString(HostsFile(l))
	b.WriteString("EXAMLAB_HOSTS\n")
	b.WriteString("printf '" + labResolvConf + "\\n' >/etc/resolv.conf\n")
	return b.String()
}

// labResolvConf is the one line of a segmented lab node's resolv.conf,
// which NodeScript writes last.
const labResolvConf = "# this lab has no name server: names come from /etc/hosts"

// ReadyCheck is a shell command that exits 0 in a segmented lab's node
// once it has been wired (WiredAlias on its loopback), its names
// written (NodeScript's resolv.conf) and, if it has files or a setup,
// prepared (PreparedMarker): what a runtime waits for after Nomad, say,
// has replaced the node's container behind its back.
func ReadyCheck(n Node) string {
	c := "ip link show dev lo | grep -q 'alias " + WiredAlias + "' && grep -qxF '" + labResolvConf + "' /etc/resolv.conf"
	if n.Prepared() {
		c += " && test -e " + PreparedMarker
	}
	return c
}

// SetupScript writes nothing itself: it runs the node's setup, passed as
// $1, once, and then leaves PreparedMarker. Runs that overlap (a provision
// cancelled halfway leaves its setup running, and a rerun starts) hand over
// through a lock directory: the later one waits for the first to finish,
// and fails if it fails.
const SetupScript = `set -e
dir=` + preparedDir + `
mkdir -p "$dir"
[ -e "$dir/prepared" ] && exit 0
if ! mkdir "$dir/setup.lock" 2>/dev/null; then
	while [ ! -e "$dir/prepared" ]; do
		[ -d "$dir/setup.lock" ] || { echo "the setup run this one waited for failed" >&2; exit 75; }
		sleep 0.2
	done
	exit 0
fi
trap 'rmdir "$dir/setup.lock"' EXIT
sh -ec "$1"
: >"$dir/prepared"
`

// HostsFile is every segmented lab node's /etc/hosts: each node by its
// name and its container's name, at the address the exam gives it.
func HostsFile(l Spec) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n")
	for _, n := range l.Nodes {
		if n.Address == "" {
			continue
		}
		fmt.Fprintf(&b, "%s\t%s %s\n", n.Address, n.Name, ContainerName(l.SessionID, n.Name))
	}
	return b.String()
}
