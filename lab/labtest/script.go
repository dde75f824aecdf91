package labtest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// parsed is one simple command of a list.
type parsed struct {
	argv   []word
	redirs []redir
	// then joins it to the next command: ";", "&&" or "||".
	then string
}

type redir struct {
	fd     int    // 0, 1 or 2: the stream redirected
	op     string // ">", ">>" or "<"
	target word   // a path, unless dup is set
	dup    int    // >&N: the stream to join
}

// word is one word of a command as written: literal text and the
// expansions to make when the command runs.
type word []part

type part struct {
	// kind is 0 for literal text, '$' for a parameter ($NAME, ${NAME},
	// $?) and '(' for an arithmetic expansion $((…)).
	kind byte
	text string
}

// parse splits a script into simple commands. It knows quotes, the list
// operators, redirections and $ expansions, and nothing of pipes, globs,
// or word splitting of expanded text.
func parse(src string) ([]parsed, error) {
	var list []parsed
	cur := parsed{}
	var w word
	var lit strings.Builder
	inWord := false
	var pending *redir // a redirection waiting for its target
	flush := func() {
		if lit.Len() > 0 {
			w = append(w, part{text: lit.String()})
			lit.Reset()
		}
	}
	endWord := func() {
		if !inWord {
			return
		}
		flush()
		if pending != nil {
			pending.target = w
			cur.redirs = append(cur.redirs, *pending)
			pending = nil
		} else {
			cur.argv = append(cur.argv, w)
		}
		w, inWord = nil, false
	}
	endCommand := func(then string) error {
		endWord()
		if pending != nil {
			return errors.New("syntax error: redirection without a target")
		}
		if len(cur.argv) == 0 && len(cur.redirs) == 0 {
			if then == ";" {
				return nil
			}
			return fmt.Errorf("syntax error: %q unexpected", then)
		}
		cur.then = then
		list = append(list, cur)
		cur = parsed{}
		return nil
	}
	// dollar reads the expansion at src[i] == '$' and returns where it ends.
	dollar := func(i int) (int, error) {
		rest := src[i+1:]
		switch {
		case strings.HasPrefix(rest, "(("):
			// The expansion ends at the "))" that closes it, past any
			// parentheses inside.
			depth, end := 0, -1
			for k := 2; k < len(rest) && end < 0; k++ {
				switch {
				case rest[k] == '(':
					depth++
				case rest[k] == ')' && depth > 0:
					depth--
				case rest[k] == ')' && k+1 < len(rest) && rest[k+1] == ')':
					end = k
				}
			}
			if end < 0 {
				return 0, errors.New("syntax error: unterminated $((")
			}
			flush()
			w = append(w, part{kind: '(', text: rest[2:end]})
			return i + 1 + end + 2, nil
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return 0, errors.New("syntax error: unterminated ${")
			}
			flush()
			w = append(w, part{kind: '$', text: rest[1:end]})
			return i + 1 + end + 1, nil
		case strings.HasPrefix(rest, "?"):
			flush()
			w = append(w, part{kind: '$', text: "?"})
			return i + 2, nil
		}
		n := 0
		for n < len(rest) && (rest[n] == '_' || isAlpha(rest[n]) || n > 0 && isDigit(rest[n])) {
			n++
		}
		if n == 0 {
			lit.WriteByte('$')
			return i + 1, nil
		}
		flush()
		w = append(w, part{kind: '$', text: rest[:n]})
		return i + 1 + n, nil
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(src[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("syntax error: unterminated quoted string")
			}
			lit.WriteString(src[i+1 : i+1+j])
			inWord = true
			i += j + 2
		case c == '"':
			inWord = true
			i++
			for i < len(src) && src[i] != '"' {
				switch {
				case src[i] == '\\' && i+1 < len(src) && strings.IndexByte(`"\$`+"`", src[i+1]) >= 0:
					lit.WriteByte(src[i+1])
					i += 2
				case src[i] == '$':
					next, err := dollar(i)
					if err != nil {
						return nil, err
					}
					i = next
				default:
					lit.WriteByte(src[i])
					i++
				}
			}
			if i >= len(src) {
				return nil, errors.New("syntax error: unterminated quoted string")
			}
			i++
		case c == '$':
			next, err := dollar(i)
			if err != nil {
				return nil, err
			}
			inWord = true
			i = next
		case c == '\\' && i+1 < len(src):
			lit.WriteByte(src[i+1])
			inWord = true
			i += 2
		case c == ' ' || c == '\t' || c == '\r':
			endWord()
			i++
		case c == '\n' || c == ';':
			if err := endCommand(";"); err != nil {
				return nil, err
			}
			i++
		case c == '&' && i+1 < len(src) && src[i+1] == '&', c == '|' && i+1 < len(src) && src[i+1] == '|':
			if err := endCommand(src[i : i+2]); err != nil {
				return nil, err
			}
			i += 2
		case c == '&' || c == '|':
			return nil, fmt.Errorf("syntax error: %q is not supported", c)
		case c == '>' || c == '<':
			r := redir{fd: 1, op: string(c)}
			if c == '<' {
				r.fd = 0
			}
			// A lone digit right before the operator names the stream.
			if inWord && len(w) == 0 && (lit.String() == "1" || lit.String() == "2") && i > 0 && src[i-1] == lit.String()[0] {
				r.fd = int(src[i-1] - '0')
				lit.Reset()
				inWord = false
			}
			endWord()
			if pending != nil {
				return nil, errors.New("syntax error: redirection without a target")
			}
			i++
			if c == '>' && i < len(src) && src[i] == '>' {
				r.op = ">>"
				i++
			}
			if c == '>' && i+1 < len(src) && src[i] == '&' && (src[i+1] == '1' || src[i+1] == '2') {
				r.dup = int(src[i+1] - '0')
				cur.redirs = append(cur.redirs, r)
				i += 2
				continue
			}
			pending = &r
		default:
			lit.WriteByte(c)
			inWord = true
			i++
		}
	}
	if err := endCommand(";"); err != nil {
		return nil, err
	}
	if len(list) > 0 && list[len(list)-1].then != ";" {
		return nil, errors.New("syntax error: end of file unexpected")
	}
	return list, nil
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// validName reports whether s can name a variable.
func validName(s string) bool {
	if s == "" || isDigit(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '_' && !isAlpha(s[i]) && !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// expand makes a word's expansions with the shell's variables.
func (sh *shell) expand(w word) (string, error) {
	var b strings.Builder
	for _, p := range w {
		switch p.kind {
		case 0:
			b.WriteString(p.text)
		case '$':
			if p.text == "?" {
				b.WriteString(strconv.Itoa(sh.last))
			} else {
				b.WriteString(sh.env[p.text])
			}
		case '(':
			n, err := sh.arith(p.text)
			if err != nil {
				return "", err
			}
			b.WriteString(strconv.FormatInt(n, 10))
		}
	}
	return b.String(), nil
}

// arith evaluates an arithmetic expansion: integers, variables, + - * / %
// and parentheses.
func (sh *shell) arith(src string) (int64, error) {
	a := &arith{src: src, vars: sh.env}
	n, err := a.sum()
	if err == nil && a.skip() < len(src) {
		err = fmt.Errorf("arithmetic expression: unexpected %q", src[a.pos:])
	}
	return n, err
}

type arith struct {
	src  string
	pos  int
	vars map[string]string
}

func (a *arith) skip() int {
	for a.pos < len(a.src) && a.src[a.pos] == ' ' {
		a.pos++
	}
	return a.pos
}

func (a *arith) sum() (int64, error) {
	n, err := a.product()
	for err == nil && a.skip() < len(a.src) && (a.src[a.pos] == '+' || a.src[a.pos] == '-') {
		op := a.src[a.pos]
		a.pos++
		var m int64
		if m, err = a.product(); op == '+' {
			n += m
		} else {
			n -= m
		}
	}
	return n, err
}

func (a *arith) product() (int64, error) {
	n, err := a.unary()
	for err == nil && a.skip() < len(a.src) && strings.IndexByte("*/%", a.src[a.pos]) >= 0 {
		op := a.src[a.pos]
		a.pos++
		var m int64
		if m, err = a.unary(); err != nil {
			break
		}
		switch {
		case op == '*':
			n *= m
		case m == 0:
			return 0, errors.New("arithmetic expression: division by zero")
		case op == '/':
			n /= m
		default:
			n %= m
		}
	}
	return n, err
}

func (a *arith) unary() (int64, error) {
	if a.skip() >= len(a.src) {
		return 0, errors.New("arithmetic expression: expecting primary")
	}
	switch c := a.src[a.pos]; {
	case c == '-':
		a.pos++
		n, err := a.unary()
		return -n, err
	case c == '(':
		a.pos++
		n, err := a.sum()
		if err == nil && (a.skip() >= len(a.src) || a.src[a.pos] != ')') {
			err = errors.New("arithmetic expression: expecting )")
		}
		a.pos++
		return n, err
	case isDigit(c):
		start := a.pos
		for a.pos < len(a.src) && isDigit(a.src[a.pos]) {
			a.pos++
		}
		return strconv.ParseInt(a.src[start:a.pos], 10, 64)
	case c == '$' || c == '_' || isAlpha(c):
		if c == '$' {
			a.pos++
		}
		start := a.pos
		for a.pos < len(a.src) && (a.src[a.pos] == '_' || isAlpha(a.src[a.pos]) || isDigit(a.src[a.pos])) {
			a.pos++
		}
		n, _ := strconv.ParseInt(a.vars[a.src[start:a.pos]], 10, 64)
		return n, nil
	}
	return 0, fmt.Errorf("arithmetic expression: unexpected %q", a.src[a.pos:])
}
