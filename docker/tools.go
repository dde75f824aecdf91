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
	"runtime"
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
// grader's static busybox and a bin directory of its applets, and the
// terminal holder when there is one to ship, and returns its name:
// examlab-grader-{digest}, so a new busybox or holder gets a new volume and
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
	t, err := r.readTools()
	if err != nil {
		return "", err
	}
	if t.busybox == nil {
		if !r.toolsWarned {
			r.toolsWarned = true
			fmt.Fprintf(os.Stderr, "examlab: no grader busybox at %s (install busybox-static or set EXAMLAB_GRADER_BUSYBOX): labs start without the grader's tools and their checks cannot run\n", r.graderBusybox)
		}
		return "", nil
	}
	if r.holder != "" && t.names.NoHolder != nil && !r.holderWarned {
		r.holderWarned = true
		fmt.Fprintf(os.Stderr, "examlab: no terminal holder for the nodes (%v): terminals live in the relay and end when it restarts; build examlab with CGO_ENABLED=0 (make build)\n", t.names.NoHolder)
	}
	name := t.names.Bare
	if t.holder != nil {
		name = t.names.With
	}
	if err := r.makeTools(ctx, name, t.busybox, t.holder); err != nil {
		return "", err
	}
	r.toolsReady = name
	return name, nil
}

// ToolsNames are the names the grader's tools volume of one busybox and
// one terminal holder can have: With holds both ("" when there is no
// holder to ship, and NoHolder says why), Bare the busybox alone ("" when
// there is no busybox at all).
type ToolsNames struct {
	With, Bare string
	NoHolder   error
}

// Name is the volume the nodes mount: With when there is a holder to ship,
// else Bare.
func (n ToolsNames) Name() string {
	if n.With != "" {
		return n.With
	}
	return n.Bare
}

// ErrNoBusybox is a tools volume asked for where there is no busybox to
// fill it from.
var ErrNoBusybox = errors.New("no grader busybox")

// ErrToolsMismatch is a tools volume asked for by a name that this host's
// busybox and holder do not give: another build made it.
var ErrToolsMismatch = errors.New("the tools volume is another busybox's or examlab's")

// toolsFiles are the binaries a tools volume is filled from.
type toolsFiles struct {
	busybox, holder []byte
	names           ToolsNames
}

// readTools reads the runtime's busybox (none: nil) and holder (nil when
// it would not run in a node) and names their volumes.
func (r *Runtime) readTools() (toolsFiles, error) {
	return readTools(r.graderBusybox, r.holder)
}

func readTools(busybox, holder string) (toolsFiles, error) {
	var t toolsFiles
	if busybox == "" || busybox == "none" {
		return t, nil
	}
	bin, err := os.ReadFile(busybox)
	if errors.Is(err, os.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return t, fmt.Errorf("grader's tools: %w", err)
	}
	t.busybox = bin
	t.names.Bare = toolsName(toolsSum(bin, nil))
	t.holder, t.names.NoHolder = readHolder(holder)
	if t.holder != nil {
		t.names.With = toolsName(toolsSum(bin, t.holder))
	}
	return t, nil
}

// ToolsNamesFor names the tools volumes of the busybox and the terminal
// holder at these paths, as a platform whose labs run on Nomad clients
// names the volume their nodes mount (ToolsNames.Name): each client's lab
// agent fills it from its own busybox and examlab (FillGraderTools), which
// must be these. A busybox of "", "none" or no file means no tools.
func ToolsNamesFor(busybox, holder string) (ToolsNames, error) {
	t, err := readTools(busybox, holder)
	return t.names, err
}

// FillGraderTools makes the grader's tools volume named want on this
// engine, unless it is complete already, and returns the names this
// runtime's binaries give. A Nomad client's lab agent fills the volume its
// job's nodes mount, before they need it: with the terminal holder when
// want is the name that covers it (ToolsNames.With), with busybox alone
// when want is the busybox's (a job rendered before the holder joined the
// tools, or by a platform without a static build). Any other name is
// ErrToolsMismatch, and no busybox here ErrNoBusybox.
func (r *Runtime) FillGraderTools(ctx context.Context, want string) (ToolsNames, error) {
	r.toolsMu.Lock()
	defer r.toolsMu.Unlock()
	t, err := r.readTools()
	switch {
	case err != nil:
		return t.names, err
	case t.busybox == nil:
		return t.names, ErrNoBusybox
	case want == "":
		return t.names, ErrToolsMismatch
	case want == t.names.With:
	case want == t.names.Bare:
		t.holder = nil
	default:
		return t.names, ErrToolsMismatch
	}
	if r.toolsReady == want {
		return t.names, nil
	}
	if err := r.makeTools(ctx, want, t.busybox, t.holder); err != nil {
		return t.names, err
	}
	r.toolsReady = want
	return t.names, nil
}

