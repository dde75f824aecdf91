// Command examlab runs the exam platform. Each role is a subcommand:
// `serve` runs them all in one process (one host), `api`, `worker` and
// `relay` run one each (a cluster scales them apart).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/platform"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{
	"serve":         {"run api, worker and relay in one process", roleCmd("serve", platform.All)},
	"api":           {"run the HTTP API (and the relay's routes on it)", roleCmd("api", platform.Roles{API: true, Relay: true})},
	"worker":        {"run lifecycle workers and the periodic sweeps", roleCmd("worker", platform.Roles{Worker: true})},
	"relay":         {"run the terminal relay alone", roleCmd("relay", platform.Roles{Relay: true})},
	"rebuild-index": {"rebuild the Redis index from the session files", rebuildIndex},
	"retention":     {"delete ended sessions older than -days (or list them with -dry-run)", retention},
	"jobspec":       {"print the Nomad job a session's lab runs as (JSON or HCL)", jobspec},
	"labnet":        {"create or remove a Nomad lab's network on this client (run by the lab's job)", labnet},
	"verify":        {"check a session folder against its signed manifest (exit 0 only when it matches)", verify},
	"signing-key":   {"print the public key that signs session folders, with its fingerprint", signingKey},
	"hold":          {"hold a terminal's shell inside a lab node (run by the relay through the node's tools)", hold},
	"version":       {"print the version", func(context.Context, []string) error { fmt.Println("examlab", version); return nil }},
}

var version = "dev"

func usage() {
	fmt.Fprintln(os.Stderr, "usage: examlab <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-15s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nrun 'examlab <command> -h' for its flags; every flag also reads an EXAMLAB_* variable (see README).")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		if os.Args[1] != "-h" && os.Args[1] != "--help" && os.Args[1] != "help" {
			fmt.Fprintf(os.Stderr, "examlab: unknown command %q\n\n", os.Args[1])
		}
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(int(code))
		}
		fmt.Fprintln(os.Stderr, "examlab:", err)
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// loadConfig applies defaults, then the environment, then flags, then
// validates: the same order in every role.
func loadConfig(name string, args []string, extra func(*flag.FlagSet)) (config.Config, *flag.FlagSet, error) {
	cfg := config.Default()
	if err := cfg.FromEnv(os.Getenv); err != nil {
		return cfg, nil, err
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return cfg, fs, err
	}
	return cfg, fs, cfg.Validate()
}

// selfBinary is this very binary, as it runs: the nodes' terminal holder
// is named and shipped from it, whatever an upgrade has since put at its
// path, so that a platform and a client of one build name the same tools.
const selfBinary = "/proc/self/exe"

func roleCmd(name string, roles platform.Roles) func(context.Context, []string) error {
	return func(ctx context.Context, args []string) error {
		cfg, _, err := loadConfig(name, args, nil)
		if err != nil {
			return err
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
		if roles.API || roles.Relay {
			tok, path, created, err := cfg.EnsureAdminToken()
			if err != nil {
				return err
			}
			switch {
			case created:
				// Shown once, on the terminal of whoever set the platform up;
				// afterwards only the file's location is logged.
				fmt.Fprintf(os.Stderr, "\nexamlab: generated an admin token (kept in %s):\n\n    %s\n\n", path, tok)
			case path != "":
				log.Info("admin token", "file", path)
			}
		}
		// This binary, when static, is also the nodes' terminal holder.
		p, err := platform.New(ctx, cfg, roles, platform.Options{Logger: log, Holder: selfBinary})
		if err != nil {
			return err
		}
		if err := p.Start(ctx); err != nil {
			return err
		}
		if a := p.APIAddr(); a != "" {
			log.Info("examlab api listening", "addr", a, "url", cfg.PublicURL, "admin", cfg.PublicURL+"/admin")
		}
		if a := p.RelayAddr(); a != "" {
			log.Info("examlab relay listening", "addr", a)
		}
		log.Info("examlab running", "role", name, "runtime", cfg.Runtime, "state", cfg.StateDir)
		werr := p.Wait(ctx)
		log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return errors.Join(werr, p.Shutdown(sctx))
	}
}

func rebuildIndex(ctx context.Context, args []string) error {
	cfg, _, err := loadConfig("rebuild-index", args, nil)
	if err != nil {
		return err
	}
	p, err := platform.New(ctx, cfg, platform.Roles{}, platform.Options{})
	if err != nil {
		return err
	}
	defer p.Shutdown(context.Background())
	n, err := p.Store.Rebuild(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("indexed %d sessions from %s\n", n, cfg.StateDir)
	return nil
}
