// Command xtermbundle turns Debian's xterm.js 3.x CommonJS modules
// (node-xterm's lib/, plus libjs-xterm's addons) into one browser script
// that defines window.Terminal and window.TerminalAddons. Debian ships the
// library only as separate CommonJS files, and no npm bundler is available
// here, so examlab bundles it itself: each module becomes a function in a
// small registry with a require that resolves relative paths.
//
//	go run ./deploy/xtermbundle -lib /usr/share/nodejs/xterm/lib \
//	    -addons /usr/share/javascript/xterm/addons -o api/web/vendor/xterm/xterm.js
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

func main() {
	lib := flag.String("lib", "/usr/share/nodejs/xterm/lib", "node-xterm's lib folder")
	addons := flag.String("addons", "/usr/share/javascript/xterm/addons", "libjs-xterm's addons folder")
	out := flag.String("o", "xterm.js", "output file")
	flag.Parse()
	if err := run(*lib, *addons, *out); err != nil {
		fmt.Fprintln(os.Stderr, "xtermbundle:", err)
		os.Exit(1)
	}
}

// sourceMap lines point at files the browser will never have.
var sourceMap = regexp.MustCompile(`(?m)^//# sourceMappingURL=.*$`)

func run(lib, addons, out string) error {
	mods := map[string][]byte{}
	if err := collect(lib, "", mods); err != nil {
		return err
	}
	if err := collect(addons, "addons/", mods); err != nil {
		return err
	}
	if _, ok := mods["public/Terminal.js"]; !ok {
		return fmt.Errorf("no public/Terminal.js under %s: is node-xterm installed?", lib)
	}
	names := make([]string, 0, len(mods))
	for n := range mods {
		names = append(names, n)
	}
	sort.Strings(names)

	var b bytes.Buffer
	b.WriteString("/* xterm.js 3.x from Debian's node-xterm and libjs-xterm, bundled by examlab's deploy/xtermbundle. */\n")
	b.WriteString("(function () {\n'use strict';\nvar defs = {}, cache = {};\n")
	for _, n := range names {
		key, _ := json.Marshal(strings.TrimSuffix(n, ".js"))
		fmt.Fprintf(&b, "defs[%s] = function (module, exports, require) {\n%s\n};\n", key, sourceMap.ReplaceAll(mods[n], nil))
	}
	b.WriteString(`function resolve(from, name) {
  var parts = name.charAt(0) === '.' ? from.split('/').slice(0, -1).concat(name.split('/')) : name.split('/');
  var outp = [];
  for (var i = 0; i < parts.length; i++) {
    if (parts[i] === '..') { outp.pop(); } else if (parts[i] !== '.' && parts[i] !== '') { outp.push(parts[i]); }
  }
  var id = outp.join('/').replace(/\.js$/, '');
  if (defs[id]) { return id; }
  if (defs[id + '/index']) { return id + '/index'; }
  throw new Error('xterm bundle: cannot resolve ' + name + ' from ' + from);
}
function load(id) {
  if (cache[id]) { return cache[id].exports; }
  var module = { exports: {} };
  cache[id] = module;
  defs[id].call(module.exports, module, module.exports, function (name) { return load(resolve(id, name)); });
  return module.exports;
}
window.Terminal = load('public/Terminal').Terminal;
window.TerminalAddons = {};
Object.keys(defs).forEach(function (id) {
  var m = /^addons\/([^/]+)\/([^/]+)$/.exec(id);
  if (m && m[1] === m[2]) {
    try { window.TerminalAddons[m[1]] = load(id); } catch (e) { /* an addon that needs Node stays out */ }
  }
});
})();
`)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// collect reads every module under root (tests and source maps left out)
// into mods, keyed by prefix + its path relative to root.
func collect(root, prefix string, mods map[string][]byte) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".js") || strings.HasSuffix(p, ".test.js") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		mods[prefix+path.Clean(filepath.ToSlash(rel))] = src
		return nil
	})
}
