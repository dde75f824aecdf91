// Package config is examlab's configuration, loaded the same way in every
// role: defaults, then EXAMLAB_* environment variables, then flags, then
// Validate.
package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/examlab/examlab/ratelimit"
)

// Runtimes a session's lab can run on.
const (
	RuntimeDocker = "docker"
	RuntimeNomad  = "nomad"
)

// Snapshot modes: what an archive keeps of each node (lab.SnapshotMode).
const (
	SnapshotChanges = "changes"
	SnapshotFull    = "full"
)

// Config is every role's settings. Field comments name the environment
// variable and the default.
type Config struct {
	// StateDir holds sessions/ (shared storage in a cluster). EXAMLAB_STATE_DIR, ./var.
	StateDir string
	// Listen is the API's address. EXAMLAB_LISTEN, 127.0.0.1:8080.
	Listen string
	// RelayListen is the relay's address when it runs alone. EXAMLAB_RELAY_LISTEN, 127.0.0.1:8081.
	RelayListen string
	// OpsListen, when set, serves /healthz, /readyz and /metrics without
	// authentication for any role (a worker has no other HTTP server): keep
	// it on loopback or an operators' network. EXAMLAB_OPS_LISTEN, off.
	OpsListen string
	// PublicURL is how browsers reach the API; WebSocket Origins must match
	// it or AllowedOrigins. EXAMLAB_PUBLIC_URL, http://{Listen}.
	PublicURL string
	// AllowedOrigins are extra Origins accepted on WebSockets. EXAMLAB_ALLOWED_ORIGINS (comma separated).
	AllowedOrigins []string
	// CookieSecure marks the session cookie Secure (behind HTTPS). EXAMLAB_COOKIE_SECURE, false.
	CookieSecure bool
	// TrustedProxies are the peers (addresses and CIDRs) whose forwarding
	// header names the client; a request from anyone else is counted and
	// logged as its socket peer. EXAMLAB_TRUSTED_PROXIES (comma separated), none.
	TrustedProxies []string
	// ProxyHeader is the header the trusted proxies append the client to:
	// X-Forwarded-For or Forwarded (RFC 7239). EXAMLAB_PROXY_HEADER, X-Forwarded-For.
	ProxyHeader string
	// Signin are the sign-in budgets, each "limit/window", kept in Redis
	// and shared by every API process:
	// EXAMLAB_SIGNIN_PER_ADDRESS 600/1m, EXAMLAB_SIGNIN_PER_ACCOUNT 10/1m,
	// EXAMLAB_SIGNIN_FAILURES_PER_ADDRESS 100/10m, EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT 10/10m.
	Signin ratelimit.SigninBudgets

	// Redis is host:port or unix:///path. EXAMLAB_REDIS, 127.0.0.1:6379.
	Redis         string
	RedisPassword string // EXAMLAB_REDIS_PASSWORD
	RedisDB       int    // EXAMLAB_REDIS_DB, 0
	RedisPrefix   string // EXAMLAB_REDIS_PREFIX, examlab:

	// AdminToken authenticates admins. EXAMLAB_ADMIN_TOKEN; if empty, one is
	// generated on first run and kept in {StateDir}/admin-token.
	AdminToken string

	// ExamFile is the exam definition; empty means the shipped default. EXAMLAB_EXAM.
	ExamFile string
	// Practice keeps a sitting "practice" of the exam open with open
	// registration (anyone signs in with an email), for demos and trying
	// the platform out. EXAMLAB_PRACTICE, false; make run turns it on.
	Practice bool

	// Instance names this deployment on the labs it creates, so that the
	// orphan reaper of one deployment never touches another's labs on a
	// shared engine or cluster. EXAMLAB_INSTANCE, examlab.
	Instance string

	// Runtime is docker or nomad. EXAMLAB_RUNTIME, docker.
	Runtime string
	// DockerHost is the Engine API endpoint. DOCKER_HOST, unix:///var/run/docker.sock.
	DockerHost string
	// SubnetPool is where per-session networks get their subnets.
	// EXAMLAB_SUBNET_POOL, 10.213.0.0/16; EXAMLAB_SUBNET_PREFIX, 26.
	SubnetPool   string
	SubnetPrefix int
	// SwitchImage runs each segmented lab's switch on the one-host
	// runtime: an image with sh, sleep, ip, nsenter and flock.
	// EXAMLAB_SWITCH_IMAGE, examlab/node:bookworm.
	SwitchImage string
	// GraderBusybox is the static busybox every node gets read-only as
	// the grader's tools. EXAMLAB_GRADER_BUSYBOX, /bin/busybox (Debian's
	// busybox-static); "none" for none.
	GraderBusybox string
	// Snapshot is what an archive keeps of each node: "changes" (what
	// differs from its image) or "full" (its whole filesystem).
	// EXAMLAB_SNAPSHOT, changes.
	Snapshot string

	// Nomad settings beyond what the Nomad api package reads itself
	// (NOMAD_ADDR, NOMAD_TOKEN, NOMAD_REGION, NOMAD_NAMESPACE, NOMAD_CACERT…).
	NomadDatacenters []string // EXAMLAB_NOMAD_DATACENTERS, dc1
	// NomadLabnet is the examlab binary's path on Nomad clients, run by the
	// job's prestart task to create the session network. EXAMLAB_NOMAD_LABNET, /usr/local/bin/examlab.
	NomadLabnet string

	// MaxLabs is how many labs the deployment runs at once; starts beyond
	// it (or beyond a sitting's capacity) wait in the admission queue.
	// EXAMLAB_MAX_LABS, 0: on docker, as many as the subnet pool has
	// subnets (1024 for the default pool), past which a lab could not get
	// a network; on nomad, no limit (Nomad places labs, and each client
	// has the pool to itself). Set it to what the hosts hold.
	MaxLabs int

	// WorkerConcurrency is how many tasks one worker runs at once. EXAMLAB_WORKER_CONCURRENCY, 8.
	WorkerConcurrency int
	// GradingConcurrency is how many gradings one worker runs at once; the
	// others wait for a slot. EXAMLAB_GRADING_CONCURRENCY, 4.
	GradingConcurrency int
	// ProvisionTimeout bounds one provision attempt. EXAMLAB_PROVISION_TIMEOUT, 5m.
	ProvisionTimeout time.Duration
	// ReviewTTL is how long a review lab restored from a finished
	// session's archive lives. EXAMLAB_REVIEW_TTL, 2h.
	ReviewTTL time.Duration

	// MaxTerminals per session, MaxMessageBytes per WebSocket frame and
	// TerminalIdle before an idle terminal is closed.
	// EXAMLAB_MAX_TERMINALS 16, EXAMLAB_MAX_MESSAGE_BYTES 65536, EXAMLAB_TERMINAL_IDLE 30m.
	MaxTerminals    int
	MaxMessageBytes int
	TerminalIdle    time.Duration

	// MaxAnswerBytes bounds one answer. EXAMLAB_MAX_ANSWER_BYTES, 65536.
	MaxAnswerBytes int

	// RetentionDays deletes archived sessions older than this; 0 keeps
	// everything. EXAMLAB_RETENTION_DAYS, 0. EXAMLAB_RETENTION_DRY_RUN logs
	// what would go without deleting.
	RetentionDays   int
	RetentionDryRun bool

	// Sweep intervals. EXAMLAB_EXPIRE_EVERY 15s, EXAMLAB_REAP_EVERY 1m,
	// EXAMLAB_ADMIT_EVERY 10s (the admission queue's repair and pass; a
	// lab ending admits the next at once, this only catches what a
	// killed process left).
	ExpireEvery time.Duration
	ReapEvery   time.Duration
	AdmitEvery  time.Duration
}

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		StateDir:           "./var",
		Listen:             "127.0.0.1:8080",
		RelayListen:        "127.0.0.1:8081",
		ProxyHeader:        ratelimit.HeaderXForwardedFor,
		Signin:             ratelimit.DefaultSigninBudgets(),
		Redis:              "127.0.0.1:6379",
		RedisPrefix:        "examlab:",
		Instance:           "examlab",
		Runtime:            RuntimeDocker,
		DockerHost:         "unix:///var/run/docker.sock",
		SubnetPool:         "10.213.0.0/16",
		SubnetPrefix:       26,
		SwitchImage:        "examlab/node:bookworm",
		GraderBusybox:      "/bin/busybox",
		Snapshot:           SnapshotChanges,
		NomadDatacenters:   []string{"dc1"},
		NomadLabnet:        "/usr/local/bin/examlab",
		WorkerConcurrency:  8,
		GradingConcurrency: 4,
		ProvisionTimeout:   5 * time.Minute,
		ReviewTTL:          2 * time.Hour,
		MaxTerminals:       16,
		MaxMessageBytes:    64 << 10,
		TerminalIdle:       30 * time.Minute,
		MaxAnswerBytes:     64 << 10,
		ExpireEvery:        15 * time.Second,
		ReapEvery:          time.Minute,
		AdmitEvery:         10 * time.Second,
	}
}

