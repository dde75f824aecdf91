package ratelimit

import (
	"errors"
	"net/netip"
	"testing"
)

// The tests' network: a load balancer (10.0.0.5) in front of an ingress
// (10.0.1.7), both trusted; clients on the internet.
var testProxies = []string{"10.0.0.0/24", "10.0.1.7", "2001:db8:ffff::/48", "127.0.0.1"}

func TestClientAddr(t *testing.T) {
	tests := []struct {
		name   string
		header string
		peer   string
		values []string
		want   string
	}{
		// The peer decides whether the header is read at all.
		{"untrusted peer: header ignored", "", "198.51.100.7", []string{"203.0.113.9"}, "198.51.100.7"},
		{"untrusted peer: spoofed trusted hop ignored", "", "198.51.100.7", []string{"10.0.0.5"}, "198.51.100.7"},
		{"trusted peer without header", "", "10.0.0.5", nil, "10.0.0.5"},
		{"trusted peer with empty header", "", "10.0.0.5", []string{""}, "10.0.0.5"},
		{"loopback proxy", "", "127.0.0.1", []string{"203.0.113.9"}, "203.0.113.9"},

		// X-Forwarded-For, walked from the right.
		{"one proxy", "", "10.0.0.5", []string{"203.0.113.9"}, "203.0.113.9"},
		{"two proxies", "", "10.0.0.5", []string{"203.0.113.9, 10.0.1.7"}, "203.0.113.9"},
		{"spoofed leftmost entry", "", "10.0.0.5", []string{"1.2.3.4, 203.0.113.9"}, "203.0.113.9"},
		{"spoofed leftmost trusted-looking entry", "", "10.0.0.5", []string{"10.0.0.9, 203.0.113.9, 10.0.1.7"}, "203.0.113.9"},
		{"header split over lines", "", "10.0.0.5", []string{"1.2.3.4", "203.0.113.9, 10.0.1.7"}, "203.0.113.9"},
		{"every hop trusted", "", "10.0.0.5", []string{"10.0.0.8, 10.0.1.7"}, "10.0.0.8"},
		{"port on IPv4", "", "10.0.0.5", []string{"203.0.113.9:51234"}, "203.0.113.9"},
		{"bare IPv6", "", "10.0.0.5", []string{"2001:db8:1::77"}, "2001:db8:1::77"},
		{"bracketed IPv6 with port", "", "10.0.0.5", []string{"[2001:db8:1::77]:443"}, "2001:db8:1::77"},
		{"bracketed IPv6", "", "10.0.0.5", []string{"[2001:db8:1::77]"}, "2001:db8:1::77"},
		{"IPv6 with zone", "", "10.0.0.5", []string{"fe80::1%eth0"}, "fe80::1"},
		{"IPv4-mapped IPv6", "", "10.0.0.5", []string{"::ffff:203.0.113.9"}, "203.0.113.9"},
		{"IPv6 trusted peer", "", "2001:db8:ffff::2", []string{"203.0.113.9"}, "203.0.113.9"},
		{"IPv4-mapped trusted peer", "", "::ffff:10.0.0.5", []string{"203.0.113.9"}, "203.0.113.9"},
		{"IPv6 proxy chain", "", "2001:db8:ffff::2", []string{"2001:db8:1::77, 2001:db8:ffff:1::9"}, "2001:db8:1::77"},

		// Malformed entries stop at the nearest hop already vouched for.
		{"garbage", "", "10.0.0.5", []string{"not-an-ip"}, "10.0.0.5"},
		{"garbage behind trusted hop", "", "10.0.0.5", []string{"junk, 10.0.1.7"}, "10.0.1.7"},
		{"garbage left of the client", "", "10.0.0.5", []string{"junk, 203.0.113.9"}, "203.0.113.9"},
		{"empty entry", "", "10.0.0.5", []string{"203.0.113.9,,"}, "10.0.0.5"},
		{"unknown", "", "10.0.0.5", []string{"unknown"}, "10.0.0.5"},
		{"bad port", "", "10.0.0.5", []string{"203.0.113.9:http"}, "10.0.0.5"},
		{"unclosed bracket", "", "10.0.0.5", []string{"[2001:db8::1"}, "10.0.0.5"},
		{"hostname", "", "10.0.0.5", []string{"example.com"}, "10.0.0.5"},
		{"CIDR", "", "10.0.0.5", []string{"203.0.113.0/24"}, "10.0.0.5"},

		// RFC 7239 Forwarded.
		{"forwarded", "Forwarded", "10.0.0.5", []string{"for=203.0.113.9"}, "203.0.113.9"},
		{"forwarded with other parameters", "Forwarded", "10.0.0.5", []string{"for=203.0.113.9;proto=https;by=10.0.0.5"}, "203.0.113.9"},
		{"forwarded parameter case", "Forwarded", "10.0.0.5", []string{"For=203.0.113.9"}, "203.0.113.9"},
		{"forwarded quoted IPv6 with port", "Forwarded", "10.0.0.5", []string{`for="[2001:db8:cafe::17]:4711"`}, "2001:db8:cafe::17"},
		{"forwarded quoted IPv4 with port", "Forwarded", "10.0.0.5", []string{`for="203.0.113.9:8080"`}, "203.0.113.9"},
		{"forwarded chain", "Forwarded", "10.0.0.5", []string{"for=203.0.113.9, for=10.0.1.7"}, "203.0.113.9"},
		{"forwarded spoofed leftmost", "Forwarded", "10.0.0.5", []string{"for=1.2.3.4, for=203.0.113.9;proto=https"}, "203.0.113.9"},
		{"forwarded over lines", "Forwarded", "10.0.0.5", []string{"for=1.2.3.4", "for=203.0.113.9"}, "203.0.113.9"},
		{"forwarded obfuscated port", "Forwarded", "10.0.0.5", []string{`for="203.0.113.9:_p1"`}, "203.0.113.9"},
		{"forwarded obfuscated identifier", "Forwarded", "10.0.0.5", []string{"for=_hidden"}, "10.0.0.5"},
		{"forwarded obfuscated behind trusted hop", "Forwarded", "10.0.0.5", []string{"for=_gazonk, for=10.0.1.7"}, "10.0.1.7"},
		{"forwarded unknown", "Forwarded", "10.0.0.5", []string{"for=unknown"}, "10.0.0.5"},
		{"forwarded element without for", "Forwarded", "10.0.0.5", []string{"proto=https;by=10.0.0.5"}, "10.0.0.5"},
		{"forwarded for twice", "Forwarded", "10.0.0.5", []string{"for=1.2.3.4;for=203.0.113.9"}, "10.0.0.5"},
		{"forwarded quoted comma", "Forwarded", "10.0.0.5", []string{`for=1.2.3.4;x="a,b", for=203.0.113.9`}, "203.0.113.9"},
		{"forwarded unbalanced quote", "Forwarded", "10.0.0.5", []string{`for="203.0.113.9`}, "10.0.0.5"},
		{"forwarded unbalanced quote on a spoofed line", "Forwarded", "10.0.0.5", []string{`for="1.2.3.4`, "for=203.0.113.9"}, "203.0.113.9"},
		{"forwarded unbracketed IPv6 port", "Forwarded", "10.0.0.5", []string{`for="2001:db8::1:4711"`}, "2001:db8::1:4711"},

		// The header not configured is never read.
		{"X-Forwarded-For proxies: Forwarded syntax is garbage", "", "10.0.0.5", []string{"for=203.0.113.9"}, "10.0.0.5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewProxies(testProxies, tc.header)
			if err != nil {
				t.Fatal(err)
			}
			got := p.ClientAddr(netip.MustParseAddr(tc.peer), tc.values)
			if got != netip.MustParseAddr(tc.want) {
				t.Errorf("ClientAddr(%s, %q) = %s, want %s", tc.peer, tc.values, got, tc.want)
			}
		})
	}
}

