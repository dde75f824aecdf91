package evidence_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/evidence"
)

// sessionFiles are the files of a finished session's folder, as the
// platform lays them out.
var sessionFiles = map[string]string{
	"metadata.json":                            `{"id":"abcdefgh1234","status":"completed"}`,
	"answers/t1.json":                          `{"task_id":"t1","value":"ip route"}`,
	"answers/t2.json":                          `{"task_id":"t2","value":"b"}`,
	"terminal-logs/tokyo.json":                 `{"terminal":"tokyo","entries":[]}`,
	"terminal-logs/tokyo-20260301T100000.cast": "{\"version\":2}\n[0.5,\"o\",\"$ \"]\n",
	"docker-snapshots/exam-abcdefgh-tokyo.tar": strings.Repeat("tar!", 4096),
	"docker-snapshots/exam-abcdefgh-tokyo.log": "booted\n",
	"docker-snapshots/manifest.json":           `{"session_id":"abcdefgh1234","files":[]}`,
	"audit.jsonl":                              `{"actor":"admin","action":"snapshot"}` + "\n",
	"results.json":                             `{"score":20}`,
	"results.1.json":                           `{"score":5}`,
	"marks/t3.json":                            `{"task":"t3","points":4}`,
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// sealedFolder writes a session folder (with a temp file of an atomic
// write in progress, which is not evidence) and seals it.
func sealedFolder(t *testing.T, key ed25519.PrivateKey) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "sessions", "abcdefgh1234")
	for name, body := range sessionFiles {
		write(t, dir, name, body)
	}
	write(t, dir, "answers/.t1.json.tmp-123", "half an answer")
	m, err := evidence.Seal(dir, key, evidence.Info{SessionID: "abcdefgh1234", ExamID: "exam1", SealedAt: time.Now()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != len(sessionFiles) {
		t.Fatalf("sealed %d files, want the %d of the session", len(m.Files), len(sessionFiles))
	}
	return dir
}

func write(t *testing.T, dir, name, body string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
		t.Fatal(err)
	}
}

