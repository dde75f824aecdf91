package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

// DefaultGraderBusybox is where Debian's busybox-static puts its binary.
const DefaultGraderBusybox = "/bin/busybox"

// toolsTarget is where every node sees the grader's tools, read-only.
// grading.ToolsDir names the same path.
const toolsTarget = "/.examlab"

// LabelTools marks the grader's tools volume.
const LabelTools = "examlab.grader-tools"

// mount is one entry of HostConfig.Mounts.
type mount struct {
	Type     string `json:"Type"`
	Source   string `json:"Source"`
	Target   string `json:"Target"`
	ReadOnly bool   `json:"ReadOnly"`
}

// toolsVolume prepares, once per runtime, the engine volume that holds the
// grader's static busybox and a bin directory of its applets, and returns
// its name: examlab-grader-{digest}, so a new busybox gets a new volume and
// a volume's content never changes once it is complete. Every node mounts
// it read-only, where a candidate who is root in the node can neither
// change nor hide it (remounting needs CAP_SYS_ADMIN, which no node has).
// It returns "" when the platform has no busybox to bring: the lab then
// runs without the tools and its checks report that they could not run.
func (r *Runtime) toolsVolume(ctx context.Context) (string, error) {
	r.toolsMu.Lock()
	defer r.toolsMu.Unlock()
	if r.toolsReady != "" || r.graderBusybox == "" {
		return r.toolsReady, nil
	}
	bin, err := os.ReadFile(r.graderBusybox)
	if errors.Is(err, os.ErrNotExist) {
		if !r.toolsWarned {
			r.toolsWarned = true
			fmt.Fprintf(os.Stderr, "examlab: no grader busybox at %s (install busybox-static or set EXAMLAB_GRADER_BUSYBOX): labs start without the grader's tools and their checks cannot run\n", r.graderBusybox)
		}
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("grader's tools: %w", err)
	}
	hold := r.holderBinary()
	sum := toolsSum(bin, hold)
	name := "examlab-grader-" + hex.EncodeToString(sum[:6])
	body := map[string]any{"Name": name, "Labels": map[string]string{LabelTools: hex.EncodeToString(sum[:])}}
	if err := r.client.do(ctx, http.MethodPost, "/volumes/create", nil, body, nil); err != nil {
		return "", fmt.Errorf("grader's tools: create volume %s: %w", name, err)
	}
	if err := r.fillTools(ctx, name, bin, hold); err != nil {
		return "", fmt.Errorf("grader's tools: fill volume %s: %w", name, err)
	}
	r.toolsReady = name
	return name, nil
}

// GraderTools makes the grader's tools volume on this engine, unless it is
// complete already, and returns its name; "" when the runtime has no
// busybox to bring. A Nomad client's labnet calls it before the lab's
// nodes need the volume.
func (r *Runtime) GraderTools(ctx context.Context) (string, error) { return r.toolsVolume(ctx) }

// ToolsVolumeName is the name of the volume that holds busybox binary bin:
// examlab-grader- and the start of its SHA-256.
func ToolsVolumeName(bin []byte) string {
	sum := sha256.Sum256(bin)
	return "examlab-grader-" + hex.EncodeToString(sum[:6])
}

// toolsSum is the digest a tools volume is named by: busybox's alone
// (ToolsVolumeName) without a holder, else one over both binaries, so a
// new build of either gets a new volume.
func toolsSum(busybox, holder []byte) [32]byte {
	if len(holder) == 0 {
		return sha256.Sum256(busybox)
	}
	a, b := sha256.Sum256(busybox), sha256.Sum256(holder)
	return sha256.Sum256(append(a[:], b[:]...))
}

