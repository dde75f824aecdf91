package api

import (
	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/evidence"
	"github.com/examlab/examlab/store"
)

// evidenceRoutes adds
//
//	GET  /api/admin/signing-key          the public key that seals session folders
//	POST /api/admin/session/:id/verify   hash the session's files against its seal now
func (s *Server) evidenceRoutes(adm fiber.Router) {
	adm.Get("/signing-key", s.adminSigningKey)
	adm.Post("/session/:id/verify", s.adminVerify)
}

// adminSigningKey gives the deployment's public key as JSON, or with
// ?format=pem as the PEM file `examlab verify -key` reads.
func (s *Server) adminSigningKey(c *fiber.Ctx) error {
	pub := s.o.Store.SigningKey()
	if pub == nil {
		return fail(fiber.StatusNotFound, "this deployment seals no evidence")
	}
	pemKey := evidence.PublicKeyPEM(pub)
	switch c.Query("format", "json") {
	case "pem":
		c.Set(fiber.HeaderContentType, "application/x-pem-file")
		c.Set(fiber.HeaderContentDisposition, `attachment; filename="examlab-signing-key.pub"`)
		return c.Send(pemKey)
	case "json":
		return c.JSON(fiber.Map{"algorithm": "ed25519", "fingerprint": evidence.Fingerprint(pub), "public_key": string(pemKey)})
	default:
		return fail(fiber.StatusBadRequest, "format must be json or pem")
	}
}

// adminVerify hashes every file of the session against its seal, whatever
// the last verification found.
func (s *Server) adminVerify(c *fiber.Ctx) error {
	ctx := c.UserContext()
	if _, err := s.o.Store.Get(ctx, c.Params("id")); err != nil {
		return err
	}
	st, err := s.o.Store.Evidence(ctx, c.Params("id"), true)
	if err != nil {
		return err
	}
	return c.JSON(st)
}

// listedSession is a session of the admin listing with its evidence state.
type listedSession struct {
	store.Summary
	Evidence store.EvidenceStatus `json:"evidence"`
}

// withEvidence adds each listed session's verification state, as the
// store knows it without hashing (see Store.EvidenceStates).
func (s *Server) withEvidence(c *fiber.Ctx, sums []store.Summary) ([]listedSession, error) {
	ids := make([]string, len(sums))
	for i, x := range sums {
		ids[i] = x.ID
	}
	states, err := s.o.Store.EvidenceStates(c.UserContext(), ids)
	if err != nil {
		return nil, err
	}
	out := make([]listedSession, len(sums))
	for i, x := range sums {
		out[i] = listedSession{Summary: x, Evidence: states[x.ID]}
	}
	return out, nil
}
