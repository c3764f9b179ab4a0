package wsproxy

import (
	"errors"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Admission limits: caps on open tunnels, globally and per client, and a
// per-client handshake rate. They are checked right after the origin
// policy, before a backend is dialled, so a refused client costs the
// backends nothing.
//
// A client is its IP address, an IPv6 client its /64 (one host usually
// holds a whole /64, so counting single IPv6 addresses would limit
// nothing). Behind proxies listed by WithTrustedProxies, the client is the
// rightmost X-Forwarded-For address that is not itself a trusted proxy.
// A request whose RemoteAddr is not an IP address and port (a Unix socket,
// for example) is only subject to the global cap.
//
// Slow clients (slowloris) are the embedding http.Server's to bound: set
// its ReadHeaderTimeout (a few seconds) so a client that sends its upgrade
// request byte by byte is cut before the proxy sees it, and MaxHeaderBytes
// to bound the request's size. Both end with the hijack: the proxy clears
// the connection's deadlines, so neither ever cuts a tunnel.

// maxClients bounds the per-client table: about 100 bytes an entry. An
// entry is dropped as soon as its client has nothing open and a full token
// bucket, so the table only fills when that many clients are active at
// once; new clients are then refused with 429 until entries free up.
const maxClients = 1 << 16

// Sweeps of idle entries: at least this often while handshakes arrive, and
// no more often than sweepFull while the table is full.
const (
	sweepEvery = time.Minute
	sweepFull  = time.Second
)

// limiter holds the live counts behind the limits. New sets cfg.
type limiter struct {
	mu        sync.Mutex
	cfg       *config
	open      int // admitted handshakes and tunnels
	clients   map[netip.Prefix]*clientState
	lastSweep time.Time
}

type clientState struct {
	key    netip.Prefix
	open   int       // admitted handshakes and tunnels
	tokens float64   // handshake tokens as of last
	last   time.Time // when tokens was computed
}

// admission is one admitted handshake, then its tunnel: a small value
// that the handler holds, then hands over to the tunnel (no allocation per
// upgrade). release gives its places back; it is safe to call more than
// once, and the zero admission (no limits configured) does nothing.
type admission struct {
	l  *limiter
	cs *clientState // the client's entry, if per-client limits apply
}

// rateLimitError is ErrRateLimited with the wait until the next token.
type rateLimitError struct{ wait time.Duration }

func (e *rateLimitError) Error() string { return ErrRateLimited.Error() }
func (e *rateLimitError) Unwrap() error { return ErrRateLimited }

// admit takes a place for r's handshake under the configured limits, or
// says which limit refused it: ErrTooManyTunnels (503) or ErrRateLimited
// (429), both with a Retry-After.
func (p *Proxy) admit(r *http.Request) (admission, error) {
	c := &p.cfg
	if c.maxTunnels == 0 && c.maxTunnelsPerIP == 0 && c.handshakeRate == 0 {
		return admission{}, nil
	}
	client, perIP := p.clientPrefix(r)
	perIP = perIP && (c.maxTunnelsPerIP > 0 || c.handshakeRate > 0)
	now := time.Now()

	l := &p.limits
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.maxTunnels > 0 && l.open >= c.maxTunnels {
		return admission{}, errTunnelCap
	}
	var cs *clientState
	if perIP {
		l.sweep(c, now)
		cs = l.clients[client]
		if cs == nil {
			if len(l.clients) >= maxClients {
				return admission{}, &rateLimitError{wait: sweepFull}
			}
			cs = &clientState{key: client, tokens: float64(c.handshakeBurst), last: now}
			if l.clients == nil {
				l.clients = make(map[netip.Prefix]*clientState)
			}
			l.clients[client] = cs
		}
		if c.maxTunnelsPerIP > 0 && cs.open >= c.maxTunnelsPerIP {
			return admission{}, errClientTunnelCap
		}
		if c.handshakeRate > 0 {
			cs.refill(c, now)
			if cs.tokens < 1 {
				wait := time.Duration((1 - cs.tokens) / c.handshakeRate * float64(time.Second))
				return admission{}, &rateLimitError{wait: wait}
			}
			cs.tokens--
		}
		cs.open++
	}
	l.open++
	return admission{l: l, cs: cs}, nil
}

func (cs *clientState) refill(c *config, now time.Time) {
	cs.tokens = min(float64(c.handshakeBurst), cs.tokens+now.Sub(cs.last).Seconds()*c.handshakeRate)
	cs.last = now
}

// idle reports whether the entry holds nothing a new one would not: no
// open tunnel and a full bucket.
func (cs *clientState) idle(c *config, now time.Time) bool {
	if cs.open > 0 {
		return false
	}
	if c.handshakeRate == 0 {
		return true
	}
	return cs.tokens+now.Sub(cs.last).Seconds()*c.handshakeRate >= float64(c.handshakeBurst)
}

// sweep drops idle entries, every sweepEvery, or sooner when the table is
// full. l.mu is held.
func (l *limiter) sweep(c *config, now time.Time) {
	since := now.Sub(l.lastSweep)
	if since < sweepEvery && (len(l.clients) < maxClients || since < sweepFull) {
		return
	}
	l.lastSweep = now
	for k, cs := range l.clients {
		if cs.idle(c, now) {
			delete(l.clients, k)
		}
	}
}

// release gives the admission's places back.
func (a *admission) release() {
	if a == nil || a.l == nil {
		return
	}
	l := a.l
	a.l = nil
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if cs := a.cs; cs != nil {
		cs.open--
		if cs.idle(l.cfg, time.Now()) && l.clients[cs.key] == cs {
			delete(l.clients, cs.key)
		}
	}
}

// handOver moves the admission to the tunnel that now holds its places:
// the returned one is released when the tunnel ends, and a's own release
// does nothing.
func (a *admission) handOver() admission {
	b := *a
	a.l = nil
	return b
}

// clientPrefix is the client r counts as for per-client limits: its IPv4
// address or its IPv6 /64, after trusted proxies.
func (p *Proxy) clientPrefix(r *http.Request) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Prefix{}, false
	}
	a := ap.Addr().Unmap()
	if p.isTrusted(a) {
		a = forwardedClient(r.Header["X-Forwarded-For"], a, p.isTrusted)
	}
	bits := 32
	if a.Is6() {
		bits = 64
	}
	pfx, err := a.Prefix(bits)
	return pfx, err == nil
}

// forwardedClient walks X-Forwarded-For from the right, past trusted
// proxies, and returns the first address that is not one: the leftmost
// entries are the client's to forge, the rightmost were added by proxies
// we trust. It stops at anything that is not an address.
func forwardedClient(xff []string, peer netip.Addr, trusted func(netip.Addr) bool) netip.Addr {
	client := peer
	for i := len(xff) - 1; i >= 0; i-- {
		entries := strings.Split(xff[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(entries[j]))
			if err != nil {
				return client
			}
			client = a.Unmap()
			if !trusted(client) {
				return client
			}
		}
	}
	return client
}

// retryAfter is the Retry-After value, in whole seconds, for a refusal
// that may succeed later.
func retryAfter(err error) string {
	var re *rateLimitError
	if errors.As(err, &re) {
		return strconv.Itoa(max(1, int(math.Ceil(re.wait.Seconds()))))
	}
	return "1"
}
