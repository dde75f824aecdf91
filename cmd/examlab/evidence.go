package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/evidence"
)

// exitCode ends the command with a status of its own (verify: 1 for a
// folder that fails, 2 for a usage error) after it printed why.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// verify checks a session folder against its seal.
func verify(_ context.Context, args []string) error {
	if code := runVerify(args, os.Stdout, os.Stderr, os.Getenv); code != 0 {
		return exitCode(code)
	}
	return nil
}

// runVerify is `examlab verify`: it prints every problem on a line of its
// own and returns 0 when the folder is exactly as sealed, 1 when it is not
// (or cannot be read), 2 for a usage error.
func runVerify(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyFile := fs.String("key", "", "public key to verify with (PEM, from `examlab signing-key` or GET /api/admin/signing-key); default: the deployment's key")
	stateDir := fs.String("state-dir", "", "state directory holding the deployment's signing.key (default: the folder's ../.., then EXAMLAB_STATE_DIR)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: examlab verify [-key FILE] {state}/sessions/{id}")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	dir := fs.Arg(0)
	if info, err := os.Stat(dir); err != nil || !info.IsDir() {
		fmt.Fprintf(stderr, "examlab verify: %s is not a session folder\n", dir)
		return 2
	}
	pub, from, err := verifyKey(*keyFile, *stateDir, dir, getenv)
	if err != nil {
		fmt.Fprintln(stderr, "examlab verify:", err)
		return 2
	}
	r, err := evidence.Verify(dir, pub)
	if err != nil {
		fmt.Fprintln(stderr, "examlab verify:", err)
		return 1
	}
	for _, p := range r.Problems {
		fmt.Fprintln(stdout, p)
	}
	if !r.OK() {
		fmt.Fprintf(stdout, "FAILED: %d problem(s) in %s (key %s from %s)\n", len(r.Problems), dir, evidence.Fingerprint(pub), from)
		return 1
	}
	m := r.Manifest
	fmt.Fprintf(stdout, "OK: %d files of session %s as sealed at %s, signed by %s\n", len(m.Files), m.SessionID, m.SealedAt.Format("2006-01-02 15:04:05Z07:00"), m.Key)
	return 0
}

// verifyKey finds the key to verify with: -key, else the signing key of
// the state directory the folder lies in ({state}/sessions/{id}), else
// that of the configured state directory.
func verifyKey(keyFile, stateDir, dir string, getenv func(string) string) (ed25519.PublicKey, string, error) {
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("read key: %w", err)
		}
		pub, err := evidence.ParsePublicKey(b)
		if err != nil {
			return nil, "", fmt.Errorf("key %s: %w", keyFile, err)
		}
		return pub, keyFile, nil
	}
	var candidates []string
	if stateDir != "" {
		candidates = append(candidates, stateDir)
	} else {
		abs, err := filepath.Abs(dir)
		if err == nil {
			candidates = append(candidates, filepath.Dir(filepath.Dir(abs)))
		}
		cfg := config.Default()
		if err := cfg.FromEnv(getenv); err != nil {
			return nil, "", err
		}
		candidates = append(candidates, cfg.StateDir)
	}
	for _, sd := range candidates {
		path := filepath.Join(sd, evidence.KeyFile)
		key, err := evidence.LoadKey(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		return key.Public().(ed25519.PublicKey), path, nil
	}
	return nil, "", fmt.Errorf("no %s found in %v: pass -key FILE (the deployment's public key)", evidence.KeyFile, candidates)
}

// signingKey prints the deployment's public key, with its fingerprint.
func signingKey(_ context.Context, args []string) error {
	cfg, _, err := loadConfig("signing-key", args, nil)
	if err != nil {
		return err
	}
	return printSigningKey(os.Stdout, cfg.StateDir)
}

func printSigningKey(w io.Writer, stateDir string) error {
	path := filepath.Join(stateDir, evidence.KeyFile)
	key, err := evidence.LoadKey(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no signing key in %s yet: examlab generates it when it first starts (serve, api or worker)", stateDir)
	}
	if err != nil {
		return err
	}
	pub := key.Public().(ed25519.PublicKey)
	// The comment line before the PEM block is skipped by every PEM
	// reader, so the output can be saved as the -key file as it is.
	fmt.Fprintf(w, "# examlab evidence signing key %s\n%s", evidence.Fingerprint(pub), evidence.PublicKeyPEM(pub))
	return nil
}
