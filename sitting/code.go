package sitting

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// codeAlphabet is Crockford's base32: digits and letters without I, L, O
// and U, so a code read aloud or copied from paper is hard to get wrong.
const codeAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// CodeLength is the number of characters in an access code: 16 of 32
// symbols, 80 bits.
const CodeLength = 16

// NewCode returns a fresh access code in its display form, four groups of
// four (7KQ2-M9XD-4HTV-P0RC), and the hash under which it is stored.
func NewCode() (code, hash string) {
	var b [CodeLength]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	var sb strings.Builder
	for i, x := range b {
		if i > 0 && i%4 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(codeAlphabet[x&31]) // 256 is a multiple of 32: no bias
	}
	code = sb.String()
	n, _ := NormalizeCode(code)
	return code, HashCode(n)
}

// NormalizeCode returns the canonical form of a code as a person typed it:
// case, spaces and dashes do not matter, and the letters Crockford's
// alphabet leaves out are read as the digits they look like (O as 0, I
// and L as 1). A code of the wrong length or with other characters is
// ErrBadCode.
func NormalizeCode(s string) (string, error) {
	var sb strings.Builder
	for _, r := range strings.ToUpper(s) {
		switch {
		case r == '-' || r == ' ':
			continue
		case r == 'O':
			r = '0'
		case r == 'I' || r == 'L':
			r = '1'
		}
		if r > 127 || !strings.ContainsRune(codeAlphabet, r) || sb.Len() >= CodeLength {
			return "", ErrBadCode
		}
		sb.WriteRune(r)
	}
	if sb.Len() != CodeLength {
		return "", ErrBadCode
	}
	return sb.String(), nil
}

// HashCode is the stored form of a normalized code. Codes carry 80 random
// bits, so a plain hash leaves a leaked roster file useless for signing in.
func HashCode(normalized string) string {
	h := sha256.Sum256([]byte("examlab-access-code:" + normalized))
	return hex.EncodeToString(h[:])
}
