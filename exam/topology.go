package exam

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Bounds on what one node's network and start-up may declare.
const (
	// MaxInterfaces is the most interfaces one node may have.
	MaxInterfaces = 16
	// MaxNetworks is the most segments one lab may have.
	MaxNetworks = 64
	// MaxFileBytes bounds the content of one node's files together.
	MaxFileBytes = 1 << 20
	// DefaultSetupTimeout applies to a setup that names no setup_timeout.
	DefaultSetupTimeout = 2 * time.Minute
	// MaxSetupTimeout is the longest a setup may be allowed to run.
	MaxSetupTimeout = 10 * time.Minute
	// DefaultFileMode is the mode of a file that names none.
	DefaultFileMode = "0644"
)

var (
	networkPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)
	modePattern    = regexp.MustCompile(`^0?[0-7]{3,4}$`)
	// Filesystems the runtime or the kernel owns; a file there would be
	// lost or refused.
	reservedDirs = []string{"/proc", "/sys", "/dev"}
	// Files the runtime writes itself: the lab's names and the node's own.
	// A setup may still change them.
	runtimeFiles = []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
)

// Segmented reports whether the lab declares its own networks.
func (t Topology) Segmented() bool { return len(t.Networks) > 0 }

// InterfaceName is the name a node's i-th interface gets: eth0, eth1, ...
func InterfaceName(i int) string { return "eth" + strconv.Itoa(i) }

