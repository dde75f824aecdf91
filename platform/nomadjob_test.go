package platform_test

import (
	"testing"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/platform"
)

// TestNomadJobOptionsNameTheHolder: a platform names its Nomad labs' tools
// volume after its busybox and, when it is a static build, itself, the
// name a client's agent of the same build fills with the terminal holder;
// a build with cgo names busybox's alone, and no busybox no volume.
func TestNomadJobOptionsNameTheHolder(t *testing.T) {
	bb := docker.DefaultGraderBusybox
	// busybox-static stands in for a static examlab build.
	names, err := docker.ToolsNamesFor(bb, bb)
	if err != nil || names.With == "" {
		t.Fatalf("this test needs %s (busybox-static): %+v, %v", bb, names, err)
	}
	for _, tc := range []struct {
		name, busybox, holder, want string
	}{
		{"a static build", bb, bb, names.With},
		{"a build with cgo", bb, "/bin/ls", names.Bare},
		{"no holder given", bb, "", names.Bare},
		{"no busybox", "none", bb, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.GraderBusybox = tc.busybox
			opts, err := platform.NomadJobOptions(cfg, tc.holder)
			if err != nil {
				t.Fatal(err)
			}
			if opts.GraderTools != tc.want {
				t.Errorf("tools volume %q, want %q", opts.GraderTools, tc.want)
			}
		})
	}
}