// flipByte changes one byte of a file in place, keeping its size.
func flipByte(t *testing.T, dir, name string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(p, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

func problems(t *testing.T, dir string, key ed25519.PublicKey) []string {
	t.Helper()
	r, err := evidence.Verify(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range r.Problems {
		out = append(out, p.String())
	}
	if r.OK() != (len(out) == 0) {
		t.Fatalf("OK() = %v with problems %q", r.OK(), out)
	}
	return out
}

func TestVerifyPassesOnAFreshSeal(t *testing.T) {
	key := newKey(t)
	dir := sealedFolder(t, key)
	if got := problems(t, dir, pub(key)); len(got) != 0 {
		t.Fatalf("a fresh seal fails: %q", got)
	}
	var m evidence.Manifest
	b, _ := os.ReadFile(filepath.Join(dir, evidence.ManifestFile))
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.SessionID != "abcdefgh1234" || m.ExamID != "exam1" || m.Key != evidence.Fingerprint(pub(key)) || m.Format != evidence.Format {
		t.Fatalf("manifest header = %+v", m)
	}
	for _, f := range m.Files {
		if strings.HasPrefix(filepath.Base(f.Path), ".") || f.Path == evidence.ManifestFile || f.Path == evidence.SignatureFile {
			t.Errorf("manifest lists %s, which is not evidence", f.Path)
		}
		if want := sessionFiles[f.Path]; int64(len(want)) != f.Size || len(f.SHA256) != 64 {
			t.Errorf("manifest entry %+v, want size %d and a sha256", f, len(want))
		}
	}
}

// Each tampering is reported on a line of its own that names the file.
func TestVerifyNamesWhatChanged(t *testing.T) {
	other := newKey(t)
	cases := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		key    func(own ed25519.PrivateKey) ed25519.PublicKey
		want   []string
	}{
		{"one byte of an answer", func(t *testing.T, dir string) { flipByte(t, dir, "answers/t1.json") }, nil,
			[]string{"changed answers/t1.json: its sha256 differs from the sealed one"}},
		{"one byte of a recording", func(t *testing.T, dir string) { flipByte(t, dir, "terminal-logs/tokyo-20260301T100000.cast") }, nil,
			[]string{"changed terminal-logs/tokyo-20260301T100000.cast: its sha256 differs from the sealed one"}},
		{"one byte of a snapshot", func(t *testing.T, dir string) { flipByte(t, dir, "docker-snapshots/exam-abcdefgh-tokyo.tar") }, nil,
			[]string{"changed docker-snapshots/exam-abcdefgh-tokyo.tar: its sha256 differs from the sealed one"}},
		{"a grown audit log", func(t *testing.T, dir string) {
			write(t, dir, "audit.jsonl", sessionFiles["audit.jsonl"]+"{}\n")
		}, nil, []string{"changed audit.jsonl: 41 bytes, sealed with 38"}},
		{"a removed file", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "results.1.json"))
		}, nil, []string{"missing results.1.json: sealed with 11 bytes, not in the folder"}},
		{"an added file", func(t *testing.T, dir string) { write(t, dir, "answers/t9.json", `{}`) }, nil,
			[]string{"extra answers/t9.json: not in the manifest (2 bytes)"}},
		{"an added symlink", func(t *testing.T, dir string) {
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, "marks", "t4.json")); err != nil {
				t.Fatal(err)
			}
		}, nil, []string{"extra marks/t4.json: not in the manifest (a symlink, not followed)"}},
		{"an edited manifest", func(t *testing.T, dir string) {
			p := filepath.Join(dir, evidence.ManifestFile)
			b, _ := os.ReadFile(p)
			b = []byte(strings.Replace(string(b), `"exam1"`, `"exam2"`, 1))
			os.WriteFile(p, b, 0o640)
		}, nil, []string{"bad-signature evidence.sig: does not match evidence.json under key "}},
		{"a replaced signature", func(t *testing.T, dir string) {
			p := filepath.Join(dir, evidence.ManifestFile)
			b, _ := os.ReadFile(p)
			forged := base64.StdEncoding.EncodeToString(ed25519.Sign(other, b))
			os.WriteFile(filepath.Join(dir, evidence.SignatureFile), []byte(forged+"\n"), 0o640)
		}, nil, []string{"bad-signature evidence.sig: does not match evidence.json under key "}},
		{"a removed signature", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, evidence.SignatureFile))
		}, nil, []string{"bad-signature evidence.sig: missing"}},
		{"another key", func(*testing.T, string) {}, func(ed25519.PrivateKey) ed25519.PublicKey { return pub(other) },
			[]string{"bad-signature evidence.sig: does not match evidence.json under key " + evidence.Fingerprint(pub(other)) + " (the manifest names key "}},
		{"a removed manifest", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, evidence.ManifestFile))
		}, nil, []string{"unsealed evidence.json: missing: the folder has no seal"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := newKey(t)
			dir := sealedFolder(t, key)
			tc.tamper(t, dir)
			k := pub(key)
			if tc.key != nil {
				k = tc.key(key)
			}
			got := problems(t, dir, k)
			if len(got) != len(tc.want) {
				t.Fatalf("problems %q, want %d: %q", got, len(tc.want), tc.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("problem %q, want %q…", got[i], tc.want[i])
				}
			}
		})
	}
}

// A hand-edited manifest, signed by whoever holds the key, still cannot
// make the verifier read outside the folder.
func TestVerifyRefusesPathsOutsideTheFolder(t *testing.T) {
	key := newKey(t)
	dir := sealedFolder(t, key)
	outside := filepath.Join(filepath.Dir(dir), "secret")
	write(t, filepath.Dir(dir), "secret", "not evidence")
	p := filepath.Join(dir, evidence.ManifestFile)
	var m evidence.Manifest
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"../secret", outside, "answers/../../secret", "./metadata.json", evidence.SignatureFile, "answers/.t1.json.tmp-123"} {
		m.Files = append(m.Files, evidence.File{Path: bad, Size: 12, SHA256: strings.Repeat("0", 64)})
	}
	b, _ = json.Marshal(m)
	os.WriteFile(p, b, 0o640)
	os.WriteFile(filepath.Join(dir, evidence.SignatureFile), []byte(base64.StdEncoding.EncodeToString(ed25519.Sign(key, b))), 0o640)
	got := problems(t, dir, pub(key))
	if len(got) != 6 {
		t.Fatalf("problems %q, want the six bad paths", got)
	}
	for _, g := range got {
		if !strings.HasPrefix(g, "invalid ") || !strings.HasSuffix(g, "not read") {
			t.Errorf("problem %q, want the path reported invalid and not read", g)
		}
	}
}

