package wsproxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"sync/atomic"
)

// Session affinity: a client's requests, its HTTP long-polling and its
// WebSocket upgrade alike, reach the same target. Two kinds exist:
//
//   - the sticky cookie (WithStickyCookie): the proxy names the target that
//     served a client in a cookie and sends the client's next requests
//     there, whatever the policy, while that target can take them;
//   - ConsistentHash: the same key reaches the same target, computed by
//     every replica alike.
//
// The cookie's value is an HMAC of the target's URL (WithStickySecret), so
// it says nothing of the backend's address, every proxy replica with the
// same targets and secret computes the same value without talking to the
// others, a target keeps its value across target-set changes, and a forged
// value matches no target: it is treated as no cookie at all.

// defaultStickySecret keys cookie values when WithStickySecret is not set,
// so that replicas agree with no set-up. It is public in this source: with
// it, a client that guesses a backend's URL can confirm the guess. Set
// WithStickySecret where backend addresses must stay private.
var defaultStickySecret = []byte("wsproxy sticky cookie v1")

// sticky is the configured cookie.
type sticky struct {
	cookie http.Cookie // Value empty: set per answer
	secret []byte
}

// id is the cookie value that names a target: 16 bytes of HMAC-SHA256 of
// its URL (parameters such as weight left out, so a weight change keeps
// clients in place), in unpadded base64url.
func (s *sticky) id(t *Target) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(t.URL.String()))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// indexSticky gives every target of set its cookie value and fills the
// set's lookup table. It runs before the set is published.
func (p *Proxy) indexSticky(set *targetSet) {
	s := p.cfg.sticky
	if s == nil {
		return
	}
	set.byCookie = make(map[string]*Target, len(set.all))
	for _, t := range set.all {
		if t.stickyID == "" {
			t.stickyID = s.id(t)
		}
		set.byCookie[t.stickyID] = t
	}
}

// setCookie returns the Set-Cookie value that sends the client to t.
func (s *sticky) setCookie(t *Target) string {
	c := s.cookie
	c.Value = t.stickyID
	return c.String()
}

// AffinityStats counts where requests with an affinity went: requests
// carrying a sticky cookie (WithStickyCookie), and requests with a key under
// ConsistentHash. Every request that could not go where its affinity
// pointed is counted once, under the cause.
type AffinityStats struct {
	// Kept requests reached the target their cookie or key named.
	Kept int64
	// Assigned requests had no usable cookie and were given one.
	Assigned int64
	// Unknown cookies named no target of the set: a target removed since
	// the cookie was set, or a forged value.
	Unknown int64
	// Down: the target was out of rotation by health checks.
	Down int64
	// Full: the target was at its max_conns.
	Full int64
	// Failed: the target failed this request (dial, handshake, or an
	// HTTP request that could be retried) and another one served it.
	Failed int64
	// Spilled: ConsistentHash's load bound (WithLoadFactor) sent the key
	// to its next choice.
	Spilled int64
}

type affinityCounters struct {
	kept, assigned, unknown, down, full, failed, spilled atomic.Int64
}

func (c *affinityCounters) snapshot() AffinityStats {
	return AffinityStats{
		Kept: c.kept.Load(), Assigned: c.assigned.Load(), Unknown: c.unknown.Load(),
		Down: c.down.Load(), Full: c.full.Load(), Failed: c.failed.Load(), Spilled: c.spilled.Load(),
	}
}

// affinity is one request's affinity while a target is chosen for it.
type affinity struct {
	resolved bool
	cookie   string  // the sticky cookie's value, "" if none
	home     *Target // where the cookie or hash key points
	hashed   bool    // home comes from ConsistentHash, not a cookie
	cause    string  // why home was passed over, "" while it was not
}

// resolve finds the request's home target once: the one its sticky cookie
// names or, under ConsistentHash, its key's first choice among the
// primaries.
func (p *Proxy) resolveAffinity(r *http.Request, set *targetSet, a *affinity) {
	a.resolved = true
	if s := p.cfg.sticky; s != nil {
		for _, line := range r.Header["Cookie"] {
			if v, ok := findCookie(line, s.cookie.Name); ok {
				a.cookie = v
				break
			}
		}
		if a.cookie != "" {
			a.home = set.byCookie[a.cookie]
			if a.home == nil {
				a.cause = "unknown"
			}
			return
		}
	}
	if h, ok := p.cfg.balancer.(*consistentHash); ok {
		a.home = h.home(r, set.primary)
		a.hashed = a.home != nil
	}
}

