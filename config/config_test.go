package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestLoadOrder applies defaults, then the environment, then flags: a flag
// beats the environment, which beats the default.
func TestLoadOrder(t *testing.T) {
	c := Default()
	err := c.FromEnv(envOf(map[string]string{
		"EXAMLAB_LISTEN":             "127.0.0.1:9000",
		"EXAMLAB_REDIS":              "unix:///run/redis.sock",
		"EXAMLAB_WORKER_CONCURRENCY": "3",
		"EXAMLAB_TERMINAL_IDLE":      "5m",
		"EXAMLAB_COOKIE_SECURE":      "true",
		"EXAMLAB_ALLOWED_ORIGINS":    "https://a.example, https://b.example",
	}))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"-concurrency", "5"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9000" || c.Redis != "unix:///run/redis.sock" || c.TerminalIdle != 5*time.Minute || !c.CookieSecure {
		t.Errorf("environment not applied: %+v", c)
	}
	if c.WorkerConcurrency != 5 {
		t.Errorf("concurrency = %d, want the flag's 5", c.WorkerConcurrency)
	}
	if c.PublicURL != "http://127.0.0.1:9000" {
		t.Errorf("public url = %q, want it derived from listen", c.PublicURL)
	}
	if got := strings.Join(c.Origins(), " "); got != "http://127.0.0.1:9000 https://a.example https://b.example" {
		t.Errorf("origins = %q", got)
	}
	if c.Runtime != RuntimeDocker || c.SubnetPool != "10.213.0.0/16" || c.Instance != "examlab" || c.Snapshot != SnapshotChanges {
		t.Errorf("defaults lost: %+v", c)
	}
}

