package wsproxy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// A Balancer chooses the target of each new tunnel.
//
// Pick gets the targets that may take a tunnel right now (healthy, under
// their connection cap, not draining; backups only when no primary is left),
// never an empty slice, and returns one of them, or nil to refuse the
// request with 503. Health, caps, backups and retries are the proxy's job,
// so a policy only ranks. Pick is called from many goroutines at once.
type Balancer interface {
	Pick(r *http.Request, targets []*Target) *Target
}

// A Target is one backend with its live state. Its exported fields are set
// from the target string and never change; the proxy keeps the same *Target
// across SetTargets as long as the same string stays in the list, so counts
// and health survive a reload.
//
// A target string is a URL with scheme ws, wss, http or https, optionally
// followed by space-separated parameters in the style of nginx's upstream
// servers:
//
//	ws://10.0.0.1:8080/chat weight=3 max_conns=1000
//	ws://10.0.0.9:8080 backup
type Target struct {
	// URL is the backend's address; its path prefixes request paths and its
	// query is prepended to theirs.
	URL *url.URL
	// Weight is the target's share for weighted policies. Default 1.
	Weight int
	// MaxConns caps the target's open connections: tunnels, handshakes in
	// progress and HTTP requests in flight (WithHTTP); 0 means no cap.
	MaxConns int
	// Backup targets get tunnels only when no primary target can.
	Backup bool

	raw  string // the string the target was parsed from
	addr string // host:port to dial
	tls  bool
	hash uint64 // FNV-1a of the URL alone, so a weight change moves no hashed key

	open    atomic.Int64 // open tunnels, handshakes in progress and HTTP requests in flight
	stats   targetCounters
	health  targetHealth
	removed atomic.Bool // dropped by SetTargets; open tunnels drain

	stickyID string                     // its sticky cookie value; set before the target is published
	retired  atomic.Pointer[retirement] // ends its HTTP requests when its drain timeout passes
}

// targetCounters are cumulative counters kept per target.
type targetCounters struct {
	total    atomic.Int64 // tunnels opened
	failures atomic.Int64 // dial or handshake failures
	bytesIn  atomic.Int64 // client to backend, closed tunnels
	bytesOut atomic.Int64 // backend to client, closed tunnels
	msgsIn   atomic.Int64
	msgsOut  atomic.Int64

	refused     atomic.Int64 // upgrades answered with another status than 101
	notEndpoint atomic.Int64 // of those, 2xx, 3xx and 404 (logging.go)

	httpActive   atomic.Int64 // HTTP requests in flight (WithHTTP)
	httpRequests atomic.Int64 // HTTP requests answered by the target
	httpFailures atomic.Int64 // HTTP requests whose connection to it failed
}

// String returns the target string, parameters included.
func (t *Target) String() string { return t.raw }

// Open returns the number of connections open to the target now: tunnels,
// handshakes in progress and HTTP requests in flight (WithHTTP). It is what
// max_conns caps and what LeastConn and PowerOfTwo compare.
func (t *Target) Open() int { return int(t.open.Load()) }

// full reports whether the target is at its connection cap.
func (t *Target) full() bool { return t.MaxConns > 0 && t.open.Load() >= int64(t.MaxConns) }