func TestNoTrustedProxies(t *testing.T) {
	for _, p := range []Proxies{{}, mustProxies(t, nil, "")} {
		peer := netip.MustParseAddr("127.0.0.1")
		if got := p.ClientAddr(peer, []string{"203.0.113.9"}); got != peer {
			t.Errorf("with no trusted proxies the client is %s, want the peer %s", got, peer)
		}
		if p.Header() != HeaderXForwardedFor {
			t.Errorf("header = %q", p.Header())
		}
	}
}

func TestNewProxies(t *testing.T) {
	tests := []struct {
		name    string
		trusted []string
		header  string
		ok      bool
	}{
		{"addresses and CIDRs", []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"}, "", true},
		{"unmasked CIDR", []string{"10.1.2.3/8"}, "", true},
		{"IPv4-mapped CIDR", []string{"::ffff:10.0.0.0/104"}, "", true},
		{"header case", nil, "x-forwarded-for", true},
		{"forwarded", nil, "forwarded", true},
		{"hostname", []string{"proxy.internal"}, "", false},
		{"bad CIDR", []string{"10.0.0.0/33"}, "", false},
		{"zone", []string{"fe80::1%eth0"}, "", false},
		{"empty entry", []string{""}, "", false},
		{"other header", nil, "X-Real-IP", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewProxies(tc.trusted, tc.header)
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && !errors.Is(err, ErrBadProxy) {
				t.Fatalf("err = %v, want ErrBadProxy", err)
			}
		})
	}
	p := mustProxies(t, []string{"10.1.2.3/8", "::ffff:192.0.2.0/120"}, "")
	for addr, want := range map[string]bool{"10.200.0.1": true, "11.0.0.1": false, "192.0.2.9": true, "::ffff:192.0.2.9": true, "192.0.3.1": false} {
		if got := p.Trusted(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Trusted(%s) = %v, want %v", addr, got, want)
		}
	}
}

func mustProxies(t *testing.T, trusted []string, header string) Proxies {
	t.Helper()
	p, err := NewProxies(trusted, header)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
