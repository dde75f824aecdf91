package auth

import (
	"time"

	"github.com/gofiber/fiber/v2"
)

// Cookie is a credential cookie: HttpOnly, SameSite=Strict, for the whole
// site, Secure when the deployment is served over HTTPS.
func Cookie(name, value string, secure bool, ttl time.Duration) *fiber.Cookie {
	return &fiber.Cookie{
		Name:     name,
		Value:    value,
		Path:     "/",
		HTTPOnly: true,
		Secure:   secure,
		SameSite: fiber.CookieSameSiteStrictMode,
		Expires:  time.Now().Add(ttl),
	}
}

// ClearCookie is the cookie that removes name from the browser.
func ClearCookie(name string, secure bool) *fiber.Cookie {
	c := Cookie(name, "", secure, 0)
	c.Expires = time.Unix(1, 0)
	return c
}