func TestInvalidSettingsAreNamed(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"not a number", map[string]string{"EXAMLAB_REDIS_DB": "one"}, "EXAMLAB_REDIS_DB"},
		{"not a duration", map[string]string{"EXAMLAB_TERMINAL_IDLE": "soon"}, "EXAMLAB_TERMINAL_IDLE"},
		{"not a boolean", map[string]string{"EXAMLAB_COOKIE_SECURE": "maybe"}, "EXAMLAB_COOKIE_SECURE"},
		{"unknown runtime", map[string]string{"EXAMLAB_RUNTIME": "kubernetes"}, "runtime"},
		{"unknown snapshot mode", map[string]string{"EXAMLAB_SNAPSHOT": "diff"}, "snapshot"},
		{"bad listen", map[string]string{"EXAMLAB_LISTEN": "8080"}, "listen"},
		{"bad pool", map[string]string{"EXAMLAB_SUBNET_POOL": "10.0.0.0/33"}, "subnet pool"},
		{"prefix wider than pool", map[string]string{"EXAMLAB_SUBNET_PREFIX": "8"}, "subnet prefix"},
		{"short admin token", map[string]string{"EXAMLAB_ADMIN_TOKEN": "short"}, "admin token"},
		{"bad instance", map[string]string{"EXAMLAB_INSTANCE": "Prod Lab"}, "instance"},
		{"negative retention", map[string]string{"EXAMLAB_RETENTION_DAYS": "-1"}, "retention days"},
		{"negative lab limit", map[string]string{"EXAMLAB_MAX_LABS": "-1"}, "max labs"},
		{"more labs than subnets", map[string]string{"EXAMLAB_MAX_LABS": "65", "EXAMLAB_SUBNET_POOL": "10.9.0.0/20"}, "max labs"},
		{"lab limit not a number", map[string]string{"EXAMLAB_MAX_LABS": "many"}, "EXAMLAB_MAX_LABS"},
		{"bad public url", map[string]string{"EXAMLAB_PUBLIC_URL": "ftp://x"}, "public url"},
		{"budget without window", map[string]string{"EXAMLAB_SIGNIN_PER_ADDRESS": "600"}, "EXAMLAB_SIGNIN_PER_ADDRESS"},
		{"budget not a number", map[string]string{"EXAMLAB_SIGNIN_PER_ACCOUNT": "ten/1m"}, "EXAMLAB_SIGNIN_PER_ACCOUNT"},
		{"budget bad window", map[string]string{"EXAMLAB_SIGNIN_FAILURES_PER_ADDRESS": "30/soon"}, "EXAMLAB_SIGNIN_FAILURES_PER_ADDRESS"},
		{"budget zero", map[string]string{"EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT": "0/10m"}, "EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT"},
		{"budget window too short", map[string]string{"EXAMLAB_SIGNIN_PER_ADDRESS": "600/100ms"}, "signin per address"},
		{"budget window too long", map[string]string{"EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT": "10/30d"}, "EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT"},
		{"budget window over a day", map[string]string{"EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT": "10/25h"}, "signin failures per account"},
		{"budget limit too high", map[string]string{"EXAMLAB_SIGNIN_PER_ACCOUNT": "1000000/1m"}, "signin per account"},
		{"trusted proxy hostname", map[string]string{"EXAMLAB_TRUSTED_PROXIES": "10.0.0.0/8, proxy.internal"}, "trusted proxies"},
		{"trusted proxy bad CIDR", map[string]string{"EXAMLAB_TRUSTED_PROXIES": "10.0.0.0/40"}, "trusted proxies"},
		{"unknown proxy header", map[string]string{"EXAMLAB_PROXY_HEADER": "X-Real-IP"}, "proxy header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			err := c.FromEnv(envOf(tc.env))
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestAdminTokenIsGeneratedOnceAndKeptPrivate(t *testing.T) {
	c := Default()
	c.StateDir = t.TempDir()
	tok, path, created, err := c.EnsureAdminToken()
	if err != nil || !created || len(tok) < 32 {
		t.Fatalf("first run: %q %v %v", tok, created, err)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 || filepath.Dir(path) != c.StateDir {
		t.Fatalf("token file %s: %v %v", path, info.Mode(), err)
	}
	again := Default()
	again.StateDir = c.StateDir
	tok2, _, created2, err := again.EnsureAdminToken()
	if err != nil || created2 || tok2 != tok {
		t.Fatalf("second run: %q created=%v %v; want the kept token", tok2, created2, err)
	}
	set := Default()
	set.StateDir = t.TempDir()
	set.AdminToken = "configured-token-0123456789"
	if tok3, p, created3, _ := set.EnsureAdminToken(); tok3 != set.AdminToken || p != "" || created3 {
		t.Fatalf("configured token not used: %q %q %v", tok3, p, created3)
	}
}

// TestFrontDoorSettings reads the trusted proxies, the proxy header and
// the sign-in budgets, and keeps the defaults for what is not set.
func TestFrontDoorSettings(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.TrustedProxies) != 0 || c.ProxyHeader != "X-Forwarded-For" {
		t.Errorf("default proxies: %q via %q, want none via X-Forwarded-For", c.TrustedProxies, c.ProxyHeader)
	}
	want := map[string]string{"per address": "600/1m", "per account": "10/1m", "failures per address": "100/10m", "failures per account": "10/10m"}
	got := map[string]string{"per address": c.Signin.PerAddress.String(), "per account": c.Signin.PerAccount.String(),
		"failures per address": c.Signin.FailuresPerAddress.String(), "failures per account": c.Signin.FailuresPerAccount.String()}
	for k := range want {
		if got[k] != want[k] {
			t.Errorf("default sign-in %s = %s, want %s", k, got[k], want[k])
		}
	}

	c = Default()
	err := c.FromEnv(envOf(map[string]string{
		"EXAMLAB_TRUSTED_PROXIES":             "10.0.0.0/8, 192.0.2.7 ,2001:db8::/32",
		"EXAMLAB_PROXY_HEADER":                "forwarded",
		"EXAMLAB_SIGNIN_PER_ADDRESS":          "1200/2m",
		"EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT": "5/h",
	}))
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.TrustedProxies, " ") != "10.0.0.0/8 192.0.2.7 2001:db8::/32" || c.ProxyHeader != "Forwarded" {
		t.Errorf("proxies: %q via %q", c.TrustedProxies, c.ProxyHeader)
	}
	if c.Signin.PerAddress.String() != "1200/2m" || c.Signin.FailuresPerAccount.String() != "5/1h" || c.Signin.PerAccount.String() != "10/1m" {
		t.Errorf("budgets: %+v", c.Signin)
	}
}

// TestMaxLabsDefault: unset, the lab limit is what the subnet pool holds
// on one host, and none on Nomad; a set limit is kept.
func TestMaxLabsDefault(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want int
	}{
		{"default pool", nil, 1024},
		{"smaller pool", map[string]string{"EXAMLAB_SUBNET_POOL": "10.9.0.0/20"}, 64},
		{"set", map[string]string{"EXAMLAB_MAX_LABS": "8"}, 8},
		{"nomad", map[string]string{"EXAMLAB_RUNTIME": "nomad"}, 0},
		{"nomad, set", map[string]string{"EXAMLAB_RUNTIME": "nomad", "EXAMLAB_MAX_LABS": "5000"}, 5000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			if err := c.FromEnv(envOf(tc.env)); err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			if c.MaxLabs != tc.want {
				t.Fatalf("max labs = %d, want %d", c.MaxLabs, tc.want)
			}
		})
	}
}