// tryAcquire takes a connection slot unless the target is at its cap.
func (t *Target) tryAcquire() bool {
	for {
		n := t.open.Load()
		if t.MaxConns > 0 && n >= int64(t.MaxConns) {
			return false
		}
		if t.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// parseTarget parses one target string.
func parseTarget(s string) (*Target, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return nil, fmt.Errorf("%w %q: empty", ErrBadTarget, s)
	}
	u, err := url.Parse(fields[0])
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrBadTarget, s, err)
	}
	t := &Target{URL: u, Weight: 1, raw: strings.Join(fields, " "), hash: fnv1a(fnvOffset, fields[0])}
	switch strings.ToLower(u.Scheme) {
	case "ws", "http":
	case "wss", "https":
		t.tls = true
	case "":
		return nil, fmt.Errorf("%w %q: missing scheme (want ws, wss, http or https)", ErrBadTarget, s)
	default:
		return nil, fmt.Errorf("%w %q: scheme %q is not ws, wss, http or https", ErrBadTarget, s, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w %q: missing host", ErrBadTarget, s)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w %q: user info in a target URL is not supported (set Authorization with WithRewrite)", ErrBadTarget, s)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("%w %q: fragment in a target URL", ErrBadTarget, s)
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if t.tls {
			port = "443"
		}
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%w %q: bad port %q", ErrBadTarget, s, port)
	}
	t.addr = net.JoinHostPort(u.Hostname(), port)

	for _, f := range fields[1:] {
		key, val, hasVal := strings.Cut(f, "=")
		switch {
		case key == "backup" && !hasVal:
			t.Backup = true
		case key == "weight" && hasVal:
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 1_000_000 {
				return nil, fmt.Errorf("%w %q: weight %q is not a number from 1 to 1000000", ErrBadTarget, s, val)
			}
			t.Weight = n
		case key == "max_conns" && hasVal:
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("%w %q: max_conns %q is not a number of 0 or more", ErrBadTarget, s, val)
			}
			t.MaxConns = n
		default:
			return nil, fmt.Errorf("%w %q: unknown parameter %q (want weight=N, max_conns=N or backup)", ErrBadTarget, s, f)
		}
	}
	return t, nil
}

// RoundRobin returns the default policy: smooth weighted round robin, as in
// nginx's upstream module. With weights 5:1:1 it picks a a b a c a a, never
// five of the same target in a row, so a burst of reconnects spreads out.
func RoundRobin() Balancer { return &roundRobin{} }

// roundRobin keeps each target's current weight itself, not on the
// Target: targets are shared by every balancer of the proxy (a user's
// balancer may delegate to two RoundRobins), and each has its own rotation.
type roundRobin struct {
	mu      sync.Mutex
	current map[*Target]int64 // guarded by mu
}

// Pick implements nginx's smooth weighted round robin: every candidate's
// current weight grows by its weight, the largest is chosen and pays back the
// sum of all weights.
func (b *roundRobin) Pick(_ *http.Request, targets []*Target) *Target {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.current == nil {
		b.current = make(map[*Target]int64, len(targets))
	}
	b.forgetRemoved(targets)
	var (
		best        *Target
		bestCurrent int64
		total       int64
	)
	for _, t := range targets {
		w := int64(t.Weight)
		cur := b.current[t] + w
		b.current[t] = cur
		total += w
		if best == nil || cur > bestCurrent {
			best, bestCurrent = t, cur
		}
	}
	if best != nil {
		b.current[best] = bestCurrent - total
	}
	return best
}

// forgetRemoved drops the state of targets that are gone, once the map
// holds many more than the candidates: discovery may replace targets for
// months. A target only left out for a while (down, full) just starts
// over, which costs a little smoothness and nothing else. b.mu is held.
func (b *roundRobin) forgetRemoved(targets []*Target) {
	if len(b.current) <= 2*len(targets)+8 {
		return
	}
	for t := range b.current {
		if !slices.Contains(targets, t) {
			delete(b.current, t)
		}
	}
}

// LeastConn returns a policy for long-lived connections: the target with the
// fewest open tunnels relative to its weight gets the next one, so a target
// added to a busy set takes new tunnels until it has caught up. Ties are
// broken by a start position that moves on with every pick, so equally
// loaded targets take turns instead of the first one taking them all.
func LeastConn() Balancer { return &leastConn{} }

type leastConn struct {
	next atomic.Uint64
}

func (b *leastConn) Pick(_ *http.Request, targets []*Target) *Target {
	n := len(targets)
	if n == 0 {
		return nil
	}
	start := int(b.next.Add(1) % uint64(n))
	best := targets[start]
	bestOpen := best.open.Load()
	for i := 1; i < n; i++ {
		t := targets[(start+i)%n]
		open := t.open.Load()
		if lessLoaded(open, t.Weight, bestOpen, best.Weight) {
			best, bestOpen = t, open
		}
	}
	return best
}

