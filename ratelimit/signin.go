package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"time"

	"github.com/redis/go-redis/v9"
)

// Buckets of the sign-in policy.
const (
	BucketSigninAddress        = "signin:address"
	BucketSigninAccount        = "signin:account"
	BucketSigninFailureAddress = "signin-failure:address"
	BucketSigninFailureAccount = "signin-failure:account"
)

// SigninBudgets are the four sign-in budgets. Attempts count every
// sign-in, good or bad; failures count only wrong credentials, and while
// either failure budget is spent every attempt is refused, the right code
// too, so that a refusal tells a guesser nothing.
type SigninBudgets struct {
	// PerAddress is attempts from one client address (an IPv6 /64): a
	// whole exam hall behind one NAT signs in within it.
	PerAddress Budget
	// PerAccount is attempts naming one account (an access code or an
	// email), from any number of addresses.
	PerAccount Budget
	// FailuresPerAddress is wrong credentials from one client address.
	FailuresPerAddress Budget
	// FailuresPerAccount is wrong credentials naming one account, from any
	// number of addresses: it bounds a botnet.
	FailuresPerAccount Budget
}

// DefaultSigninBudgets are the budgets a zero SigninBudgets field means.
func DefaultSigninBudgets() SigninBudgets {
	return SigninBudgets{
		PerAddress:         Budget{Limit: 600, Window: time.Minute},
		PerAccount:         Budget{Limit: 10, Window: time.Minute},
		FailuresPerAddress: Budget{Limit: 100, Window: 10 * time.Minute},
		FailuresPerAccount: Budget{Limit: 10, Window: 10 * time.Minute},
	}
}

// SigninOptions configure NewSignin.
type SigninOptions struct {
	// Redis keeps the counters, shared by every API process; required.
	Redis redis.Scripter
	// Prefix starts every key (the deployment's Redis prefix).
	Prefix string
	// Budgets; a zero field is its DefaultSigninBudgets value.
	Budgets SigninBudgets
}

// Signin is the sign-in policy: login handlers call Attempt before they
// look at the credentials, and Failed when the credentials were wrong.
type Signin struct {
	l       *Limiter
	budgets SigninBudgets
}

// NewSignin returns the sign-in policy over Redis.
func NewSignin(o SigninOptions) (*Signin, error) {
	b, def := o.Budgets, DefaultSigninBudgets()
	for _, f := range []struct{ got, def *Budget }{
		{&b.PerAddress, &def.PerAddress}, {&b.PerAccount, &def.PerAccount},
		{&b.FailuresPerAddress, &def.FailuresPerAddress}, {&b.FailuresPerAccount, &def.FailuresPerAccount},
	} {
		if *f.got == (Budget{}) {
			*f.got = *f.def
		}
	}
	l, err := New(Options{Redis: o.Redis, Prefix: o.Prefix, Buckets: map[string]Budget{
		BucketSigninAddress:        b.PerAddress,
		BucketSigninAccount:        b.PerAccount,
		BucketSigninFailureAddress: b.FailuresPerAddress,
		BucketSigninFailureAccount: b.FailuresPerAccount,
	}})
	if err != nil {
		return nil, fmt.Errorf("new sign-in limits: %w", err)
	}
	return &Signin{l: l, budgets: b}, nil
}

// Budgets are the budgets in force.
func (s *Signin) Budgets() SigninBudgets { return s.budgets }

// Attempt admits one sign-in from addr naming account ("" when the
// sign-in names none), or returns a *Limited (errors.Is ErrLimited) with
// the wait. It charges both attempt budgets and checks both failure
// budgets in one round trip; a refused attempt is charged nothing.
//
// The account is any string that names what is being signed in to (a
// normalized email, an access code's hash); it is stored hashed. Budgets
// apply alike whether or not the account exists, so a refusal says
// nothing about a roster.
func (s *Signin) Attempt(ctx context.Context, addr netip.Addr, account string) error {
	a := AddressKey(addr)
	charge := []Key{{BucketSigninAddress, a}}
	check := []Key{{BucketSigninFailureAddress, a}}
	if account != "" {
		id := accountKey(account)
		charge = append(charge, Key{BucketSigninAccount, id})
		check = append(check, Key{BucketSigninFailureAccount, id})
	}
	r, err := s.l.Take(ctx, charge, check)
	if err != nil {
		return fmt.Errorf("check sign-in limits: %w", err)
	}
	return r.Err()
}

// Guard checks, charging nothing, that addr has wrong-credential budget
// left: for credentials presented outside a sign-in (an admin token sent
// as a bearer on any admin route), which must not be a way around the
// sign-in's failure budget. A wrong one is then charged with Failed.
func (s *Signin) Guard(ctx context.Context, addr netip.Addr) error {
	r, err := s.l.Check(ctx, BucketSigninFailureAddress, AddressKey(addr))
	if err != nil {
		return fmt.Errorf("check sign-in limits: %w", err)
	}
	return r.Err()
}

// Failed charges a wrong credential to addr and account. Charges beyond
// a spent budget are dropped: the next Attempt is refused regardless.
func (s *Signin) Failed(ctx context.Context, addr netip.Addr, account string) error {
	keys := []Key{{BucketSigninFailureAddress, AddressKey(addr)}}
	if account != "" {
		keys = append(keys, Key{BucketSigninFailureAccount, accountKey(account)})
	}
	if _, err := s.l.Charge(ctx, keys...); err != nil {
		return fmt.Errorf("charge sign-in failure: %w", err)
	}
	return nil
}

// AddressKey is the subject a client address is counted as: an IPv4
// address itself, an IPv6 address by its /64 (one site or subscriber is
// given a whole /64, so single IPv6 addresses are free to an attacker).
func AddressKey(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	switch {
	case !a.IsValid():
		return "unknown"
	case a.Is4():
		return a.String()
	}
	return netip.PrefixFrom(a, 64).Masked().String()
}

// accountKey keeps account names (emails) out of Redis key names.
func accountKey(account string) string {
	sum := sha256.Sum256([]byte(account))
	return hex.EncodeToString(sum[:16])
}
