package holder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"time"
)

// DefaultDir is where holders listen in a node: a directory only root may
// enter, so that only root in the node can attach.
const DefaultDir = "/run/examlab"

// Named timeouts of an attach.
const (
	startLockWait = 10 * time.Second // for another attach starting the same holder
	startWait     = 10 * time.Second // for a new holder to serve
)

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// SocketPath is the socket of terminal name's holder in dir.
func SocketPath(dir, name string) string { return filepath.Join(dir, "term-"+name+".sock") }

// AttachOptions configure Attach.
type AttachOptions struct {
	// Dir holds the holders' sockets; default DefaultDir.
	Dir string
	// Name names the terminal (the node).
	Name string
	// Start is the command that starts the holder when none serves yet
	// (this binary's `hold serve`); it must tell it is serving by closing
	// or writing to its file descriptor 3.
	Start []string
	// In and Out are the relay's side: the exec's stdin and stdout.
	In  io.Reader
	Out io.Writer
}

// Attach connects to terminal Name's holder, starting it when there is
// none, and pipes In to it and its frames to Out until either side ends.
func Attach(ctx context.Context, o AttachOptions) error {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if !validName.MatchString(o.Name) {
		return fmt.Errorf("attach terminal: name %q is not a node name", o.Name)
	}
	if err := privateDir(o.Dir); err != nil {
		return err
	}
	sock := SocketPath(o.Dir, o.Name)
	conn, err := dialUnix(ctx, sock)
	if err != nil {
		if conn, err = start(ctx, o, sock); err != nil {
			return err
		}
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, o.In)
		// The relay went: the holder keeps the shell for its grace period.
		_ = conn.CloseWrite()
	}()
	_, err = io.Copy(o.Out, conn)
	return err
}

func dialUnix(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// privateDir makes dir, owned by this user and closed to everyone else.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make holder folder: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check holder folder: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("holder folder %s is not a folder of this user", dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("close holder folder: %w", err)
		}
	}
	return nil
}

// start starts the holder under a lock, so that two attaches at once
// start one, and dials it.
func start(ctx context.Context, o AttachOptions, sock string) (*net.UnixConn, error) {
	if len(o.Start) == 0 {
		return nil, errors.New("start terminal holder: no command")
	}
	lock, err := os.OpenFile(filepath.Join(o.Dir, "term-"+o.Name+".lock"), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start terminal holder: %w", err)
	}
	defer lock.Close()
	deadline := time.Now().Add(startLockWait)
	for syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		if time.Now().After(deadline) {
			return nil, errors.New("start terminal holder: another start holds the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Someone else may have started it while this one waited.
	if c, err := dialUnix(ctx, sock); err == nil {
		return c, nil
	}
	// A socket no one answers on is left by a holder that was killed.
	_ = os.Remove(sock)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start terminal holder: %w", err)
	}
	defer r.Close()
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("start terminal holder: %w", err)
	}
	defer null.Close()
	cmd := exec.Command(o.Start[0], o.Start[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	cmd.ExtraFiles = []*os.File{w}
	// A session of its own: the holder outlives this exec and its
	// connection, and no hangup of the exec reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("start terminal holder: %w", err)
	}
	_ = cmd.Process.Release()
	ready := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := r.Read(b[:])
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			return nil, fmt.Errorf("start terminal holder: it did not start: %w", err)
		}
	case <-time.After(startWait):
		return nil, fmt.Errorf("start terminal holder: not serving after %s", startWait)
	}
	c, err := dialUnix(ctx, sock)
	if err != nil {
		return nil, fmt.Errorf("start terminal holder: %w", err)
	}
	return c, nil
}

// Listen opens terminal name's socket in dir for Serve, readable by this
// user only.
func Listen(dir, name string) (net.Listener, error) {
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("listen for terminal: name %q is not a node name", name)
	}
	if err := privateDir(dir); err != nil {
		return nil, err
	}
	sock := SocketPath(dir, name)
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", sock)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen for terminal: %w", err)
	}
	return ln, nil
}