// passOver records why the home target cannot take the request.
func (a *affinity) passOver(t *Target, tried []*Target, now int64) bool {
	switch {
	case t.removed.Load():
		a.cause = "unknown"
	case slices.Contains(tried, t):
		a.cause = "failed"
	case !t.health.available(now):
		a.cause = "down"
	case t.full():
		a.cause = "full"
	default:
		return false
	}
	return true
}

// placed counts the outcome of a request's affinity once its target is
// known, and says whether the answer must set the sticky cookie.
func (p *Proxy) placed(r *http.Request, a *affinity, t *Target) (setCookie bool) {
	c := &p.affinity
	if a.home == nil && !a.hashed && a.cause == "" {
		if p.cfg.sticky != nil {
			c.assigned.Add(1)
			return true
		}
		return false
	}
	if t == a.home {
		c.kept.Add(1)
		return false
	}
	cause := a.cause
	if cause == "" {
		cause = "spilled" // the home was free: the policy chose otherwise
	}
	switch cause {
	case "unknown":
		c.unknown.Add(1)
	case "down":
		c.down.Add(1)
	case "full":
		c.full.Add(1)
	case "failed":
		c.failed.Add(1)
	default:
		c.spilled.Add(1)
	}
	if p.debug() {
		home := ""
		if a.home != nil {
			home = a.home.raw
		}
		p.log.Debug("wsproxy: affinity not kept", "target", t.raw, "home", home, "cause", cause,
			"remote_addr", r.RemoteAddr, "path", r.URL.Path)
	}
	return p.cfg.sticky != nil
}

// stick counts where a request's affinity took it and, when the sticky
// cookie must name a new target, adds it to the answer's header h.
func (p *Proxy) stick(r *http.Request, a *affinity, t *Target, h http.Header) {
	if p.placed(r, a, t) {
		h.Add("Set-Cookie", p.cfg.sticky.setCookie(t))
	}
}

// stripCookie removes the proxy's own cookie from the Cookie lines of h:
// it is the proxy's business, not the backend's.
func stripCookie(h http.Header, name string) {
	lines := h["Cookie"]
	if len(lines) == 0 {
		return
	}
	var out []string
	changed := false
	for _, line := range lines {
		if _, ok := findCookie(line, name); !ok {
			out = append(out, line)
			continue
		}
		changed = true
		var keep []string
		for part := range strings.SplitSeq(line, ";") {
			k, _, _ := strings.Cut(part, "=")
			if textproto.TrimString(k) != name && textproto.TrimString(part) != "" {
				keep = append(keep, textproto.TrimString(part))
			}
		}
		if len(keep) > 0 {
			out = append(out, strings.Join(keep, "; "))
		}
	}
	if !changed {
		return
	}
	if len(out) == 0 {
		delete(h, "Cookie")
		return
	}
	h["Cookie"] = out
}

// clientKeyCtx carries the client's address, found through trusted
// proxies, to ClientIPKey.
type clientKeyCtx struct{}

// balancerRequest is the request the policy sees: the client's, and behind
// a trusted proxy the client's address for ClientIPKey.
func (p *Proxy) balancerRequest(r *http.Request) *http.Request {
	if !p.trustedPeer(r) {
		return r
	}
	if pfx, ok := p.clientPrefix(r); ok {
		return r.WithContext(context.WithValue(r.Context(), clientKeyCtx{}, pfx))
	}
	return r
}

// clientKey is the key of ClientIPKey: the client's IPv4 address or IPv6
// /64, as for the admission limits.
func clientKey(r *http.Request) string {
	if pfx, ok := r.Context().Value(clientKeyCtx{}).(netip.Prefix); ok {
		return prefixKey(pfx)
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return r.RemoteAddr
		}
		return host
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		if pfx, err := a.Prefix(64); err == nil {
			return prefixKey(pfx)
		}
	}
	return a.String()
}

func prefixKey(pfx netip.Prefix) string {
	if pfx.Addr().Is4() {
		return pfx.Addr().String()
	}
	return pfx.String()
}
