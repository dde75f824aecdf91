package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/evidence"
)

// sealedState is a state directory with the deployment's key and one
// sealed session folder.
func sealedState(t *testing.T) (state, folder string) {
	t.Helper()
	state = t.TempDir()
	key, _, err := evidence.LoadOrCreateKey(state)
	if err != nil {
		t.Fatal(err)
	}
	folder = filepath.Join(state, "sessions", "abcdefgh1234")
	for name, body := range map[string]string{
		"metadata.json":   `{"id":"abcdefgh1234"}`,
		"answers/t1.json": `{"task_id":"t1","value":"ip route"}`,
		"terminal-logs/tokyo-20260301T100000.cast": "{\"version\":2}\n",
		"docker-snapshots/exam-abcdefgh-tokyo.tar": strings.Repeat("x", 5000),
		"audit.jsonl": "{}\n",
	} {
		p := filepath.Join(folder, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o750)
		if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := evidence.Seal(folder, key, evidence.Info{SessionID: "abcdefgh1234", ExamID: "exam1", SealedAt: time.Now()}, nil); err != nil {
		t.Fatal(err)
	}
	return state, folder
}

func runV(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runVerify(args, &out, &errb, func(k string) string { return env[k] })
	return code, out.String(), errb.String()
}

func TestVerifyCommand(t *testing.T) {
	state, folder := sealedState(t)
	var pemOut bytes.Buffer
	if err := printSigningKey(&pemOut, state); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pemOut.String(), "# examlab evidence signing key SHA256:") || !strings.Contains(pemOut.String(), "BEGIN PUBLIC KEY") {
		t.Fatalf("signing-key printed %q", pemOut.String())
	}
	pubFile := filepath.Join(t.TempDir(), "examlab.pub")
	os.WriteFile(pubFile, pemOut.Bytes(), 0o644)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	otherFile := filepath.Join(t.TempDir(), "other.pub")
	os.WriteFile(otherFile, evidence.PublicKeyPEM(otherKey.Public().(ed25519.PublicKey)), 0o644)

	// A copy taken elsewhere, away from any state directory.
	copyDir := filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(copyDir, os.DirFS(folder)); err != nil {
		t.Fatal(err)
	}

	code, out, _ := runV(t, nil, folder)
	if code != 0 || !strings.HasPrefix(out, "OK: 5 files of session abcdefgh1234") {
		t.Fatalf("verify of a fresh seal with the deployment's key: %d %q", code, out)
	}
	if code, out, _ := runV(t, nil, "-key", pubFile, copyDir); code != 0 {
		t.Fatalf("verify of a copy with -key: %d %q", code, out)
	}
	code, out, _ = runV(t, nil, "-key", otherFile, copyDir)
	if code != 1 || !strings.HasPrefix(out, "bad-signature evidence.sig: does not match") {
		t.Fatalf("verify with another key: %d %q", code, out)
	}
	if code, _, errs := runV(t, map[string]string{"EXAMLAB_STATE_DIR": t.TempDir()}, copyDir); code != 2 || !strings.Contains(errs, "pass -key FILE") {
		t.Fatalf("verify of a copy without a key to find: %d %q", code, errs)
	}

	// Tamper with the copy: one line per problem, each naming its file.
	b, _ := os.ReadFile(filepath.Join(copyDir, "answers", "t1.json"))
	b[3] ^= 0x01
	os.WriteFile(filepath.Join(copyDir, "answers", "t1.json"), b, 0o640)
	os.Remove(filepath.Join(copyDir, "audit.jsonl"))
	os.WriteFile(filepath.Join(copyDir, "notes.txt"), []byte("added"), 0o640)
	code, out, _ = runV(t, nil, "-key", pubFile, copyDir)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"changed answers/t1.json: ", "missing audit.jsonl: ", "extra notes.txt: ", "FAILED: 3 problem(s)"}
	if code != 1 || len(lines) != len(want) {
		t.Fatalf("verify of a tampered copy: %d %q", code, out)
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("line %d %q, want %q…", i, lines[i], want[i])
		}
	}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no folder", nil},
		{"two folders", []string{folder, folder}},
		{"a folder that is not there", []string{filepath.Join(state, "sessions", "nosuchsession")}},
		{"a key file that is not there", []string{"-key", filepath.Join(state, "nope.pub"), folder}},
		{"a key file that is no key", []string{"-key", filepath.Join(folder, "audit.jsonl"), folder}},
		{"an unknown flag", []string{"-quick", folder}},
	} {
		if code, out, _ := runV(t, nil, tc.args...); code != 2 {
			t.Errorf("%s: exit %d (%q), want 2", tc.name, code, out)
		}
	}
}

// The binary's exit status is the command's: run main in a child process.
func TestVerifyExitStatus(t *testing.T) {
	if os.Getenv("EXAMLAB_TEST_MAIN") == "1" {
		os.Args = append([]string{"examlab"}, strings.Fields(os.Getenv("EXAMLAB_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	state, folder := sealedState(t)
	run := func(args ...string) int {
		cmd := exec.Command(os.Args[0], "-test.run=^TestVerifyExitStatus$")
		cmd.Env = append(os.Environ(), "EXAMLAB_TEST_MAIN=1", "EXAMLAB_TEST_ARGS="+strings.Join(args, " "), "EXAMLAB_STATE_DIR="+state)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("run %v: %v: %s", args, err, out)
		}
		return 0
	}
	if got := run("verify", folder); got != 0 {
		t.Fatalf("exit %d for a whole folder, want 0", got)
	}
	if got := run("signing-key"); got != 0 {
		t.Fatalf("signing-key: exit %d", got)
	}
	if got := run("verify"); got != 2 {
		t.Fatalf("exit %d for a usage error, want 2", got)
	}
	os.WriteFile(filepath.Join(folder, "extra.txt"), []byte("x"), 0o640)
	if got := run("verify", folder); got != 1 {
		t.Fatalf("exit %d for a changed folder, want 1", got)
	}
}