// FromEnv overlays the variables getenv reports (os.Getenv in main).
func (c *Config) FromEnv(getenv func(string) string) error {
	str := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	var errs []error
	num := func(name string, dst *int) {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a number", name, v))
				return
			}
			*dst = n
		}
	}
	dur := func(name string, dst *time.Duration) {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a duration", name, v))
				return
			}
			*dst = d
		}
	}
	boolean := func(name string, dst *bool) {
		if v := getenv(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a boolean", name, v))
				return
			}
			*dst = b
		}
	}
	budget := func(name string, dst *ratelimit.Budget) {
		if v := getenv(name); v != "" {
			b, err := ratelimit.ParseBudget(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				return
			}
			*dst = b
		}
	}
	list := func(name string, dst *[]string) {
		if v := getenv(name); v != "" {
			*dst = splitList(v)
		}
	}
	str("EXAMLAB_STATE_DIR", &c.StateDir)
	str("EXAMLAB_LISTEN", &c.Listen)
	str("EXAMLAB_RELAY_LISTEN", &c.RelayListen)
	str("EXAMLAB_OPS_LISTEN", &c.OpsListen)
	str("EXAMLAB_PUBLIC_URL", &c.PublicURL)
	list("EXAMLAB_ALLOWED_ORIGINS", &c.AllowedOrigins)
	boolean("EXAMLAB_COOKIE_SECURE", &c.CookieSecure)
	list("EXAMLAB_TRUSTED_PROXIES", &c.TrustedProxies)
	str("EXAMLAB_PROXY_HEADER", &c.ProxyHeader)
	budget("EXAMLAB_SIGNIN_PER_ADDRESS", &c.Signin.PerAddress)
	budget("EXAMLAB_SIGNIN_PER_ACCOUNT", &c.Signin.PerAccount)
	budget("EXAMLAB_SIGNIN_FAILURES_PER_ADDRESS", &c.Signin.FailuresPerAddress)
	budget("EXAMLAB_SIGNIN_FAILURES_PER_ACCOUNT", &c.Signin.FailuresPerAccount)
	str("EXAMLAB_REDIS", &c.Redis)
	str("EXAMLAB_REDIS_PASSWORD", &c.RedisPassword)
	num("EXAMLAB_REDIS_DB", &c.RedisDB)
	str("EXAMLAB_REDIS_PREFIX", &c.RedisPrefix)
	str("EXAMLAB_ADMIN_TOKEN", &c.AdminToken)
	str("EXAMLAB_EXAM", &c.ExamFile)
	boolean("EXAMLAB_PRACTICE", &c.Practice)
	str("EXAMLAB_INSTANCE", &c.Instance)
	str("EXAMLAB_RUNTIME", &c.Runtime)
	str("DOCKER_HOST", &c.DockerHost)
	str("EXAMLAB_SUBNET_POOL", &c.SubnetPool)
	num("EXAMLAB_SUBNET_PREFIX", &c.SubnetPrefix)
	str("EXAMLAB_SWITCH_IMAGE", &c.SwitchImage)
	str("EXAMLAB_GRADER_BUSYBOX", &c.GraderBusybox)
	str("EXAMLAB_SNAPSHOT", &c.Snapshot)
	list("EXAMLAB_NOMAD_DATACENTERS", &c.NomadDatacenters)
	str("EXAMLAB_NOMAD_LABNET", &c.NomadLabnet)
	num("EXAMLAB_MAX_LABS", &c.MaxLabs)
	num("EXAMLAB_WORKER_CONCURRENCY", &c.WorkerConcurrency)
	num("EXAMLAB_GRADING_CONCURRENCY", &c.GradingConcurrency)
	dur("EXAMLAB_PROVISION_TIMEOUT", &c.ProvisionTimeout)
	dur("EXAMLAB_REVIEW_TTL", &c.ReviewTTL)
	num("EXAMLAB_MAX_TERMINALS", &c.MaxTerminals)
	num("EXAMLAB_MAX_MESSAGE_BYTES", &c.MaxMessageBytes)
	dur("EXAMLAB_TERMINAL_IDLE", &c.TerminalIdle)
	num("EXAMLAB_MAX_ANSWER_BYTES", &c.MaxAnswerBytes)
	num("EXAMLAB_RETENTION_DAYS", &c.RetentionDays)
	boolean("EXAMLAB_RETENTION_DRY_RUN", &c.RetentionDryRun)
	dur("EXAMLAB_EXPIRE_EVERY", &c.ExpireEvery)
	dur("EXAMLAB_REAP_EVERY", &c.ReapEvery)
	dur("EXAMLAB_ADMIT_EVERY", &c.AdmitEvery)
	return errors.Join(errs...)
}

