package docker

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"testing"
)

// TestHolderInTools: the terminal holder joins the tools only when it is
// a static executable, and a volume with it is named apart from one
// without, so that a new build never finds an old volume complete.
func TestHolderInTools(t *testing.T) {
	static, err := os.ReadFile(DefaultGraderBusybox)
	if err != nil {
		t.Fatalf("this test needs %s (Debian's busybox-static): %v", DefaultGraderBusybox, err)
	}
	dynamic, err := os.ReadFile("/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	if err := staticELF(static); err != nil {
		t.Errorf("a static executable refused: %v", err)
	}
	for name, bin := range map[string][]byte{"dynamic": dynamic, "not ELF": []byte("#!/bin/sh\n")} {
		if err := staticELF(bin); err == nil {
			t.Errorf("%s binary accepted as the holder", name)
		}
	}
	bare := toolsSum(static, nil)
	if got := "examlab-grader-" + hex.EncodeToString(bare[:6]); got != ToolsVolumeName(static) {
		t.Errorf("without a holder the volume is %s, want %s (the name Nomad jobs use)", got, ToolsVolumeName(static))
	}
	with, other := toolsSum(static, []byte("holder one")), toolsSum(static, []byte("holder two"))
	if with == bare || with == other || with == sha256.Sum256(static) {
		t.Error("the holder does not change the tools volume's name")
	}

	dir := t.TempDir()
	for _, tc := range []struct {
		name, path string
		ship       bool
	}{
		{"none", "", false},
		{"static", DefaultGraderBusybox, true},
		{"dynamic", "/bin/ls", false},
		{"missing", dir + "/nothing", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Runtime{holder: tc.path}
			if got := r.holderBinary(); (got != nil) != tc.ship {
				t.Errorf("holder %q shipped: %v, want %v", tc.path, got != nil, tc.ship)
			}
		})
	}
}
