package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"strings"
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
			if got, err := readHolder(tc.path); (got != nil) != tc.ship || (err == nil) != tc.ship {
				t.Errorf("holder %q shipped: %v, want %v", tc.path, got != nil, tc.ship)
			}
		})
	}
}

// TestToolsNames: a platform names a Nomad lab's tools volume as the
// client's agent fills it, and the agent fills only a volume its own
// binaries name: with the holder, or busybox alone for an older job.
func TestToolsNames(t *testing.T) {
	if _, err := os.Stat(DefaultGraderBusybox); err != nil {
		t.Fatalf("this test needs %s (Debian's busybox-static): %v", DefaultGraderBusybox, err)
	}
	bin, _ := os.ReadFile(DefaultGraderBusybox)
	// busybox-static stands in for a static examlab: any static
	// executable may be shipped as the holder.
	names, err := ToolsNamesFor(DefaultGraderBusybox, DefaultGraderBusybox)
	if err != nil {
		t.Fatal(err)
	}
	if names.Bare != ToolsVolumeName(bin) || names.With == "" || names.With == names.Bare || names.Name() != names.With || names.NoHolder != nil {
		t.Errorf("names with a static holder: %+v; want With apart from Bare %s, and With the name", names, ToolsVolumeName(bin))
	}
	dyn, err := ToolsNamesFor(DefaultGraderBusybox, "/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	if dyn.With != "" || dyn.Name() != dyn.Bare || dyn.NoHolder == nil || !strings.Contains(dyn.NoHolder.Error(), "terminal holder") {
		t.Errorf("names with a dynamic holder: %+v; want busybox alone and why", dyn)
	}
	if none, err := ToolsNamesFor("none", DefaultGraderBusybox); err != nil || none.Name() != "" {
		t.Errorf("names without a busybox: %+v, %v; want none", none, err)
	}

	ctx := context.Background()
	r := &Runtime{graderBusybox: DefaultGraderBusybox, holder: DefaultGraderBusybox}
	for _, want := range []string{"", "examlab-grader-000000000000"} {
		if got, err := r.FillGraderTools(ctx, want); !errors.Is(err, ErrToolsMismatch) || got != names {
			t.Errorf("fill %q: %+v, %v; want ErrToolsMismatch with this host's names", want, got, err)
		}
	}
	bare := &Runtime{graderBusybox: t.TempDir() + "/busybox"}
	if _, err := bare.FillGraderTools(ctx, names.Bare); !errors.Is(err, ErrNoBusybox) {
		t.Errorf("fill without a busybox: %v; want ErrNoBusybox", err)
	}
}

// TestStaleFillsRemoved: a fill container that a dead process left behind
// (exited, or created long ago) is removed by the next fill, which leaves
// none of its own; one another process has just created is left alone.
func TestStaleFillsRemoved(t *testing.T) {
	r := newTestRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	make1 := func(start bool) string {
		id, err := r.client.createContainer(ctx, "", containerCreate{
			Image: r.switchImage, Labels: map[string]string{LabelTools: "fill"},
			Entrypoint: []string{"sh", "-c"}, Cmd: []string{"true"},
			HostConfig: hostConfig{NetworkMode: networkNone},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.client.removeContainer(context.Background(), id) })
		if start {
			if err := r.client.startContainer(ctx, id); err != nil {
				t.Fatal(err)
			}
			if err := r.client.do(ctx, http.MethodPost, "/containers/"+id+"/wait", nil, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		return id
	}
	exited, fresh := make1(true), make1(false)
	bin, err := os.ReadFile(DefaultGraderBusybox)
	if err != nil {
		t.Fatalf("this test needs %s (Debian's busybox-static): %v", DefaultGraderBusybox, err)
	}
	volume := "examlab-test-fill-" + newSessionID(t)
	t.Cleanup(func() {
		_ = r.client.do(context.Background(), http.MethodDelete, "/volumes/"+volume, nil, nil, nil)
	})
	if err := r.fillTools(ctx, volume, bin, nil); err != nil {
		t.Fatalf("fill: %v", err)
	}
	list, err := r.client.listContainers(ctx, filters("label", LabelTools+"=fill"))
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, c := range list {
		left = append(left, c.ID)
		if c.ID == exited {
			t.Errorf("the exited fill container %s is still there", exited[:12])
		}
	}
	if len(left) != 1 || left[0] != fresh {
		t.Errorf("fill containers after the fill: %v, want only the one just created (%s)", left, fresh[:12])
	}
}