// RegisterFlags binds the most used settings to fs; flags win over the
// environment because they are parsed after FromEnv.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "state directory (shared storage in a cluster)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "API listen address")
	fs.StringVar(&c.RelayListen, "relay-listen", c.RelayListen, "relay listen address when run alone")
	fs.StringVar(&c.OpsListen, "ops-listen", c.OpsListen, "serve unauthenticated /healthz, /readyz and /metrics here (e.g. 127.0.0.1:9090; default off)")
	fs.StringVar(&c.PublicURL, "public-url", c.PublicURL, "URL browsers use to reach the API")
	fs.StringVar(&c.Redis, "redis", c.Redis, "Redis address: host:port or unix:///path")
	fs.StringVar(&c.ExamFile, "exam", c.ExamFile, "exam definition file (default: the shipped exam)")
	fs.BoolVar(&c.Practice, "practice", c.Practice, "keep a sitting \"practice\" open where anyone signs in with an email (demos)")
	fs.StringVar(&c.Runtime, "runtime", c.Runtime, "lab runtime: docker or nomad")
	fs.StringVar(&c.SubnetPool, "subnet-pool", c.SubnetPool, "pool for per-session subnets")
	fs.IntVar(&c.SubnetPrefix, "subnet-prefix", c.SubnetPrefix, "prefix length of each session subnet")
	fs.StringVar(&c.SwitchImage, "switch-image", c.SwitchImage, "image of segmented labs' switches (sh, sleep, ip, nsenter)")
	fs.StringVar(&c.GraderBusybox, "grader-busybox", c.GraderBusybox, "static busybox every node gets read-only for the grader's checks (none: no tools)")
	fs.StringVar(&c.Snapshot, "snapshot", c.Snapshot, "what an archive keeps of each node: changes (what differs from its image) or full")
	fs.IntVar(&c.WorkerConcurrency, "concurrency", c.WorkerConcurrency, "tasks one worker runs at once")
	fs.IntVar(&c.MaxLabs, "max-labs", c.MaxLabs, "labs the deployment runs at once; more starts wait in the queue (0: as many as the subnet pool holds)")
	fs.IntVar(&c.RetentionDays, "retention-days", c.RetentionDays, "delete archived sessions older than this (0: keep)")
	fs.BoolVar(&c.RetentionDryRun, "retention-dry-run", c.RetentionDryRun, "report what retention would delete, delete nothing")
}

