package wsproxy

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// originPattern is one entry of WithAllowedOrigins.
type originPattern struct {
	scheme   string // "" matches any scheme
	host     string // lower case; for a wildcard, the suffix after "*."
	port     string // "" matches any port
	wildcard bool
	null     bool // the literal "null" origin
}

func parseOriginPattern(s string) (originPattern, error) {
	var p originPattern
	if s == "null" {
		p.null = true
		return p, nil
	}
	rest := s
	if i := strings.Index(rest, "://"); i >= 0 {
		p.scheme = strings.ToLower(rest[:i])
		rest = rest[i+3:]
		if p.scheme == "" {
			return p, fmt.Errorf("origin pattern %q: empty scheme", s)
		}
	}
	if strings.ContainsAny(rest, "/?#@ ") || rest == "" {
		return p, fmt.Errorf("origin pattern %q: want [scheme://]host[:port]", s)
	}
	host, port := splitHostPort(rest)
	if port != "" {
		for _, c := range port {
			if c < '0' || c > '9' {
				return p, fmt.Errorf("origin pattern %q: bad port", s)
			}
		}
	}
	if strings.HasPrefix(host, "*.") {
		p.wildcard = true
		host = host[2:]
	}
	if host == "" || strings.Contains(host, "*") {
		return p, fmt.Errorf("origin pattern %q: only a leading \"*.\" wildcard is allowed", s)
	}
	p.host = strings.ToLower(host)
	p.port = normalizePort(port)
	return p, nil
}

// match reports whether the parsed origin (scheme, lower-case host, port
// with default ports removed) fits the pattern.
func (p originPattern) match(scheme, host, port string) bool {
	if p.null {
		return false
	}
	if p.scheme != "" && p.scheme != scheme {
		return false
	}
	if p.port != "" && p.port != port {
		return false
	}
	if p.wildcard {
		return len(host) > len(p.host)+1 && strings.HasSuffix(host, p.host) && host[len(host)-len(p.host)-1] == '.'
	}
	return host == p.host
}

// splitHostPort splits "host:port", "[v6]:port", "host" and "[v6]" without
// failing on a missing port, as net.SplitHostPort does.
func splitHostPort(hostport string) (host, port string) {
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), ""
}

// normalizePort drops the default ports, so that "example.com",
// "example.com:80" and "example.com:443" compare equal: a proxy behind a TLS
// terminator cannot tell which default applies, and browsers omit both.
func normalizePort(port string) string {
	if port == "80" || port == "443" {
		return ""
	}
	return port
}

// checkOrigin applies the origin policy (see the package documentation).
// A request without Origin is not from a browser page and passes.
func (p *Proxy) checkOrigin(r *http.Request) error {
	values := r.Header.Values("Origin")
	if len(values) == 0 || p.cfg.anyOrigin {
		return nil
	}
	if len(values) > 1 {
		return fmt.Errorf("%w: %d Origin headers", ErrOriginDenied, len(values))
	}
	origin := values[0]
	if origin == "null" {
		for _, pat := range p.cfg.origins {
			if pat.null {
				return nil
			}
		}
		return fmt.Errorf("%w: null origin", ErrOriginDenied)
	}
	u, err := url.Parse(origin)
	if err != nil || u.Scheme == "" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("%w: malformed Origin %q", ErrOriginDenied, origin)
	}
	scheme := strings.ToLower(u.Scheme)
	host, port := strings.ToLower(u.Hostname()), normalizePort(u.Port())

	reqHost, reqPort := splitHostPort(p.browserHost(r))
	if host == strings.ToLower(reqHost) && port == normalizePort(reqPort) {
		return nil
	}
	for _, pat := range p.cfg.origins {
		if pat.match(scheme, host, port) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is not %s", ErrOriginDenied, origin, p.browserHost(r))
}

// browserHost is the host the browser asked for: the request's Host or,
// from a trusted proxy that rewrote it, the first X-Forwarded-Host. A page
// cannot set that header on a WebSocket, so it cannot forge its way past
// the check through a visitor's browser.
func (p *Proxy) browserHost(r *http.Request) string {
	if v := r.Header["X-Forwarded-Host"]; len(v) > 0 && p.trustedPeer(r) {
		first, _, _ := strings.Cut(v[0], ",")
		if first = strings.TrimSpace(first); first != "" {
			return first
		}
	}
	return r.Host
}
