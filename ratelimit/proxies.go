package ratelimit

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// Headers a trusted proxy may name the client in.
const (
	HeaderXForwardedFor = "X-Forwarded-For"
	HeaderForwarded     = "Forwarded" // RFC 7239
)

// ErrBadProxy is returned for a trusted-proxy entry that is neither an
// address nor a CIDR, or a header that is not one of the two above.
var ErrBadProxy = errors.New("bad trusted proxy")

// Proxies are the peers whose forwarding header is believed. The zero
// value trusts no one: the client is the socket peer.
type Proxies struct {
	trusted []netip.Prefix
	header  string
}

// NewProxies parses trusted addresses and CIDRs ("10.0.0.0/8",
// "192.0.2.7", "2001:db8::/32") and the header those proxies append the
// client to: HeaderXForwardedFor (also for "") or HeaderForwarded.
//
// Only one header is read. A proxy appends to its own header and passes
// the other on untouched, so reading both would let a client write its
// own address into the one the proxy does not maintain.
func NewProxies(trusted []string, header string) (Proxies, error) {
	var p Proxies
	switch http.CanonicalHeaderKey(strings.TrimSpace(header)) {
	case "", HeaderXForwardedFor:
		p.header = HeaderXForwardedFor
	case HeaderForwarded:
		p.header = HeaderForwarded
	default:
		return Proxies{}, fmt.Errorf("%w: header %q must be %s or %s", ErrBadProxy, header, HeaderXForwardedFor, HeaderForwarded)
	}
	for _, s := range trusted {
		s = strings.TrimSpace(s)
		if pre, err := netip.ParsePrefix(s); err == nil {
			if pre.Addr().Is4In6() {
				pre = netip.PrefixFrom(pre.Addr().Unmap(), pre.Bits()-96)
			}
			if pre.IsValid() {
				p.trusted = append(p.trusted, pre.Masked())
				continue
			}
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return Proxies{}, fmt.Errorf("%w: %q is not an address or CIDR", ErrBadProxy, s)
		}
		a = a.Unmap()
		p.trusted = append(p.trusted, netip.PrefixFrom(a, a.BitLen()))
	}
	return p, nil
}

// Header is the forwarding header ClientAddr reads.
func (p Proxies) Header() string {
	if p.header == "" {
		return HeaderXForwardedFor
	}
	return p.header
}

// Trusted reports whether a is one of the trusted proxies.
func (p Proxies) Trusted(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, pre := range p.trusted {
		if pre.Contains(a) {
			return true
		}
	}
	return false
}

// ClientAddr is the client of a request that arrived from peer carrying
// values, every line of Header() in order. Unless the peer is trusted the
// header is ignored and the client is the peer. Otherwise the hops are
// walked from the right — each proxy appends the address it got the
// request from, so only the right end was written by someone trusted —
// skipping trusted proxies; the first untrusted hop is the client. The
// entries to its left are whatever the client sent and are never read.
//
// A hop that cannot be read (malformed, "unknown" or an obfuscated
// identifier in Forwarded) ends the walk at the nearest hop already
// vouched for: a proxy's address rather than one a client could choose.
// Addresses come back without port or zone, IPv4-mapped IPv6 as IPv4.
func (p Proxies) ClientAddr(peer netip.Addr, values []string) netip.Addr {
	client := peer.Unmap().WithZone("")
	if len(p.trusted) == 0 || !p.Trusted(client) {
		return client
	}
	var hops []string
	if p.Header() == HeaderForwarded {
		hops = forwardedFor(values)
	} else {
		hops = xForwardedFor(values)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseNode(hops[i])
		if !ok {
			return client
		}
		if !p.Trusted(a) {
			return a
		}
		client = a
	}
	return client
}

// xForwardedFor lists the hops of X-Forwarded-For lines, left to right.
func xForwardedFor(values []string) []string {
	var hops []string
	for _, v := range values {
		if strings.TrimSpace(v) == "" {
			continue
		}
		for _, h := range strings.Split(v, ",") {
			hops = append(hops, strings.TrimSpace(h))
		}
	}
	return hops
}

// forwardedFor lists the for= value of each element of Forwarded lines
// (RFC 7239 section 4), left to right; "" stands for an element that
// cannot be read. A line with an unbalanced quote is one unreadable hop.
func forwardedFor(values []string) []string {
	var hops []string
	for _, v := range values {
		if strings.TrimSpace(v) == "" {
			continue
		}
		elems, ok := splitQuoted(v, ',')
		if !ok {
			hops = append(hops, "")
			continue
		}
		for _, e := range elems {
			hops = append(hops, forParam(e))
		}
	}
	return hops
}

// forParam is the unquoted for= value of one element, "" if it has none,
// has two, or is malformed.
func forParam(elem string) string {
	pairs, _ := splitQuoted(elem, ';')
	found := ""
	for _, pair := range pairs {
		name, value, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			return ""
		}
		if !strings.EqualFold(strings.TrimSpace(name), "for") {
			continue
		}
		if found != "" {
			return ""
		}
		if found = unquote(strings.TrimSpace(value)); found == "" {
			return ""
		}
	}
	return found
}

// splitQuoted splits s at sep outside quoted strings; false when a quote
// is left open.
func splitQuoted(s string, sep byte) ([]string, bool) {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if quoted {
		return nil, false
	}
	return append(out, s[start:]), true
}

// unquote undoes a quoted-string; a token is returned as it is.
func unquote(s string) string {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		if strings.ContainsRune(s, '"') {
			return ""
		}
		return s
	}
	var b strings.Builder
	for i := 1; i < len(s)-1; i++ {
		if s[i] == '\\' && i+1 < len(s)-1 {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseNode reads one hop: an IPv4 or IPv6 address, bracketed or not,
// with or without a port (a number, or an obfuscated "_port" in
// Forwarded). "unknown", "_hidden" and anything else is not an address.
func parseNode(s string) (netip.Addr, bool) {
	host := s
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 || !validPort(s[end+1:]) {
			return netip.Addr{}, false
		}
		host = s[1:end]
	} else if strings.Count(s, ":") == 1 {
		h, port, _ := strings.Cut(s, ":")
		if !validPort(":" + port) {
			return netip.Addr{}, false
		}
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

// validPort accepts "", ":" followed by 1-5 digits, or (obfuscated) ":_"
// followed by RFC 7239's obfport characters.
func validPort(s string) bool {
	if s == "" {
		return true
	}
	p, ok := strings.CutPrefix(s, ":")
	if !ok || p == "" {
		return false
	}
	if p[0] == '_' {
		for _, c := range p[1:] {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return false
			}
		}
		return len(p) > 1
	}
	if len(p) > 5 {
		return false
	}
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// RequestClient is the client address of a request as Fiber holds it: the
// forwarding header is read only when the socket peer is trusted.
func (p Proxies) RequestClient(c *fiber.Ctx) netip.Addr {
	peer, _ := netip.AddrFromSlice(c.Context().RemoteIP())
	var values []string
	if p.Trusted(peer) {
		for _, v := range c.Request().Header.PeekAll(p.Header()) {
			values = append(values, string(v))
		}
	}
	return p.ClientAddr(peer, values)
}