// Validate checks every setting and fills the derived ones.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.StateDir == "" {
		bad("state dir: required")
	}
	for name, addr := range map[string]string{"listen": c.Listen, "relay listen": c.RelayListen} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("%s: %q: %v", name, addr, err)
		}
	}
	if c.OpsListen != "" {
		if _, _, err := net.SplitHostPort(c.OpsListen); err != nil {
			bad("ops listen: %q: %v", c.OpsListen, err)
		}
	}
	if c.PublicURL == "" {
		host, port, _ := net.SplitHostPort(c.Listen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "localhost"
		}
		c.PublicURL = "http://" + net.JoinHostPort(host, port)
	}
	if !strings.HasPrefix(c.PublicURL, "http://") && !strings.HasPrefix(c.PublicURL, "https://") {
		bad("public url: %q must start with http:// or https://", c.PublicURL)
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if p, err := ratelimit.NewProxies(nil, c.ProxyHeader); err != nil {
		bad("proxy header: %q must be %s or %s", c.ProxyHeader, ratelimit.HeaderXForwardedFor, ratelimit.HeaderForwarded)
	} else {
		c.ProxyHeader = p.Header()
	}
	if _, err := ratelimit.NewProxies(c.TrustedProxies, ""); err != nil {
		bad("trusted proxies: %v", err)
	}
	for _, b := range []struct {
		name string
		b    ratelimit.Budget
	}{
		{"signin per address", c.Signin.PerAddress},
		{"signin per account", c.Signin.PerAccount},
		{"signin failures per address", c.Signin.FailuresPerAddress},
		{"signin failures per account", c.Signin.FailuresPerAccount},
	} {
		if b.b.Limit < 1 || b.b.Limit > maxBudgetLimit || b.b.Window < time.Second || b.b.Window > 24*time.Hour {
			bad("%s: %q must be 1..%d per 1s..24h", b.name, b.b.String(), maxBudgetLimit)
		}
	}
	if c.Redis == "" {
		bad("redis: required")
	}
	if !instancePattern.MatchString(c.Instance) {
		bad("instance: %q must be 1-32 of a-z, 0-9 and -", c.Instance)
	}
	switch c.Runtime {
	case RuntimeDocker, RuntimeNomad:
	default:
		bad("runtime: %q must be %s or %s", c.Runtime, RuntimeDocker, RuntimeNomad)
	}
	switch c.Snapshot {
	case SnapshotChanges, SnapshotFull:
	default:
		bad("snapshot: %q must be %s or %s", c.Snapshot, SnapshotChanges, SnapshotFull)
	}
	if p, err := netip.ParsePrefix(c.SubnetPool); err != nil {
		bad("subnet pool: %q: %v", c.SubnetPool, err)
	} else if c.SubnetPrefix < p.Bits() || c.SubnetPrefix > 28 {
		bad("subnet prefix: /%d must be between the pool's /%d and /28", c.SubnetPrefix, p.Bits())
	} else if c.MaxLabs < 0 {
		bad("max labs: %d must not be negative", c.MaxLabs)
	} else if c.Runtime == RuntimeDocker {
		// On one host each lab takes a subnet of the pool: more labs than
		// subnets would fail to provision rather than wait. (On Nomad each
		// client has the pool to itself.)
		subnets := 1 << min(c.SubnetPrefix-p.Bits(), 20)
		if c.MaxLabs == 0 {
			c.MaxLabs = subnets
		} else if c.MaxLabs > subnets {
			bad("max labs: %d is more than the %d subnets of the pool %s in /%d blocks", c.MaxLabs, subnets, c.SubnetPool, c.SubnetPrefix)
		}
	}
	if c.GradingConcurrency < 1 || c.GradingConcurrency > 64 {
		bad("grading concurrency: %d must be 1..64", c.GradingConcurrency)
	}
	if c.WorkerConcurrency < 1 || c.WorkerConcurrency > 256 {
		bad("worker concurrency: %d must be 1..256", c.WorkerConcurrency)
	}
	if c.MaxTerminals < 1 {
		bad("max terminals: %d must be at least 1", c.MaxTerminals)
	}
	if c.MaxMessageBytes < 1024 {
		bad("max message bytes: %d must be at least 1024", c.MaxMessageBytes)
	}
	if c.MaxAnswerBytes < 256 || c.MaxAnswerBytes > 8<<20 {
		bad("max answer bytes: %d must be 256..8388608", c.MaxAnswerBytes)
	}
	if c.RetentionDays < 0 {
		bad("retention days: %d must not be negative", c.RetentionDays)
	}
	if c.ReviewTTL < time.Minute || c.ReviewTTL > 7*24*time.Hour {
		bad("review TTL: %s must be between 1m and 168h", c.ReviewTTL)
	}
	if c.ProvisionTimeout < 10*time.Second {
		bad("provision timeout: %s is too short", c.ProvisionTimeout)
	}
	if c.ExpireEvery < time.Second || c.ReapEvery < time.Second || c.AdmitEvery < time.Second {
		bad("sweep intervals must be at least 1s")
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		bad("admin token: must be at least 16 characters")
	}
	return errors.Join(errs...)
}