// lessLoaded reports whether a/wa < b/wb without dividing.
func lessLoaded(a int64, wa int, b int64, wb int) bool {
	return a*int64(wb) < b*int64(wa)
}

// PowerOfTwo returns the "power of two random choices" policy: it looks at
// two targets chosen at random and takes the one with fewer open tunnels
// relative to its weight. It spreads load almost as evenly as LeastConn while
// never making every replica of a proxy fleet pile onto the same target after
// a restart, because each replica only ever compares two.
func PowerOfTwo() Balancer { return powerOfTwo{} }

type powerOfTwo struct{}

func (powerOfTwo) Pick(_ *http.Request, targets []*Target) *Target {
	n := len(targets)
	switch n {
	case 0:
		return nil
	case 1:
		return targets[0]
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a, b := targets[i], targets[j]
	if lessLoaded(b.open.Load(), b.Weight, a.open.Load(), a.Weight) {
		return b
	}
	return a
}

// A HashOption configures ConsistentHash.
type HashOption interface {
	applyHash(*consistentHash)
}

type hashOptionFunc func(*consistentHash)

func (f hashOptionFunc) applyHash(h *consistentHash) { f(h) }

// WithLoadFactor bounds how far above its fair share a target may go before
// keys hashed to it spill to their next choice ("consistent hashing with
// bounded loads", Mirrokni et al. 2016): a target takes a new tunnel only
// while its open tunnels are below ceil(f × (open+1) × weight / total
// weight), counted over the candidates. Lower values spread a hot key sooner
// and keep fewer keys in place; 1 allows no target above its share.
// Keys that spill no longer reach the same target on every replica, and a
// client may move between its page loads; for session affinity keep the
// bound off (AffinityStats.Spilled counts the keys it moved). The bound is
// checked on every request, so with long-polling libraries (Socket.IO,
// SockJS, SignalR) it can move a session's polling request to another
// target mid-session.
// Default: 0, no bound (as HAProxy's hash-balance-factor and nginx's hash).
// Other values below 1 make New fail.
func WithLoadFactor(f float64) HashOption {
	return hashOptionFunc(func(h *consistentHash) {
		if f != 0 && !(f >= 1 && f <= 1e6) {
			h.err = fmt.Errorf("WithLoadFactor: %v is neither 0 nor from 1 to 1e6", f)
			return
		}
		h.factor = f
	})
}

// ConsistentHash returns a policy that sends every request with the same
// key to the same target, for backends that keep per-user or per-room state
// in memory. key extracts the key from the request: ClientIPKey, HeaderKey,
// CookieKey, QueryKey or your own; a request with an empty key is balanced
// with RoundRobin.
//
// It uses weighted rendezvous hashing (highest random weight): each target
// scores weight / -ln(hash(key, target)) and the best score wins. The score
// depends only on the key and the target URL, so proxy replicas agree
// without talking to each other, and adding or removing one of N targets
// moves only the keys that belong to it, about 1/N of them. The load bound
// (WithLoadFactor, off by default) keeps a hot key from overloading one
// target: when the first choice is above its bound the key goes to its
// second choice, and so on. Replicas then no longer agree for the spilled
// keys, which is the price of the bound.
func ConsistentHash(key func(*http.Request) string, opts ...HashOption) Balancer {
	h := &consistentHash{key: key}
	if key == nil {
		h.err = errors.New("nil key function")
	}
	for _, o := range opts {
		o.applyHash(h)
	}
	return h
}

type consistentHash struct {
	key      func(*http.Request) string
	factor   float64
	fallback roundRobin
	err      error
}

// validate lets WithBalancer report a bad HashOption from New.
func (h *consistentHash) validate() error { return h.err }

func (h *consistentHash) Pick(r *http.Request, targets []*Target) *Target {
	if len(targets) == 0 {
		return nil
	}
	k := h.key(r)
	if k == "" {
		return h.fallback.Pick(r, targets)
	}
	kh := fnv1a(fnvOffset, k)
	// bound is the fair share per unit of weight times the factor; 0 means
	// no bound.
	var bound float64
	if h.factor > 0 && len(targets) > 1 {
		var open, weights int64
		for _, t := range targets {
			open += t.open.Load()
			weights += int64(t.Weight)
		}
		bound = h.factor * float64(open+1) / float64(weights)
	}
	var (
		best, first           *Target
		bestScore, firstScore float64
	)
	for _, t := range targets {
		s := hrwScore(kh, t)
		if first == nil || s > firstScore {
			first, firstScore = t, s
		}
		if bound > 0 && float64(t.open.Load()) >= math.Ceil(bound*float64(t.Weight)) {
			continue
		}
		if best == nil || s > bestScore {
			best, bestScore = t, s
		}
	}
	if best == nil {
		// Counts moved under us; the bound cannot exclude everyone.
		return first
	}
	return best
}

// home is the key's first choice among targets, ignoring loads, or nil for
// a request without a key.
func (h *consistentHash) home(r *http.Request, targets []*Target) *Target {
	k := h.key(r)
	if k == "" {
		return nil
	}
	kh := fnv1a(fnvOffset, k)
	var (
		best      *Target
		bestScore float64
	)
	for _, t := range targets {
		if s := hrwScore(kh, t); best == nil || s > bestScore {
			best, bestScore = t, s
		}
	}
	return best
}

// hrwScore is the weighted rendezvous score of a key hash for a target:
// w / -ln(u) with u uniform in (0, 1), which makes the probability that a
// target wins proportional to its weight.
func hrwScore(keyHash uint64, t *Target) float64 {
	u := (float64(mix64(keyHash^mix64(t.hash))>>11) + 0.5) / (1 << 53)
	return float64(t.Weight) / -math.Log(u)
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// fnv1a continues a 64-bit FNV-1a hash over s.
func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// mix64 is the splitmix64 finalizer: FNV alone leaves similar keys with
// similar high bits.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ClientIPKey keys requests by the client's address: its IPv4 address or
// its IPv6 /64 (one host usually holds a whole /64 and rotates addresses
// inside it). Behind proxies listed by WithTrustedProxies it is the client
// found through X-Forwarded-For, the same client the admission limits
// count, so that behind a load balancer clients do not all hash alike.
func ClientIPKey() func(*http.Request) string {
	return clientKey
}

// HeaderKey keys requests by the first value of a request header, for
// example a user or tenant id set by an authenticating proxy in front.
func HeaderKey(name string) func(*http.Request) string {
	name = textproto.CanonicalMIMEHeaderKey(name)
	return func(r *http.Request) string {
		if v := r.Header[name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
}

// CookieKey keys requests by the value of a cookie, such as a session id.
func CookieKey(name string) func(*http.Request) string {
	return func(r *http.Request) string {
		for _, line := range r.Header["Cookie"] {
			if v, ok := findCookie(line, name); ok {
				return v
			}
		}
		return ""
	}
}

// findCookie finds name in a Cookie header line ("a=1; b=2") without the
// allocations of http.Request.Cookie.
func findCookie(line, name string) (string, bool) {
	for line != "" {
		var part string
		part, line, _ = strings.Cut(line, ";")
		part = textproto.TrimString(part)
		k, v, _ := strings.Cut(part, "=")
		if textproto.TrimString(k) == name { // as net/http reads "a = b" and a bare "a"
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}

// QueryKey keys requests by a query parameter, for example ?room=42.
func QueryKey(name string) func(*http.Request) string {
	return func(r *http.Request) string {
		q := r.URL.RawQuery
		for q != "" {
			var part string
			part, q, _ = strings.Cut(q, "&")
			k, v, _ := strings.Cut(part, "=")
			if k != name {
				if !strings.ContainsAny(k, "%+") {
					continue
				}
				if uk, err := url.QueryUnescape(k); err != nil || uk != name {
					continue
				}
			}
			if strings.ContainsAny(v, "%+") {
				if uv, err := url.QueryUnescape(v); err == nil {
					return uv
				}
			}
			return v
		}
		return ""
	}
}
