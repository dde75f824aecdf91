package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/testlab/redistest"
)

func newSignin(t *testing.T, b SigninBudgets) *Signin {
	t.Helper()
	s, err := NewSignin(SigninOptions{Redis: redistest.Client(t), Prefix: "test:", Budgets: b})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var hall = netip.MustParseAddr("203.0.113.9")

// TestHallSignsIn: 500 candidates behind one NAT sign in within a minute
// on the default budgets, a few of them mistyping their code once.
func TestHallSignsIn(t *testing.T) {
	ctx := testContext(t)
	s := newSignin(t, SigninBudgets{})
	if s.Budgets() != DefaultSigninBudgets() {
		t.Fatalf("zero budgets are not the defaults: %+v", s.Budgets())
	}
	for i := range 500 {
		account := fmt.Sprintf("candidate-%d@example.com", i)
		if i%10 == 0 {
			if err := s.Attempt(ctx, hall, account); err != nil {
				t.Fatalf("candidate %d, first try: %v", i, err)
			}
			if err := s.Failed(ctx, hall, account); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Attempt(ctx, hall, account); err != nil {
			t.Fatalf("candidate %d: %v", i, err)
		}
	}
}

// TestWrongCodesFromOneAddress: once the address's failure budget is
// spent every attempt from it is refused, a right code included, while
// other addresses go on.
func TestWrongCodesFromOneAddress(t *testing.T) {
	ctx := testContext(t)
	s := newSignin(t, SigninBudgets{FailuresPerAddress: Budget{5, 10 * time.Minute}, FailuresPerAccount: Budget{100, time.Minute}})
	for i := range 5 {
		guess := fmt.Sprintf("code-%d", i)
		if err := s.Attempt(ctx, hall, guess); err != nil {
			t.Fatalf("guess %d: %v", i, err)
		}
		s.Failed(ctx, hall, guess)
	}
	err := s.Attempt(ctx, hall, "the-right-code")
	var lim *Limited
	if !errors.As(err, &lim) || lim.Key.Bucket != BucketSigninFailureAddress {
		t.Fatalf("sixth attempt: %v, want refused by the address's failure budget", err)
	}
	// 5 per 10 minutes: one more every 2 minutes.
	if lim.RetryAfter < 119*time.Second || lim.RetryAfter > 2*time.Minute {
		t.Errorf("retry after %s, want about 2m", lim.RetryAfter)
	}
	if err := s.Attempt(ctx, netip.MustParseAddr("198.51.100.1"), "the-right-code"); err != nil {
		t.Errorf("another address: %v", err)
	}
}

// TestWrongCodesForOneAccount: guesses at one account from many
// addresses (a botnet) stop at the account's failure budget.
func TestWrongCodesForOneAccount(t *testing.T) {
	ctx := testContext(t)
	s := newSignin(t, SigninBudgets{FailuresPerAccount: Budget{3, 10 * time.Minute}})
	bot := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) }
	for i := range 3 {
		if err := s.Attempt(ctx, bot(i), "victim@example.com"); err != nil {
			t.Fatalf("bot %d: %v", i, err)
		}
		s.Failed(ctx, bot(i), "victim@example.com")
	}
	var lim *Limited
	if err := s.Attempt(ctx, bot(200), "victim@example.com"); !errors.As(err, &lim) || lim.Key.Bucket != BucketSigninFailureAccount {
		t.Fatalf("fresh address on a spent account: %v, want refused by the account's failure budget", err)
	}
	if err := s.Attempt(ctx, bot(200), "someone-else@example.com"); err != nil {
		t.Errorf("another account from the same address: %v", err)
	}
}

// TestAttemptsPerAccount counts good sign-ins too, from any address.
func TestAttemptsPerAccount(t *testing.T) {
	ctx := testContext(t)
	s := newSignin(t, SigninBudgets{PerAccount: Budget{4, time.Minute}})
	for i := range 4 {
		if err := s.Attempt(ctx, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), "a@example.com"); err != nil {
			t.Fatal(err)
		}
	}
	var lim *Limited
	if err := s.Attempt(ctx, hall, "a@example.com"); !errors.As(err, &lim) || lim.Key.Bucket != BucketSigninAccount {
		t.Fatalf("fifth attempt: %v, want refused by the account's budget", err)
	}
	// A refusal costs the address nothing.
	if err := s.Attempt(ctx, hall, ""); err != nil {
		t.Errorf("attempt naming no account: %v", err)
	}
}

// TestAttemptsPerAddress: the address's budget counts every sign-in, and
// an IPv6 client is counted by its /64.
func TestAttemptsPerAddress(t *testing.T) {
	ctx := testContext(t)
	s := newSignin(t, SigninBudgets{PerAddress: Budget{3, time.Minute}})
	tests := []struct {
		name  string
		addrs []string
		ok    int
	}{
		{"IPv4", []string{"203.0.113.9", "203.0.113.9", "203.0.113.9", "203.0.113.9"}, 3},
		{"IPv4-mapped is the same address", []string{"::ffff:203.0.113.9"}, 0},
		{"one IPv6 /64", []string{"2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9", "2001:db8:1:2::3"}, 3},
		{"next /64", []string{"2001:db8:1:3::1"}, 1},
	}
	n := 0
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok := 0
			for _, a := range tc.addrs {
				n++
				err := s.Attempt(ctx, netip.MustParseAddr(a), fmt.Sprintf("c%d@example.com", n))
				if err == nil {
					ok++
				} else if !errors.Is(err, ErrLimited) {
					t.Fatal(err)
				}
			}
			if ok != tc.ok {
				t.Errorf("%d admitted, want %d", ok, tc.ok)
			}
		})
	}
}

func TestAddressKey(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.9":           "203.0.113.9",
		"::ffff:203.0.113.9":    "203.0.113.9",
		"2001:db8:1:2:3:4:5:6":  "2001:db8:1:2::/64",
		"fe80::1%eth0":          "fe80::/64",
		"::1":                   "::/64",
		"2001:db8:1:2::ffff:ff": "2001:db8:1:2::/64",
	} {
		if got := AddressKey(netip.MustParseAddr(in)); got != want {
			t.Errorf("AddressKey(%s) = %s, want %s", in, got, want)
		}
	}
	if got := AddressKey(netip.Addr{}); got != "unknown" {
		t.Errorf("AddressKey(zero) = %s", got)
	}
}

// TestAccountsAreHashed keeps emails out of Redis key names.
func TestAccountsAreHashed(t *testing.T) {
	ctx := testContext(t)
	rdb := redistest.Client(t)
	s, err := NewSignin(SigninOptions{Redis: rdb, Prefix: "test:"})
	if err != nil {
		t.Fatal(err)
	}
	s.Attempt(ctx, hall, "ada@example.com")
	s.Failed(ctx, hall, "ada@example.com")
	keys, err := rdb.Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 4 {
		t.Errorf("keys = %q, want two attempt and two failure counters", keys)
	}
	for _, k := range keys {
		for _, leak := range []string{"ada", "example"} {
			if strings.Contains(k, leak) {
				t.Errorf("key %q holds the account name", k)
			}
		}
	}
}