// Origins are the Origins a WebSocket may come from.
func (c *Config) Origins() []string {
	out := []string{c.PublicURL}
	out = append(out, c.AllowedOrigins...)
	return out
}

// EnsureAdminToken returns the configured admin token, or the one kept in
// the state directory, creating it on first run. created reports a new one.
func (c *Config) EnsureAdminToken() (token string, path string, created bool, err error) {
	path = filepath.Join(c.StateDir, "admin-token")
	if c.AdminToken != "" {
		return c.AdminToken, "", false, nil
	}
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		c.AdminToken = strings.TrimSpace(string(b))
		return c.AdminToken, path, false, nil
	}
	if err := os.MkdirAll(c.StateDir, 0o750); err != nil {
		return "", path, false, fmt.Errorf("create state dir: %w", err)
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", path, false, err
	}
	tok := hex.EncodeToString(b)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another role created it first; use theirs.
		c.AdminToken = ""
		return c.EnsureAdminToken()
	}
	if err != nil {
		return "", path, false, fmt.Errorf("write admin token: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(tok + "\n"); err != nil {
		return "", path, false, fmt.Errorf("write admin token: %w", err)
	}
	if err := f.Sync(); err != nil {
		return "", path, false, err
	}
	c.AdminToken = tok
	return tok, path, true, nil
}

// maxBudgetLimit bounds a sign-in budget's limit: far above any hall, so
// that a slip of extra zeros is refused rather than turning a limit off.
const maxBudgetLimit = 100_000

var instancePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
