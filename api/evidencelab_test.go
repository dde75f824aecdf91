package api_test

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/testlab"
)

// A real lab (Docker) run to the end: its folder verifies as sealed, and a
// copy with one byte changed in an answer, the terminal recording or a
// snapshot tar fails naming just that file. Needs Docker and the lab
// image (make image).
func TestEvidenceOfARealLab(t *testing.T) {
	requireLabImage(t)
	st := startStack(t, nil)
	cand, id := readyLab(t, st, "sealed@example.com")
	code, err := cand.Do("PUT", "/api/session/"+id+"/answers/t1-hostname", map[string]any{"value": "tokyo"}, nil)
	must(t, code, err, 200, "save answer")
	typeInTerminal(t, st, cand.Token, id, "tokyo", "echo sealed-$((6*7)) | tee /root/proof", "sealed-42")
	code, err = cand.Do("POST", "/api/session/"+id+"/submit", nil, nil)
	must(t, code, err, 202, "submit")
	cand.WaitStatus(t, id, testlab.ArchiveTimeout, "completed")
	dir := filepath.Join(st.Config.StateDir, "sessions", id)
	for deadline := time.Now().Add(sealTimeout); ; time.Sleep(50 * time.Millisecond) {
		if ok, _ := evidence.IsSealed(dir); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not sealed %s after completing", sealTimeout)
		}
	}
	key, err := evidence.LoadKey(filepath.Join(st.Config.StateDir, evidence.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	r, err := evidence.Verify(dir, pub)
	if err != nil || !r.OK() {
		t.Fatalf("fresh archive: %v %v", r.Problems, err)
	}
	listed := map[string]bool{}
	var cast string
	for _, f := range r.Manifest.Files {
		listed[f.Path] = true
		if strings.HasPrefix(f.Path, "terminal-logs/tokyo") && strings.HasSuffix(f.Path, ".cast") {
			cast = f.Path
		}
	}
	tar := "docker-snapshots/exam-" + id[:8] + "-tokyo.tar"
	for _, want := range []string{"metadata.json", "answers/t1-hostname.json", "audit.jsonl", tar, "docker-snapshots/manifest.json"} {
		if !listed[want] {
			t.Errorf("%s not in the seal", want)
		}
	}
	if cast == "" {
		t.Fatalf("no tokyo recording in the seal: %v", listed)
	}
	for _, name := range []string{"answers/t1-hostname.json", cast, tar} {
		t.Run(name, func(t *testing.T) {
			cp := filepath.Join(t.TempDir(), id)
			if err := os.CopyFS(cp, os.DirFS(dir)); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(cp, filepath.FromSlash(name))
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/3] ^= 0x01
			if err := os.WriteFile(p, b, 0o640); err != nil {
				t.Fatal(err)
			}
			r, err := evidence.Verify(cp, pub)
			if err != nil || len(r.Problems) != 1 || r.Problems[0].String() != "changed "+name+": its sha256 differs from the sealed one" {
				t.Fatalf("one byte of %s changed: %v %v", name, r.Problems, err)
			}
		})
	}
}
