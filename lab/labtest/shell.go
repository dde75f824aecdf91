package labtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/examlab/examlab/lab"
)

// shell runs the commands a Memory node understands: enough of sh and the
// core utilities for tests, on the node's in-memory files.
//
//	sh [-c SCRIPT]   scripts of simple commands joined by ; && || and
//	                 newlines, with 'single' and "double" quotes, the
//	                 expansions $NAME ${NAME} $? $((arithmetic)), NAME=value
//	                 assignments, and the redirections > >> < 2> 2>&1 >&2
//	                 (and /dev/null)
//	export NAME=value…  unset NAME…
//	echo [-n] …      cat [FILE…]      printenv [NAME…]   env [K=V…] [CMD…]
//	true  false  :   exit [N]         hostname [-i]      id   pwd   cd DIR
//	touch FILE…      rm [-rf] PATH…   mkdir [-p] DIR…    ls [DIR]
//	test / [ with -e -f -d -n -z = !=                    stty size
//	sleep SECONDS
//
// Anything else exits 127, as sh does for a command it cannot find.
type shell struct {
	m      *Memory
	node   *memNode
	env    map[string]string
	cwd    string
	last   int // exit status of the last command: $?
	tty    bool
	size   func() (lab.Size, bool)
	stdin  *bufio.Reader
	stdout io.Writer
	stderr io.Writer
}

