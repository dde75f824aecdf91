package evidence

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// KeyFile is the signing key's name in the state directory.
const KeyFile = "signing.key"

// Errors about keys; the message names the file and what to do.
var (
	ErrKeyPermissions = errors.New("signing key is readable or writable by others")
	ErrBadKey         = errors.New("not an ed25519 key")
)

// LoadOrCreateKey returns the deployment's signing key from
// {stateDir}/signing.key, generating it on first run. The file is written
// whole to a temp file and linked into place, which fails if the name
// exists: of two processes starting together one wins and the other reads
// the winner's key, so the deployment has exactly one.
func LoadOrCreateKey(stateDir string) (key ed25519.PrivateKey, created bool, err error) {
	path := filepath.Join(stateDir, KeyFile)
	key, err = LoadKey(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return key, false, err
	}
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return nil, false, fmt.Errorf("create state dir: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, fmt.Errorf("encode signing key: %w", err)
	}
	tmp, err := os.CreateTemp(stateDir, "."+KeyFile+".tmp-*")
	if err != nil {
		return nil, false, fmt.Errorf("write signing key: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600 already; say so rather than rely on it.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("write signing key: %w", err)
	}
	if err := pem.Encode(tmp, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("write signing key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("write signing key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, false, fmt.Errorf("write signing key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, os.ErrExist) {
		key, err := LoadKey(path)
		return key, false, err
	} else if err != nil {
		return nil, false, fmt.Errorf("write signing key: %w", err)
	}
	if err := syncDir(stateDir); err != nil {
		return nil, false, err
	}
	return priv, true, nil
}

// LoadKey reads a signing key written by LoadOrCreateKey. A key that others
// may read or write is refused: anyone who can read it can sign evidence.
func LoadKey(path string) (ed25519.PrivateKey, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("signing key %s: not a regular file: %w", path, ErrBadKey)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("signing key %s has mode %04o; run chmod 600 on it: %w", path, perm, ErrKeyPermissions)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: no PEM PRIVATE KEY block: %w", path, ErrBadKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %v: %w", path, err, ErrBadKey)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: a %T: %w", path, k, ErrBadKey)
	}
	return priv, nil
}

// PublicKeyPEM encodes a public key as a PEM PUBLIC KEY block (PKIX), the
// form `examlab verify -key` and openssl read.
func PublicKeyPEM(pub ed25519.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err) // an ed25519 key always encodes
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ParsePublicKey reads a verification key: a PEM PUBLIC KEY block, or the
// signing key's own PEM PRIVATE KEY block (its public half is used).
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("no PEM block (want PUBLIC KEY): %w", ErrBadKey)
	}
	var k any
	var err error
	switch blk.Type {
	case "PUBLIC KEY":
		k, err = x509.ParsePKIXPublicKey(blk.Bytes)
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("a PEM %s block (want PUBLIC KEY): %w", blk.Type, ErrBadKey)
	}
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrBadKey)
	}
	switch k := k.(type) {
	case ed25519.PublicKey:
		return k, nil
	case ed25519.PrivateKey:
		return k.Public().(ed25519.PublicKey), nil
	default:
		return nil, fmt.Errorf("a %T: %w", k, ErrBadKey)
	}
}

// Fingerprint names a public key briefly: SHA256: and the unpadded base64
// of the sha256 of the key's 32 bytes.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