// HostAddress is the address the node's name resolves to in its lab: the
// declared one, else its first interface's; invalid when it has none.
func (n Node) HostAddress() netip.Addr {
	if a, err := netip.ParseAddr(n.Address); err == nil {
		return a
	}
	if len(n.Interfaces) > 0 {
		if p, err := netip.ParsePrefix(n.Interfaces[0].Address); err == nil {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// FileMode is the file's mode as a number.
func (f File) FileMode() uint32 {
	m, err := strconv.ParseUint(f.Mode, 8, 32)
	if err != nil {
		return 0o644
	}
	return uint32(m)
}

func (e *Exam) applyTopologyDefaults(n *Node) {
	for i := range n.Files {
		if n.Files[i].Mode == "" {
			n.Files[i].Mode = DefaultFileMode
		}
	}
	if strings.TrimSpace(n.Setup) != "" && n.SetupTimeout.Duration == 0 {
		n.SetupTimeout.Duration = DefaultSetupTimeout
	}
}

// validateNetworks checks topology.networks and returns each network's
// subnet by name.
func (t Topology) validateNetworks() (map[string]netip.Prefix, error) {
	if len(t.Networks) > MaxNetworks {
		return nil, invalid("topology.networks", "at most %d networks, got %d", MaxNetworks, len(t.Networks))
	}
	subnets := make(map[string]netip.Prefix, len(t.Networks))
	for i, nw := range t.Networks {
		f := fmt.Sprintf("topology.networks[%d]", i)
		if !networkPattern.MatchString(nw.Name) {
			return nil, invalid(f+".name", "must be %s, got %q", nameRule, nw.Name)
		}
		if _, dup := subnets[nw.Name]; dup {
			return nil, invalid(f+".name", "duplicate network name %q", nw.Name)
		}
		p, err := netip.ParsePrefix(nw.Subnet)
		if err != nil || !p.Addr().Is4() {
			return nil, invalid(f+".subnet", "must be an IPv4 prefix such as 192.168.10.0/24, got %q", nw.Subnet)
		}
		if p.Bits() < 8 || p.Bits() > 30 {
			return nil, invalid(f+".subnet", "prefix length must be between /8 and /30, got /%d", p.Bits())
		}
		if p != p.Masked() {
			return nil, invalid(f+".subnet", "%s has host bits set; the network is %s", nw.Subnet, p.Masked())
		}
		if bad := reservedRange(p); bad != "" {
			return nil, invalid(f+".subnet", "%s overlaps %s, which a lab may not use", p, bad)
		}
		for j := 0; j < i; j++ {
			if other := subnets[t.Networks[j].Name]; other.Overlaps(p) {
				return nil, invalid(f+".subnet", "%s overlaps network %q (%s)", p, t.Networks[j].Name, other)
			}
		}
		subnets[nw.Name] = p
	}
	return subnets, nil
}

// reservedRange names the special-purpose range p overlaps, if any:
// loopback, link-local (cloud metadata lives there), multicast and the rest.
func reservedRange(p netip.Prefix) string {
	for _, r := range []string{"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"} {
		if netip.MustParsePrefix(r).Overlaps(p) {
			return r
		}
	}
	return ""
}

// validateNodeNetwork checks one node's interfaces, address and routes, and
// records its addresses in used (address → "node ethN").
func validateNodeNetwork(f string, n Node, subnets map[string]netip.Prefix, used map[netip.Addr]string) error {
	if len(subnets) == 0 {
		switch {
		case len(n.Interfaces) > 0:
			return invalid(f+".interfaces", "need networks to plug into, declared in topology.networks")
		case len(n.Routes) > 0:
			return invalid(f+".routes", "need interfaces on networks declared in topology.networks")
		case n.Address != "":
			return invalid(f+".address", "needs interfaces on networks declared in topology.networks")
		}
		return nil
	}
	if len(n.Interfaces) > MaxInterfaces {
		return invalid(f+".interfaces", "at most %d interfaces, got %d", MaxInterfaces, len(n.Interfaces))
	}
	var own []netip.Prefix
	onNet := map[string]bool{}
	for i, ifc := range n.Interfaces {
		fi := fmt.Sprintf("%s.interfaces[%d]", f, i)
		subnet, ok := subnets[ifc.Network]
		if !ok {
			return invalid(fi+".network", "unknown network %q", ifc.Network)
		}
		if onNet[ifc.Network] {
			return invalid(fi+".network", "the node already has an interface on %q", ifc.Network)
		}
		onNet[ifc.Network] = true
		p, err := netip.ParsePrefix(ifc.Address)
		if err != nil || !p.Addr().Is4() {
			return invalid(fi+".address", "must be an IPv4 address with its prefix length, such as 192.168.10.10/24, got %q", ifc.Address)
		}
		if !subnet.Contains(p.Addr()) {
			return invalid(fi+".address", "%s is outside network %q (%s)", p.Addr(), ifc.Network, subnet)
		}
		if p.Bits() != subnet.Bits() {
			return invalid(fi+".address", "must have the prefix length of network %q (/%d), got %s", ifc.Network, subnet.Bits(), ifc.Address)
		}
		if what := special(subnet, p.Addr()); what != "" {
			return invalid(fi+".address", "%s is the %s address of %s, which no node may hold", p.Addr(), what, subnet)
		}
		if who, dup := used[p.Addr()]; dup {
			return invalid(fi+".address", "%s is already taken by %s", p.Addr(), who)
		}
		used[p.Addr()] = n.Name + "'s " + InterfaceName(i)
		own = append(own, p)
	}
	if n.Address != "" {
		a, err := netip.ParseAddr(n.Address)
		if err != nil || !a.Is4() {
			return invalid(f+".address", "must be an IPv4 address without a prefix length, got %q", n.Address)
		}
		found := false
		for _, p := range own {
			found = found || p.Addr() == a
		}
		if !found {
			return invalid(f+".address", "%s is not the address of any of the node's interfaces", a)
		}
	}
	dests := map[netip.Prefix]bool{}
	for i, r := range n.Routes {
		fr := fmt.Sprintf("%s.routes[%d]", f, i)
		if len(own) == 0 {
			return invalid(fr, "the node has no interfaces to route through")
		}
		to := netip.MustParsePrefix("0.0.0.0/0")
		if r.To != "default" {
			p, err := netip.ParsePrefix(r.To)
			if err != nil || !p.Addr().Is4() {
				return invalid(fr+".to", `must be "default" or an IPv4 prefix, got %q`, r.To)
			}
			if p != p.Masked() {
				return invalid(fr+".to", "%s has host bits set; the prefix is %s", r.To, p.Masked())
			}
			to = p
		}
		if dests[to] {
			return invalid(fr+".to", "a route to %s is already declared", to)
		}
		dests[to] = true
		for _, p := range own {
			// The node has this route already, and replacing it would cut
			// the node off its own network.
			if p.Masked() == to {
				return invalid(fr+".to", "%s is the node's own network, which it reaches without a route", to)
			}
		}
		via, err := netip.ParseAddr(r.Via)
		if err != nil || !via.Is4() {
			return invalid(fr+".via", "must be an IPv4 address, got %q", r.Via)
		}
		var on netip.Prefix
		for _, p := range own {
			if p.Addr() == via {
				return invalid(fr+".via", "%s is the node's own address", via)
			}
			if p.Masked().Contains(via) {
				on = p.Masked()
			}
		}
		if !on.IsValid() {
			return invalid(fr+".via", "%s is on none of the node's networks", via)
		}
		if what := special(on, via); what != "" {
			return invalid(fr+".via", "%s is the %s address of %s, not a next hop", via, what, on)
		}
	}
	return nil
}

// special names what a, inside subnet, is when no host may hold it: the
// subnet's "network" or "broadcast" address; else it is empty.
func special(subnet netip.Prefix, a netip.Addr) string {
	switch a {
	case subnet.Masked().Addr():
		return "network"
	case lastAddr(subnet):
		return "broadcast"
	}
	return ""
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// validateStartup checks a node's files and setup.
func validateStartup(f string, n Node) error {
	total := 0
	paths := map[string]bool{}
	for i, file := range n.Files {
		ff := fmt.Sprintf("%s.files[%d]", f, i)
		p := file.Path
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" || strings.ContainsAny(p, "\x00\n") {
			return invalid(ff+".path", "must be an absolute file path such as /etc/motd, without . or .. parts or a trailing slash; got %q", p)
		}
		for _, d := range reservedDirs {
			if p == d || strings.HasPrefix(p, d+"/") {
				return invalid(ff+".path", "%s is under %s, which the node's kernel owns", p, d)
			}
		}
		for _, r := range runtimeFiles {
			if p == r {
				return invalid(ff+".path", "%s is written by the lab itself; change it in setup instead", p)
			}
		}
		if paths[p] {
			return invalid(ff+".path", "%s is already declared", p)
		}
		for q := range paths {
			if strings.HasPrefix(p, q+"/") {
				return invalid(ff+".path", "%s would be inside %s, which is declared as a file", p, q)
			}
			if strings.HasPrefix(q, p+"/") {
				return invalid(ff+".path", "%s is declared as a file, but %s is inside it", p, q)
			}
		}
		paths[p] = true
		if !modePattern.MatchString(file.Mode) || file.FileMode() > 0o7777 {
			return invalid(ff+".mode", "must be an octal mode such as \"0644\" or \"0755\", got %q", file.Mode)
		}
		total += len(file.Content)
		if total > MaxFileBytes {
			return invalid(ff+".content", "with this file the node's files hold %d bytes, more than the %d (1 MiB) allowed", total, MaxFileBytes)
		}
	}
	if err := n.SetupTimeout.check(f + ".setup_timeout"); err != nil {
		return err
	}
	if strings.TrimSpace(n.Setup) == "" {
		if n.SetupTimeout.Duration != 0 {
			return invalid(f+".setup_timeout", "is set but the node has no setup")
		}
		return nil
	}
	if t := n.SetupTimeout.Duration; t < time.Second || t > MaxSetupTimeout {
		return invalid(f+".setup_timeout", "must be between 1s and %gm, got %s", MaxSetupTimeout.Minutes(), t)
	}
	return nil
}