// A seal interrupted between writing the manifest and renaming its
// signature into place still verifies: the new signature is on disk.
func TestVerifyAcceptsAnInterruptedSeal(t *testing.T) {
	key := newKey(t)
	dir := sealedFolder(t, key)
	oldSig, _ := os.ReadFile(filepath.Join(dir, evidence.SignatureFile))
	write(t, dir, "audit.jsonl", sessionFiles["audit.jsonl"]+"{}\n")
	if _, err := evidence.Seal(dir, key, evidence.Info{SessionID: "abcdefgh1234", SealedAt: time.Now()}, nil); err != nil {
		t.Fatal(err)
	}
	newSig, _ := os.ReadFile(filepath.Join(dir, evidence.SignatureFile))
	// As if the crash came before the last rename.
	os.WriteFile(filepath.Join(dir, ".evidence.sig.next"), newSig, 0o640)
	os.WriteFile(filepath.Join(dir, evidence.SignatureFile), oldSig, 0o640)
	if got := problems(t, dir, pub(key)); len(got) != 0 {
		t.Fatalf("interrupted seal: %q", got)
	}
}

// A re-seal reuses the hashes of the verification before it only for files
// whose stamp is unchanged.
func TestSealReusesOnlyUnchangedHashes(t *testing.T) {
	key := newKey(t)
	dir := sealedFolder(t, key)
	r, err := evidence.Verify(dir, pub(key))
	if err != nil || !r.OK() {
		t.Fatalf("verify: %v %v", r, err)
	}
	time.Sleep(10 * time.Millisecond)
	write(t, dir, "answers/t2.json", `{"task_id":"t2","value":"c"}`)
	if _, err := evidence.Seal(dir, key, evidence.Info{SessionID: "abcdefgh1234", SealedAt: time.Now()}, r.Observed); err != nil {
		t.Fatal(err)
	}
	if got := problems(t, dir, pub(key)); len(got) != 0 {
		t.Fatalf("after a re-seal with known hashes: %q", got)
	}
}

func TestQuickCheckSeesSizesNotContents(t *testing.T) {
	key := newKey(t)
	dir := sealedFolder(t, key)
	flipByte(t, dir, "answers/t1.json")
	r, err := evidence.QuickCheck(dir, pub(key))
	if err != nil || !r.OK() {
		t.Fatalf("quick check after a same-size change: %v %v (it reads no contents)", r.Problems, err)
	}
	write(t, dir, "answers/t1.json", "{}")
	r, err = evidence.QuickCheck(dir, pub(key))
	if err != nil || len(r.Problems) != 1 || r.Problems[0].Path != "answers/t1.json" || r.Problems[0].Kind != evidence.Changed {
		t.Fatalf("quick check after a change of size: %v %v", r.Problems, err)
	}
}

func TestStampsChangeWithTheFiles(t *testing.T) {
	key := newKey(t)
	dir := sealedFolder(t, key)
	a, err := evidence.Stamps(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a[evidence.ManifestFile]; !ok || len(a) != len(sessionFiles)+2 {
		t.Fatalf("stamps %v: want every file and the seal's two", a)
	}
	p := filepath.Join(dir, "answers", "t1.json")
	info, _ := os.Stat(p)
	flipByte(t, dir, "answers/t1.json")
	// Set the modification time back, as a careful tamperer would.
	os.Chtimes(p, info.ModTime(), info.ModTime())
	b, _ := evidence.Stamps(dir)
	if a["answers/t1.json"] == b["answers/t1.json"] {
		t.Fatalf("stamp %q unchanged after a write with the mtime set back", a["answers/t1.json"])
	}
	if !slices.Equal(sortedKeys(a), sortedKeys(b)) {
		t.Fatalf("stamped files changed: %v vs %v", sortedKeys(a), sortedKeys(b))
	}
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