// makeTools creates the volume name, unless it exists, and fills it,
// unless it is complete.
func (r *Runtime) makeTools(ctx context.Context, name string, bin, hold []byte) error {
	sum := toolsSum(bin, hold)
	body := map[string]any{"Name": name, "Labels": map[string]string{LabelTools: hex.EncodeToString(sum[:])}}
	if err := r.client.do(ctx, http.MethodPost, "/volumes/create", nil, body, nil); err != nil {
		return fmt.Errorf("grader's tools: create volume %s: %w", name, err)
	}
	if err := r.fillTools(ctx, name, bin, hold); err != nil {
		return fmt.Errorf("grader's tools: fill volume %s: %w", name, err)
	}
	return nil
}

// ToolsVolumeName is the name of the volume that holds busybox binary bin:
// examlab-grader- and the start of its SHA-256.
func ToolsVolumeName(bin []byte) string {
	return toolsName(sha256.Sum256(bin))
}

func toolsName(sum [32]byte) string { return "examlab-grader-" + hex.EncodeToString(sum[:6]) }

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

// readHolder reads the terminal holder at path ("/proc/self/exe" is this
// very binary), or says why there is none to ship: no path, or not an
// executable that runs in any node of this host (see staticELF).
func readHolder(path string) ([]byte, error) {
	if path == "" || path == "none" {
		return nil, errors.New("terminal holder: none given")
	}
	bin, err := os.ReadFile(path)
	if err == nil {
		err = staticELF(bin)
	}
	if err != nil {
		return nil, err
	}
	return bin, nil
}

// staticELF checks bin is an executable that needs no loader, built for
// this host's architecture, so that it runs in any node here.
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
	if want, ok := elfMachines[runtime.GOARCH]; ok && f.Machine != want {
		return fmt.Errorf("terminal holder: built for %s, this host is %s", f.Machine, runtime.GOARCH)
	}
	return nil
}

// elfMachines are the ELF machines of the architectures examlab runs on.
var elfMachines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// ToolsVolumeFor is ToolsVolumeName of the busybox at path: the volume of
// busybox alone, which Nomad jobs rendered before the terminal holder
// joined the tools name (today's platform names them by ToolsNamesFor).
// "" or "none" mean no tools, and so does a path with no file.
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
	r.removeStaleFills(ctx)
	id, err := r.client.createContainer(ctx, "", cc)
	if err != nil {
		return err
	}
	defer r.removeFill(context.WithoutCancel(ctx), id)
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

// fillStale is how long a fill container may sit created and never
// started before it counts as left behind: filling takes seconds.
const fillStale = 2 * time.Minute

// removeFill removes a fill container once it is done, trying a few times:
// an engine that fails one request must not leave it behind.
func (r *Runtime) removeFill(ctx context.Context, id string) {
	for try := 0; try < 3; try++ {
		if err := r.client.removeContainer(ctx, id); err == nil || sleep(ctx, 200*time.Millisecond) != nil {
			return
		}
	}
}

// removeStaleFills removes the fill containers a process left behind when
// it died mid-fill, or when the engine failed every removal: those that
// have exited, and those created long ago that never ran. A fill another
// process is running now is neither. The next fill is where anyone would
// look for them; what fails here is left for the one after.
func (r *Runtime) removeStaleFills(ctx context.Context) {
	list, err := r.client.listContainers(ctx, filters("label", LabelTools+"=fill"))
	if err != nil {
		return
	}
	for _, c := range list {
		stale := c.State == "exited" || c.State == "dead" ||
			(c.State == "created" && time.Since(time.Unix(c.Created, 0)) > fillStale)
		if stale {
			_ = r.client.removeContainer(ctx, c.ID)
		}
	}
}
