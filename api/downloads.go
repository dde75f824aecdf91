package api

import (
	"errors"
	"fmt"
	"mime"
	"os"
	"path/filepath"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/store"
)

// downloadFolders maps the URL's folder names to the session's folders an
// admin may download from.
var downloadFolders = map[string]string{
	"snapshots":     store.SnapshotDir,
	"terminal-logs": store.TerminalDir,
}

// downloadRoutes adds
//
//	GET /api/admin/session/:id/files/:folder/:name
//
// which streams one file of a session's record (a filesystem tar, a log, a
// terminal recording) from disk: the body is never held in memory, so a
// multi-gigabyte tar costs no more than a small log.
func (s *Server) downloadRoutes(adm fiber.Router) {
	adm.Get("/session/:id/files/:folder/:name", s.adminDownload)
}

func contentType(name string) string {
	switch {
	case strings.HasSuffix(name, ".tar"):
		return "application/x-tar"
	case strings.HasSuffix(name, ".cast"):
		// asciicast v2 is newline-delimited JSON.
		return "application/x-asciicast"
	case strings.HasSuffix(name, ".json"):
		return fiber.MIMEApplicationJSONCharsetUTF8
	case strings.HasSuffix(name, ".log"):
		return fiber.MIMETextPlainCharsetUTF8
	}
	return fiber.MIMEOctetStream
}

func (s *Server) adminDownload(c *fiber.Ctx) error {
	ctx := c.UserContext()
	id, name := c.Params("id"), c.Params("name")
	folder, ok := downloadFolders[c.Params("folder")]
	if !ok {
		return fail(fiber.StatusNotFound, "no folder "+quote(c.Params("folder"))+"; use snapshots or terminal-logs")
	}
	if _, err := s.o.Store.Get(ctx, id); err != nil {
		return err
	}
	p, err := s.o.Store.FilePath(id, folder, name)
	if err != nil {
		return err
	}
	// Only a regular file directly in the folder: no symlink is followed
	// out of the session's record.
	info, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return fail(fiber.StatusNotFound, "no file "+quote(name))
	}
	if err != nil {
		return fmt.Errorf("stat download: %w", err)
	}
	if !info.Mode().IsRegular() {
		return fail(fiber.StatusNotFound, "no file "+quote(name))
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open download: %w", err)
	}
	c.Set(fiber.HeaderContentType, contentType(name))
	c.Set(fiber.HeaderContentDisposition, mime.FormatMediaType("attachment", map[string]string{"filename": filepath.Base(name)}))
	if m, err := s.o.Store.Manifest(ctx, id); err == nil && folder == store.SnapshotDir {
		for _, mf := range m.Files {
			if mf.Name == name && mf.SHA256 != "" {
				// The checksum the archive recorded, so a client can verify
				// what it received.
				c.Set("X-Checksum-Sha256", mf.SHA256)
			}
		}
	}
	// SendStream hands the file to the server, which copies it out in
	// chunks and closes it when done.
	return c.SendStream(f, int(info.Size()))
}
