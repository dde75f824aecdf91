package jobspecs

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/nomad/api"
)

// NomadJobHCL renders a job produced by NomadJob as HCL2 jobspec, for people
// who read or edit jobs in that form. It knows the blocks NomadJob sets and
// nothing else; the JSON form is the one the runtime registers.
func NomadJobHCL(job *api.Job) ([]byte, error) {
	if job == nil || job.ID == nil {
		return nil, fmt.Errorf("render job as hcl: no job")
	}
	w := &hclWriter{}
	w.open("job %s", quote(*job.ID))
	if job.Namespace != nil {
		w.attr("namespace", *job.Namespace)
	}
	if job.Region != nil {
		w.attr("region", *job.Region)
	}
	w.attr("datacenters", job.Datacenters)
	w.attr("type", deref(job.Type))
	w.attr("priority", deref(job.Priority))
	w.mapBlock("meta", job.Meta)
	for _, g := range job.TaskGroups {
		if err := w.group(g); err != nil {
			return nil, err
		}
	}
	w.close()
	return w.buf.Bytes(), nil
}

type hclWriter struct {
	buf   bytes.Buffer
	depth int
}

func (w *hclWriter) line(format string, args ...any) {
	w.buf.WriteString(strings.Repeat("  ", w.depth))
	fmt.Fprintf(&w.buf, format, args...)
	w.buf.WriteByte('\n')
}

func (w *hclWriter) open(format string, args ...any) {
	w.line(format+" {", args...)
	w.depth++
}

func (w *hclWriter) close() {
	w.depth--
	w.line("}")
}

func (w *hclWriter) attr(name string, v any) {
	w.line("%s = %s", name, hclValue(v))
}

func (w *hclWriter) mapBlock(name string, m map[string]string) {
	if len(m) == 0 {
		return
	}
	// The attribute form: block arguments cannot be quoted, and meta keys
	// here have dots in them.
	w.open("%s =", name)
	for _, k := range sortedKeys(m) {
		w.line("%s = %s", quote(k), quote(m[k]))
	}
	w.close()
}

func (w *hclWriter) group(g *api.TaskGroup) error {
	w.open("group %s", quote(deref(g.Name)))
	w.attr("count", deref(g.Count))
	if r := g.RestartPolicy; r != nil {
		w.open("restart")
		w.attr("attempts", deref(r.Attempts))
		w.attr("interval", deref(r.Interval))
		w.attr("delay", deref(r.Delay))
		w.attr("mode", deref(r.Mode))
		w.close()
	}
	if r := g.ReschedulePolicy; r != nil {
		w.open("reschedule")
		w.attr("attempts", deref(r.Attempts))
		w.attr("unlimited", deref(r.Unlimited))
		w.close()
	}
	if d := g.Disconnect; d != nil {
		w.open("disconnect")
		if d.LostAfter != nil {
			w.attr("lost_after", *d.LostAfter)
		}
		if d.Replace != nil {
			w.attr("replace", *d.Replace)
		}
		if d.Reconcile != nil {
			w.attr("reconcile", *d.Reconcile)
		}
		w.close()
	}
	if u := g.Update; u != nil && u.MaxParallel != nil {
		w.open("update")
		w.attr("max_parallel", *u.MaxParallel)
		w.close()
	}
	for _, t := range g.Tasks {
		if err := w.task(t); err != nil {
			return err
		}
	}
	w.close()
	return nil
}