func envMap(env []string) map[string]string {
	m := map[string]string{"HOME": "/root", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// main runs the command a process was started with.
func (sh *shell) main(ctx context.Context, argv []string) int {
	code, _ := sh.command(ctx, argv, sh.stdin, sh.stdout, sh.stderr)
	return code
}

// command runs one simple command; exit reports whether it was `exit`.
func (sh *shell) command(ctx context.Context, argv []string, in io.Reader, out, errw io.Writer) (code int, exit bool) {
	if len(argv) == 0 {
		return 0, false
	}
	if ctx.Err() != nil {
		return 130, true
	}
	fail := func(format string, args ...any) int {
		fmt.Fprintf(errw, "%s: "+format+"\n", append([]any{path.Base(argv[0])}, args...)...)
		return 1
	}
	args := argv[1:]
	switch path.Base(argv[0]) {
	case "sh", "bash", "dash":
		if len(args) >= 2 && args[0] == "-c" {
			return sh.script(ctx, args[1], in, out, errw), false
		}
		return sh.interactive(ctx, in, out, errw), false
	case "exit":
		n := 0
		if len(args) > 0 {
			n, _ = strconv.Atoi(args[0])
		}
		return n & 0xff, true
	case "export":
		for _, a := range args {
			if k, v, ok := strings.Cut(a, "="); ok && validName(k) {
				sh.env[k] = v
			}
		}
		return 0, false
	case "unset":
		for _, a := range args {
			delete(sh.env, a)
		}
		return 0, false
	case "true", ":":
		return 0, false
	case "false":
		return 1, false
	case "echo":
		nl := "\n"
		if len(args) > 0 && args[0] == "-n" {
			args, nl = args[1:], ""
		}
		fmt.Fprint(out, strings.Join(args, " ")+nl)
		return 0, false
	case "cat":
		if len(args) == 0 {
			io.Copy(out, in)
			return 0, false
		}
		code := 0
		for _, a := range args {
			if a == "-" {
				io.Copy(out, in)
				continue
			}
			b, err := sh.read(a)
			if err != nil {
				code = fail("%s: %v", a, err)
				continue
			}
			out.Write(b)
		}
		return code, false
	case "printenv":
		if len(args) == 0 {
			keys := make([]string, 0, len(sh.env))
			for k := range sh.env {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(out, "%s=%s\n", k, sh.env[k])
			}
			return 0, false
		}
		code := 0
		for _, a := range args {
			if v, ok := sh.env[a]; ok {
				fmt.Fprintln(out, v)
			} else {
				code = 1
			}
		}
		return code, false
	case "env":
		sub := *sh
		sub.env = make(map[string]string, len(sh.env))
		for k, v := range sh.env {
			sub.env[k] = v
		}
		for len(args) > 0 && strings.Contains(args[0], "=") {
			k, v, _ := strings.Cut(args[0], "=")
			sub.env[k] = v
			args = args[1:]
		}
		if len(args) == 0 {
			return sub.command(ctx, []string{"printenv"}, in, out, errw)
		}
		code, _ := sub.command(ctx, args, in, out, errw)
		return code, false
	case "hostname":
		if len(args) > 0 && args[0] == "-i" {
			fmt.Fprintln(out, sh.node.ip)
			return 0, false
		}
		b, _ := sh.read("/etc/hostname")
		fmt.Fprint(out, string(b))
		return 0, false
	case "id":
		fmt.Fprintln(out, "uid=0(root) gid=0(root) groups=0(root)")
		return 0, false
	case "pwd":
		fmt.Fprintln(out, sh.cwd)
		return 0, false
	case "cd":
		dir := sh.env["HOME"]
		if len(args) > 0 {
			dir = args[0]
		}
		if !sh.isDir(dir) {
			return fail("can't cd to %s", dir), false
		}
		sh.cwd = cleanPath(sh.cwd, dir)
		return 0, false
	case "touch":
		code := 0
		for _, a := range args {
			if _, err := sh.read(a); err == nil {
				continue
			}
			if err := sh.write(a, nil, false); err != nil {
				code = fail("cannot touch '%s': %v", a, err)
			}
		}
		return code, false
	case "rm":
		return sh.rm(args, fail), false
	case "mkdir":
		return sh.mkdir(args, fail), false
	case "ls":
		return sh.ls(args, out, fail), false
	case "test", "[":
		if argv[0] == "[" {
			if len(args) == 0 || args[len(args)-1] != "]" {
				return fail("missing ]") + 1, false
			}
			args = args[:len(args)-1]
		}
		if sh.test(args) {
			return 0, false
		}
		return 1, false
	case "stty":
		sz, tty := sh.size()
		if !tty {
			return fail("'standard input': Inappropriate ioctl for device"), false
		}
		if len(args) == 1 && args[0] == "size" {
			fmt.Fprintf(out, "%d %d\n", sz.Rows, sz.Cols)
		}
		return 0, false
	case "sleep":
		if len(args) != 1 {
			return fail("missing operand"), false
		}
		secs, err := strconv.ParseFloat(args[0], 64)
		if err != nil {
			return fail("invalid time interval '%s'", args[0]), false
		}
		if err := sleep(ctx, time.Duration(secs*float64(time.Second))); err != nil {
			return 130, true
		}
		return 0, false
	}
	fmt.Fprintf(errw, "sh: 1: %s: not found\n", argv[0])
	return 127, false
}

// interactive reads commands line by line until end of input or exit,
// with a prompt when on a terminal.
func (sh *shell) interactive(ctx context.Context, in io.Reader, out, errw io.Writer) int {
	r, ok := in.(*bufio.Reader)
	if !ok {
		r = bufio.NewReader(in)
	}
	code := 0
	for ctx.Err() == nil {
		if sh.tty {
			fmt.Fprint(out, "# ")
		}
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) != "" {
			var exit bool
			code, exit = sh.run(ctx, line, r, out, errw)
			if exit {
				return code
			}
		}
		if err != nil {
			return code
		}
	}
	return 130
}

// script runs src as sh -c does.
func (sh *shell) script(ctx context.Context, src string, in io.Reader, out, errw io.Writer) int {
	code, _ := sh.run(ctx, src, in, out, errw)
	return code
}

// run parses and runs a list of commands; exit reports an `exit`.
func (sh *shell) run(ctx context.Context, src string, in io.Reader, out, errw io.Writer) (code int, exit bool) {
	list, err := parse(src)
	if err != nil {
		fmt.Fprintf(errw, "sh: 1: %v\n", err)
		return 2, false
	}
	for i, c := range list {
		if i > 0 {
			switch list[i-1].then {
			case "&&":
				if code != 0 {
					continue
				}
			case "||":
				if code == 0 {
					continue
				}
			}
		}
		code, exit = sh.simple(ctx, c, in, out, errw)
		sh.last = code
		if exit {
			return code, true
		}
	}
	return code, false
}

// simple runs one parsed command with its expansions, variable
// assignments and redirections.
func (sh *shell) simple(ctx context.Context, c parsed, in io.Reader, out, errw io.Writer) (int, bool) {
	var argv []string
	assign := map[string]string{}
	for _, w := range c.argv {
		s, err := sh.expand(w)
		if err != nil {
			fmt.Fprintf(errw, "sh: 1: %v\n", err)
			return 2, false
		}
		if name, value, ok := strings.Cut(s, "="); ok && len(argv) == 0 && len(w) > 0 && w[0].kind == 0 &&
			strings.Contains(w[0].text, "=") && validName(name) {
			assign[name] = value
			continue
		}
		argv = append(argv, s)
	}
	run := sh
	if len(argv) == 0 {
		for k, v := range assign {
			sh.env[k] = v
		}
	} else if len(assign) > 0 {
		// NAME=value cmd: the variables are the command's alone.
		sub := *sh
		sub.env = make(map[string]string, len(sh.env)+len(assign))
		for k, v := range sh.env {
			sub.env[k] = v
		}
		for k, v := range assign {
			sub.env[k] = v
		}
		run = &sub
	}

	type sink struct {
		path   string
		buf    *bytes.Buffer
		append bool
	}
	var sinks []sink
	for _, r := range c.redirs {
		target, err := sh.expand(r.target)
		if err != nil {
			fmt.Fprintf(errw, "sh: 1: %v\n", err)
			return 2, false
		}
		var w io.Writer
		switch {
		case r.op == "<":
			if target == "/dev/null" {
				in = strings.NewReader("")
				continue
			}
			b, err := sh.read(target)
			if err != nil {
				fmt.Fprintf(errw, "sh: 1: cannot open %s: %v\n", target, err)
				return 2, false
			}
			in = bytes.NewReader(b)
			continue
		case r.dup == 1:
			w = out
		case r.dup == 2:
			w = errw
		case target == "/dev/null":
			w = io.Discard
		default:
			if !sh.isDir(path.Dir(cleanPath(sh.cwd, target))) {
				fmt.Fprintf(errw, "sh: 1: cannot create %s: Directory nonexistent\n", target)
				return 2, false
			}
			s := sink{path: target, buf: &bytes.Buffer{}, append: r.op == ">>"}
			if err := sh.write(s.path, nil, s.append); err != nil {
				fmt.Fprintf(errw, "sh: 1: cannot create %s: %v\n", target, err)
				return 2, false
			}
			sinks = append(sinks, s)
			w = s.buf
		}
		if r.fd == 2 {
			errw = w
		} else {
			out = w
		}
	}
	code, exit := run.command(ctx, argv, in, out, errw)
	for _, s := range sinks {
		if err := sh.write(s.path, s.buf.Bytes(), true); err != nil {
			fmt.Fprintf(errw, "sh: 1: write %s: %v\n", s.path, err)
			code = 2
		}
	}
	return code, exit
}

func (sh *shell) test(args []string) bool {
	if len(args) > 0 && args[0] == "!" {
		return !sh.test(args[1:])
	}
	switch len(args) {
	case 0:
		return false
	case 1:
		return args[0] != ""
	case 2:
		switch args[0] {
		case "-e":
			return sh.exists(args[1])
		case "-f":
			_, err := sh.read(args[1])
			return err == nil
		case "-d":
			return sh.isDir(args[1])
		case "-n":
			return args[1] != ""
		case "-z":
			return args[1] == ""
		}
	case 3:
		switch args[1] {
		case "=", "==":
			return args[0] == args[2]
		case "!=":
			return args[0] != args[2]
		}
	}
	return false
}

// cleanPath resolves p against dir into an absolute, clean path.
func cleanPath(dir, p string) string {
	if !strings.HasPrefix(p, "/") {
		p = dir + "/" + p
	}
	return path.Clean(p)
}

// key is the node's file key of p: no leading slash, "" for the root.
func (sh *shell) key(p string) string { return strings.TrimPrefix(cleanPath(sh.cwd, p), "/") }

//lint:ignore ST1005 the words a shell prints
var errNoEntry = errors.New("No such file or directory")

func (sh *shell) read(p string) ([]byte, error) {
	sh.m.mu.Lock()
	defer sh.m.mu.Unlock()
	f, ok := sh.node.files[sh.key(p)]
	if !ok {
		return nil, errNoEntry
	}
	return append([]byte(nil), f.data...), nil
}

// mainOutput are the paths through which a command in a node writes to
// its main process's stdout and stderr: what the node's logs hold.
var mainOutput = map[string]bool{"proc/1/fd/1": true, "proc/1/fd/2": true}

// write stores data at p, appending or replacing; the directory it is in
// must exist. Data written to mainOutput goes to the node's logs.
func (sh *shell) write(p string, data []byte, appendTo bool) error {
	sh.m.mu.Lock()
	defer sh.m.mu.Unlock()
	k := sh.key(p)
	if mainOutput[k] {
		// The engine's log: each line after the time it came.
		stamp := sh.m.o.Now().UTC().Format(time.RFC3339Nano) + " "
		for len(data) > 0 {
			line, rest, _ := bytes.Cut(data, []byte("\n"))
			sh.node.logs = append(append(append(sh.node.logs, stamp...), line...), '\n')
			data = rest
		}
		return nil
	}
	if d := path.Dir("/" + k); d != "/" && !sh.node.dirs[strings.TrimPrefix(d, "/")] {
		return errNoEntry
	}
	if sh.node.dirs[k] || k == "" {
		//lint:ignore ST1005 the words a shell prints
		return errors.New("Is a directory")
	}
	f := sh.node.files[k]
	if appendTo {
		f.data = append(f.data, data...)
	} else {
		f.data = append([]byte(nil), data...)
	}
	f.mod = sh.m.o.Now()
	sh.node.files[k] = f
	return nil
}

func (sh *shell) isDir(p string) bool {
	sh.m.mu.Lock()
	defer sh.m.mu.Unlock()
	k := sh.key(p)
	return k == "" || sh.node.dirs[k] || k == "proc/1/fd"
}

func (sh *shell) exists(p string) bool {
	sh.m.mu.Lock()
	_, ok := sh.node.files[sh.key(p)]
	sh.m.mu.Unlock()
	return ok || sh.isDir(p)
}

func (sh *shell) rm(args []string, fail func(string, ...any) int) int {
	force, recursive := false, false
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && len(args[0]) > 1 {
		force = force || strings.Contains(args[0], "f")
		recursive = recursive || strings.ContainsAny(args[0], "rR")
		args = args[1:]
	}
	code := 0
	sh.m.mu.Lock()
	defer sh.m.mu.Unlock()
	for _, a := range args {
		k := sh.key(a)
		switch {
		case sh.node.dirs[k] && recursive:
			delete(sh.node.dirs, k)
			for p := range sh.node.files {
				if strings.HasPrefix(p, k+"/") {
					delete(sh.node.files, p)
				}
			}
			for d := range sh.node.dirs {
				if strings.HasPrefix(d, k+"/") {
					delete(sh.node.dirs, d)
				}
			}
		case sh.node.dirs[k]:
			code = fail("cannot remove '%s': Is a directory", a)
		default:
			if _, ok := sh.node.files[k]; !ok && !force {
				code = fail("cannot remove '%s': %v", a, errNoEntry)
			}
			delete(sh.node.files, k)
		}
	}
	return code
}

func (sh *shell) mkdir(args []string, fail func(string, ...any) int) int {
	parents := len(args) > 0 && args[0] == "-p"
	if parents {
		args = args[1:]
	}
	code := 0
	sh.m.mu.Lock()
	defer sh.m.mu.Unlock()
	for _, a := range args {
		k := sh.key(a)
		if k == "" || sh.node.dirs[k] {
			if !parents {
				code = fail("cannot create directory '%s': File exists", a)
			}
			continue
		}
		parent := strings.TrimPrefix(path.Dir("/"+k), "/")
		if parent != "" && !sh.node.dirs[parent] && !parents {
			code = fail("cannot create directory '%s': %v", a, errNoEntry)
			continue
		}
		for d := k; d != "" && d != "."; d = strings.TrimPrefix(path.Dir("/"+d), "/") {
			sh.node.dirs[d] = true
		}
	}
	return code
}

func (sh *shell) ls(args []string, out io.Writer, fail func(string, ...any) int) int {
	dir := sh.cwd
	if len(args) > 0 {
		dir = args[0]
	}
	if !sh.isDir(dir) {
		if _, err := sh.read(dir); err == nil {
			fmt.Fprintln(out, dir)
			return 0
		}
		return fail("cannot access '%s': %v", dir, errNoEntry) + 1
	}
	k := sh.key(dir)
	prefix := k + "/"
	if k == "" {
		prefix = ""
	}
	names := map[string]bool{}
	sh.m.mu.Lock()
	for p := range sh.node.files {
		if rest, ok := strings.CutPrefix(p, prefix); ok && !strings.Contains(rest, "/") {
			names[rest] = true
		}
	}
	for d := range sh.node.dirs {
		if rest, ok := strings.CutPrefix(d, prefix); ok && rest != "" && !strings.Contains(rest, "/") {
			names[rest] = true
		}
	}
	sh.m.mu.Unlock()
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		fmt.Fprintln(out, n)
	}
	return 0
}
