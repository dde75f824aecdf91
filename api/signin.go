package api

import (
	"errors"
	"log/slog"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/ratelimit"
)

// adminAccount is the account the admin login is counted under: none.
// Admins share one token, so a per-account budget would be one for the
// whole deployment, and anyone anywhere could spend it and keep every
// admin out; the admin login is limited per address only.
const adminAccount = ""

// signin applies the sign-in limits to a login request. A login handler
// calls Attempt before it looks at the credentials, and Failed when they
// turn out wrong. The account is what the sign-in names: today the
// normalized email; adminAccount for the admin login.
type signin struct {
	limits *ratelimit.Signin
	log    *slog.Logger
}

// Attempt admits the sign-in or returns the refusal, which errors.go
// answers 429 with Retry-After. Call it the same way whether or not the
// account exists, so that the answer does not tell.
func (g signin) Attempt(c *fiber.Ctx, account string) error {
	err := g.limits.Attempt(c.UserContext(), clientAddr(c), account)
	var lim *ratelimit.Limited
	if errors.As(err, &lim) {
		g.log.Debug("sign-in refused", "client", clientAddr(c), "bucket", lim.Key.Bucket, "retry_after", lim.RetryAfter)
	}
	return err
}

// Failed charges wrong credentials to the client address and the account.
// The answer does not depend on it: a failure that cannot be recorded is
// logged.
func (g signin) Failed(c *fiber.Ctx, account string) {
	if err := g.limits.Failed(c.UserContext(), clientAddr(c), account); err != nil {
		g.log.Error("sign-in failure not counted", "client", clientAddr(c), "err", err)
	}
}

// Guard refuses a request carrying credentials from an address whose
// wrong-credential budget is spent, the way a sign-in would be refused.
func (g signin) Guard(c *fiber.Ctx) error {
	return g.limits.Guard(c.UserContext(), clientAddr(c))
}