func (w *hclWriter) task(t *api.Task) error {
	w.open("task %s", quote(t.Name))
	w.attr("driver", t.Driver)
	if l := t.Lifecycle; l != nil {
		w.open("lifecycle")
		w.attr("hook", l.Hook)
		w.attr("sidecar", l.Sidecar)
		w.close()
	}
	w.open("config")
	for _, k := range sortedKeys(t.Config) {
		switch v := t.Config[k].(type) {
		case []map[string]string:
			// A list of maps is how the driver reads labels and sysctl;
			// in HCL each map is one block. Keys with dots cannot be block
			// arguments, so the block's body is written as a map.
			w.mapAttrs(k, v)
		case []map[string]any:
			// A block the driver repeats, such as mount or logging: its
			// keys are identifiers, its values plain or, as logging's
			// config, a list of maps.
			for _, m := range v {
				w.open("%s", k)
				for _, mk := range sortedKeys(m) {
					if mm, ok := m[mk].([]map[string]string); ok {
						w.mapAttrs(mk, mm)
						continue
					}
					w.attr(mk, m[mk])
				}
				w.close()
			}
		case string, bool, int, []string:
			w.attr(k, v)
		default:
			return fmt.Errorf("render task %s as hcl: config %s has unsupported type %T", t.Name, k, v)
		}
	}
	w.close()
	if r := t.RestartPolicy; r != nil {
		w.open("restart")
		if r.Attempts != nil {
			w.attr("attempts", *r.Attempts)
		}
		if r.Mode != nil {
			w.attr("mode", *r.Mode)
		}
		w.close()
	}
	for _, tmpl := range t.Templates {
		w.template(tmpl)
	}
	if r := t.Resources; r != nil {
		w.open("resources")
		w.attr("cpu", deref(r.CPU))
		w.attr("memory", deref(r.MemoryMB))
		if r.MemoryMaxMB != nil {
			w.attr("memory_max", *r.MemoryMaxMB)
		}
		w.close()
	}
	if t.KillTimeout != nil {
		w.attr("kill_timeout", *t.KillTimeout)
	}
	if l := t.LogConfig; l != nil {
		w.open("logs")
		if l.Disabled != nil {
			w.attr("disabled", *l.Disabled)
		}
		if l.MaxFiles != nil {
			w.attr("max_files", *l.MaxFiles)
		}
		if l.MaxFileSizeMB != nil {
			w.attr("max_file_size", *l.MaxFileSizeMB)
		}
		w.close()
	}
	w.mapBlock("meta", t.Meta)
	w.close()
	return nil
}

// mapAttrs writes a list of maps the way the driver reads labels, sysctl
// and logging's config: each map one `k = { ... }`, its keys quoted, since
// a key may hold dots (net.ipv4.ip_forward, labels).
func (w *hclWriter) mapAttrs(k string, v []map[string]string) {
	for _, m := range v {
		w.open("%s =", k)
		for _, mk := range sortedKeys(m) {
			w.line("%s = %s", quote(mk), quote(m[mk]))
		}
		w.close()
	}
}

// heredocEnd closes a template's data.
const heredocEnd = "EOT"

// template writes a template block. Its data is a heredoc, so a plan reads
// as the JSON it is; HCL still reads "${" and "%{" in a heredoc as
// interpolation, so those are escaped as in a quoted string.
func (w *hclWriter) template(t *api.Template) {
	w.open("template")
	w.attr("destination", deref(t.DestPath))
	if t.ChangeMode != nil {
		w.attr("change_mode", *t.ChangeMode)
	}
	if t.LeftDelim != nil {
		w.attr("left_delimiter", *t.LeftDelim)
	}
	if t.RightDelim != nil {
		w.attr("right_delimiter", *t.RightDelim)
	}
	data := deref(t.EmbeddedTmpl)
	if !strings.HasSuffix(data, "\n") || strings.Contains("\n"+data, "\n"+heredocEnd+"\n") {
		// A heredoc always ends in a newline and ends at its first
		// closing line: data it cannot hold exactly is quoted.
		w.attr("data", data)
	} else {
		w.line("data = <<%s", heredocEnd)
		// Written as it is, not indented: a heredoc keeps its lines' spaces.
		w.buf.WriteString(escapeTemplate(data))
		w.buf.WriteString(heredocEnd + "\n")
	}
	w.close()
}

func hclValue(v any) string {
	switch v := v.(type) {
	case string:
		return quote(v)
	case bool:
		return strconv.FormatBool(v)
	case int:
		return strconv.Itoa(v)
	case time.Duration:
		return quote(v.String())
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	panic(fmt.Sprintf("hcl value of type %T", v))
}

// quote writes an HCL string literal. HCL escapes like JSON, plus "${" and
// "%{", which would start an interpolation or a template directive.
func quote(s string) string {
	return escapeTemplate(strconv.Quote(s))
}

// escapeTemplate escapes what HCL would read as the start of an
// interpolation or a template directive.
func escapeTemplate(s string) string {
	s = strings.ReplaceAll(s, "${", "$${")
	return strings.ReplaceAll(s, "%{", "%%{")
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
