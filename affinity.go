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

// affinityCause says why a request did not reach its home target.
type affinityCause uint8

const (
	causeNone    affinityCause = iota // the home was not passed over
	causeUnknown                      // the cookie names no target of the set
	causeDown
	causeFull
	causeFailed
	causeSpilled // the home was free: the policy chose otherwise
	numCauses
)

var causeNames = [numCauses]string{"", "unknown", "down", "full", "failed", "spilled"}

type affinityCounters struct {
	kept, assigned atomic.Int64
	missed         [numCauses]atomic.Int64
}

func (c *affinityCounters) snapshot() AffinityStats {
	return AffinityStats{
		Kept: c.kept.Load(), Assigned: c.assigned.Load(), Unknown: c.missed[causeUnknown].Load(),
		Down: c.missed[causeDown].Load(), Full: c.missed[causeFull].Load(),
		Failed: c.missed[causeFailed].Load(), Spilled: c.missed[causeSpilled].Load(),
	}
}

// affinity is one request's affinity while a target is chosen for it.
type affinity struct {
	resolved bool
	req      *http.Request // what the policy sees (balancerRequest)
	home     *Target       // where the cookie or hash key points
	hashed   bool          // home comes from ConsistentHash, not a cookie
	cause    affinityCause
}

// resolve finds the request's home target once: the one its sticky cookie
// names or, under ConsistentHash, its key's first choice among the
// primaries.
func (p *Proxy) resolveAffinity(r *http.Request, set *targetSet, a *affinity) {
	a.resolved = true
	if s := p.cfg.sticky; s != nil {
		var value string
		for _, line := range r.Header["Cookie"] {
			if v, ok := findCookie(line, s.cookie.Name); ok {
				value = v
				break
			}
		}
		if value != "" {
			if a.home = set.byCookie[value]; a.home == nil {
				a.cause = causeUnknown
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
		a.cause = causeUnknown
	case slices.Contains(tried, t):
		a.cause = causeFailed
	case !t.health.available(now):
		a.cause = causeDown
	case t.full():
		a.cause = causeFull
	default:
		return false
	}
	return true
}

// placed counts the outcome of a request's affinity once its target is
// known, and says whether the answer must set the sticky cookie.
func (p *Proxy) placed(r *http.Request, a *affinity, t *Target) (setCookie bool) {
	c := &p.affinity
	switch {
	case a.home == nil && a.cause == causeNone:
		if p.cfg.sticky == nil {
			return false
		}
		c.assigned.Add(1)
		return true
	case t == a.home:
		c.kept.Add(1)
		return false
	}
	cause := a.cause
	if cause == causeNone {
		cause = causeSpilled
	}
	c.missed[cause].Add(1)
	if p.debug() {
		home := ""
		if a.home != nil {
			home = a.home.raw
		}
		p.log.Debug("wsproxy: affinity not kept", "target", t.raw, "home", home, "cause", causeNames[cause],
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