// holderBinary reads the terminal holder to ship, nil when there is none
// or it would not run in a node (not a static executable).
func (r *Runtime) holderBinary() []byte {
	if r.holder == "" {
		return nil
	}
	bin, err := os.ReadFile(r.holder)
	if err == nil {
		err = staticELF(bin)
	}
	if err != nil {
		if !r.holderWarned {
			r.holderWarned = true
			fmt.Fprintf(os.Stderr, "examlab: no terminal holder for the nodes (%v): terminals live in the relay and end when it restarts; build examlab with CGO_ENABLED=0 (make build)\n", err)
		}
		return nil
	}
	return bin
}

// staticELF checks bin is an executable that needs no loader, so that it
// runs in any node of this host's architecture.
func staticELF(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("terminal holder: %w", err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC {
		return errors.New("terminal holder: not a static executable")
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("terminal holder: linked dynamically")
		}
	}
	return nil
}

// ToolsVolumeFor is ToolsVolumeName of the busybox at path, as a platform
// whose labs run elsewhere (on Nomad clients) names the volume their nodes
// mount. "" or "none" mean no tools, and so does a path with no file.
func ToolsVolumeFor(path string) (string, error) {
	if path == "" || path == "none" {
		return "", nil
	}
	bin, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("grader's tools: %w", err)
	}
	return ToolsVolumeName(bin), nil
}

// fillScript installs the busybox uploaded as busybox.new and links its
// applets, and the terminal holder uploaded as examlab.new, then moves
// busybox into place last: a volume that holds busybox is complete, and
// one that does not is filled again.
const fillScript = `set -e
cd /tools
[ -x busybox ] && exit 0
if [ -f examlab.new ]; then chmod 0755 examlab.new; mv examlab.new examlab; fi
chmod 0755 busybox.new
rm -rf bin && mkdir bin
for a in $(./busybox.new --list); do ln -s ../busybox "bin/$a"; done
mv busybox.new busybox
`

// fillTools runs a short-lived container of the switch image with the
// volume mounted read-write, uploads the busybox into it and installs it.
func (r *Runtime) fillTools(ctx context.Context, volume string, bin, holder []byte) error {
	cc := containerCreate{
		Image:      r.switchImage,
		Labels:     map[string]string{LabelTools: "fill"},
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{fillScript},
		HostConfig: hostConfig{
			NetworkMode: networkNone,
			CapDrop:     []string{"ALL"},
			CapAdd:      []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"},
			SecurityOpt: []string{"no-new-privileges"},
			Mounts:      []mount{{Type: "volume", Source: volume, Target: "/tools"}},
			LogConfig:   logConfig{Type: "json-file", Config: map[string]string{"max-size": "1m"}},
		},
	}
	id, err := r.client.createContainer(ctx, "", cc)
	if err != nil {
		return err
	}
	defer func() { _ = r.client.removeContainer(context.WithoutCancel(ctx), id) }()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "busybox.new", Mode: 0o755, Size: int64(len(bin)), ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := tw.Write(bin); err != nil {
		return err
	}
	if len(holder) > 0 {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "examlab.new", Mode: 0o755, Size: int64(len(holder)), ModTime: time.Now()}); err != nil {
			return err
		}
		if _, err := tw.Write(holder); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	q := url.Values{"path": {"/tools"}}
	if err := r.client.do(ctx, http.MethodPut, "/containers/"+id+"/archive", q, rawBody{r: &buf, contentType: "application/x-tar"}, nil); err != nil {
		return err
	}
	if err := r.client.startContainer(ctx, id); err != nil {
		return err
	}
	var waited struct {
		StatusCode int `json:"StatusCode"`
	}
	if err := r.client.do(ctx, http.MethodPost, "/containers/"+id+"/wait", nil, nil, &waited); err != nil {
		return err
	}
	if waited.StatusCode != 0 {
		var logs bytes.Buffer
		if resp, err := r.client.stream(ctx, http.MethodGet, "/containers/"+id+"/logs", url.Values{"stdout": {"1"}, "stderr": {"1"}}, nil); err == nil {
			_, _ = io.Copy(&logs, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
		}
		return fmt.Errorf("install exited %d: %s", waited.StatusCode, tail(logs.String()))
	}
	return nil
}
