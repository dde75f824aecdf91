package evidence_test

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/examlab/examlab/evidence"
)

// Processes starting together agree on one key: exactly one creates it,
// the others read the winner's.
func TestLoadOrCreateKeyAgreesOnOneKey(t *testing.T) {
	dir := t.TempDir()
	const n = 16
	var wg sync.WaitGroup
	keys := make([]ed25519.PrivateKey, n)
	created := make([]bool, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			keys[i], created[i], errs[i] = evidence.LoadOrCreateKey(dir)
		}()
	}
	close(start)
	wg.Wait()
	winners := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("starter %d: %v", i, errs[i])
		}
		if created[i] {
			winners++
		}
		if !keys[i].Equal(keys[0]) {
			t.Fatalf("starter %d has another key than starter 0", i)
		}
	}
	if winners != 1 {
		t.Fatalf("%d starters created a key, want exactly 1", winners)
	}
	info, err := os.Stat(filepath.Join(dir, evidence.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", perm)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("state dir holds %d entries, want only the key (no temp file left)", len(entries))
	}
	again, created2, err := evidence.LoadOrCreateKey(dir)
	if err != nil || created2 || !again.Equal(keys[0]) {
		t.Fatalf("second run: created=%v err=%v, same key=%v", created2, err, again.Equal(keys[0]))
	}
}

// The same, across processes: this test binary run twice at once.
func TestLoadOrCreateKeyAcrossProcesses(t *testing.T) {
	if dir := os.Getenv("EVIDENCE_KEY_CHILD"); dir != "" {
		k, _, err := evidence.LoadOrCreateKey(dir)
		if err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		os.Stdout.WriteString(evidence.Fingerprint(k.Public().(ed25519.PublicKey)))
		os.Exit(0)
	}
	dir := t.TempDir()
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLoadOrCreateKeyAcrossProcesses$")
		cmd.Env = append(os.Environ(), "EVIDENCE_KEY_CHILD="+dir)
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("process %d: %v: %s", i, err, outs[i])
		}
	}
	for i := range outs {
		if outs[i].String() != outs[0].String() || !strings.HasPrefix(outs[i].String(), "SHA256:") {
			t.Fatalf("process %d has key %q, process 0 %q", i, outs[i], outs[0])
		}
	}
}

func TestLoadKeyRefusesWhatItCannotTrust(t *testing.T) {
	dir := t.TempDir()
	key, _, err := evidence.LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, evidence.KeyFile))
	cases := []struct {
		name string
		body []byte
		mode os.FileMode
		want error
		says string
	}{
		{"world-readable", good, 0o644, evidence.ErrKeyPermissions, "chmod 600"},
		{"group-writable", good, 0o620, evidence.ErrKeyPermissions, "mode 0620"},
		{"not PEM", []byte("hello\n"), 0o600, evidence.ErrBadKey, "no PEM PRIVATE KEY block"},
		{"a public key", evidence.PublicKeyPEM(key.Public().(ed25519.PublicKey)), 0o600, evidence.ErrBadKey, "no PEM PRIVATE KEY block"},
		{"garbage in the block", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600, evidence.ErrBadKey, "signing key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sd := t.TempDir()
			p := filepath.Join(sd, evidence.KeyFile)
			if err := os.WriteFile(p, tc.body, tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode) // past the umask
			_, err := evidence.LoadKey(p)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), p) {
				t.Fatalf("LoadKey = %v, want %v naming the file and saying %q", err, tc.want, tc.says)
			}
			// Starting up with such a key fails too; it is never replaced.
			if _, _, err := evidence.LoadOrCreateKey(sd); !errors.Is(err, tc.want) {
				t.Fatalf("LoadOrCreateKey = %v, want %v", err, tc.want)
			}
			if b, _ := os.ReadFile(p); !bytes.Equal(b, tc.body) {
				t.Fatal("the refused key file was rewritten")
			}
		})
	}
}

func TestParsePublicKeyTakesEitherHalf(t *testing.T) {
	dir := t.TempDir()
	key, _, err := evidence.LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := key.Public().(ed25519.PublicKey)
	priv, _ := os.ReadFile(filepath.Join(dir, evidence.KeyFile))
	for name, b := range map[string][]byte{
		"public PEM":          evidence.PublicKeyPEM(want),
		"public with comment": append([]byte("# examlab evidence signing key\n"), evidence.PublicKeyPEM(want)...),
		"private PEM":         priv,
	} {
		got, err := evidence.ParsePublicKey(b)
		if err != nil || !got.Equal(want) {
			t.Errorf("%s: %v (equal %v)", name, err, got.Equal(want))
		}
	}
	if _, err := evidence.ParsePublicKey([]byte("ssh-ed25519 AAAA")); !errors.Is(err, evidence.ErrBadKey) {
		t.Errorf("a non-PEM key: %v", err)
	}
}
