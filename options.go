package wsproxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// An Option configures a Proxy. Options are applied in order; when an option
// is given twice the last one wins, unless its documentation says it adds.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// config is everything the options set. New fills in defaults first, applies
// the options, then validates the whole.
type config struct {
	dialTimeout      time.Duration
	handshakeTimeout time.Duration
	dial             func(ctx context.Context, network, addr string) (net.Conn, error)
	tlsConfig        *tls.Config
	maxRespHeader    int

	origins        []originPattern
	anyOrigin      bool
	stripOrigin    bool
	hostFromTarget bool
	trustedProxies []netip.Prefix
	rewrite        func(*ProxyRequest)
	fallback       http.Handler
	http           bool          // WithHTTP
	respTimeout    time.Duration // WithResponseHeaderTimeout
	sticky         *sticky       // WithStickyCookie
	stickySecret   []byte        // WithStickySecret
	errorHandler   func(http.ResponseWriter, *http.Request, error)
	logger         *slog.Logger
	hooks          Hooks
	balancer       Balancer
	lb             lbConfig // balancing, health, retry, draining, discovery

	idleTimeout      time.Duration
	maxLifetime      time.Duration
	pingInterval     time.Duration
	closeTimeout     time.Duration
	halfCloseTimeout time.Duration
	maxMessageSize   int64

	// Admission limits (limits.go).
	maxTunnels      int
	maxTunnelsPerIP int
	handshakeRate   float64 // tokens a second per client; 0 is off
	handshakeBurst  int

	errs []error
}

// Defaults. Each option's documentation repeats its default.
const (
	defaultDialTimeout      = 5 * time.Second
	defaultHandshakeTimeout = 10 * time.Second
	defaultMaxRespHeader    = 16 << 10
	defaultCloseTimeout     = 2 * time.Second
	defaultHalfCloseTimeout = 30 * time.Second
	defaultRespTimeout      = 60 * time.Second
)

func defaultConfig() config {
	return config{
		dialTimeout:      defaultDialTimeout,
		handshakeTimeout: defaultHandshakeTimeout,
		maxRespHeader:    defaultMaxRespHeader,
		closeTimeout:     defaultCloseTimeout,
		halfCloseTimeout: defaultHalfCloseTimeout,
		respTimeout:      defaultRespTimeout,
		lb:               defaultLBConfig(),
		maxTunnels:       descriptorCap(),
	}
}

func (c *config) errorf(option, format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: %s: %s", ErrBadOption, option, fmt.Sprintf(format, args...)))
}

// checkConflicts refuses options that are each valid but together do not
// mean what the caller wrote: one of the two would be silently ignored.
func (c *config) checkConflicts() {
	if c.lb.retry5xx && c.lb.tries == 1 {
		c.errorf("WithRetryOn5xx", "has no effect with WithRetry(1, ...): a 5xx answer could only be retried with a second try")
	}
	if c.anyOrigin && len(c.origins) > 0 {
		c.errorf("WithAllowedOrigins", "has no effect with WithInsecureSkipOriginCheck, which allows every origin")
	}
	if c.http && c.fallback != nil {
		c.errorf("WithHTTP", "cannot be combined with WithFallback: one serves the requests that are not upgrades, the other proxies them")
	}
	if c.stickySecret != nil && c.sticky == nil {
		c.errorf("WithStickySecret", "has no effect without WithStickyCookie")
	}
	if c.sticky != nil {
		c.sticky.secret = c.stickySecret
		if c.sticky.secret == nil {
			c.sticky.secret = defaultStickySecret
		}
	}
}

func durationOption(name string, d time.Duration, set func(*config)) Option {
	return optionFunc(func(c *config) {
		if d < 0 {
			c.errorf(name, "negative duration %v", d)
			return
		}
		set(c)
	})
}

// WithDialTimeout bounds the TCP (and TLS) connection to a backend. A dial
// that does not finish in time is answered with 504.
// Default: 5s. Zero means no limit other than the request's context.
func WithDialTimeout(d time.Duration) Option {
	return durationOption("WithDialTimeout", d, func(c *config) { c.dialTimeout = d })
}

// WithHandshakeTimeout bounds the wait for the backend's response headers
// after the upgrade request was written (nginx proxy_read_timeout for the
// handshake only). A backend that does not answer in time gets 504.
// Default: 10s. Zero means no limit other than the request's context.
func WithHandshakeTimeout(d time.Duration) Option {
	return durationOption("WithHandshakeTimeout", d, func(c *config) { c.handshakeTimeout = d })
}

// WithDialer replaces how the proxy opens TCP connections to backends, for
// example to go through a SOCKS proxy (golang.org/x/net/proxy), a Unix
// socket or a custom resolver. TLS for wss and https targets is still done by
// the proxy on top of the returned connection. Without it, on Linux, an
// upgrade to a ws or http target at an IP address gets its connection from
// a raw socket made in the event loop its tunnel will run in, with the
// socket options the default net.Dialer sets, which spares each upgrade
// some work; a dialer set here is used for every connection.
// Default: a net.Dialer with a 15s TCP keepalive.
func WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return optionFunc(func(c *config) {
		if dial == nil {
			c.errorf("WithDialer", "nil dial function")
			return
		}
		c.dial = dial
	})
}

// WithTLSConfig sets the TLS configuration for wss and https targets. The
// proxy clones it per connection and fills in ServerName from the target when
// it is empty, so certificates are verified with SNI by default.
// Default: the zero tls.Config (system roots, TLS 1.2+).
func WithTLSConfig(cfg *tls.Config) Option {
	return optionFunc(func(c *config) {
		if cfg == nil {
			c.errorf("WithTLSConfig", "nil *tls.Config")
			return
		}
		c.tlsConfig = cfg
	})
}

// WithMaxResponseHeaderBytes bounds the size of the backend's response
// status line and headers. A larger response is answered with 502.
// Default: 16 KiB.
func WithMaxResponseHeaderBytes(n int) Option {
	return optionFunc(func(c *config) {
		if n < 256 {
			c.errorf("WithMaxResponseHeaderBytes", "%d is less than 256 bytes", n)
			return
		}
		c.maxRespHeader = n
	})
}

// WithAllowedOrigins allows browser origins besides the request's own host
// (see "Origin policy" in the package documentation). A pattern is a host
// ("app.example.com"), a host and port ("localhost:3000"), a wildcard for
// subdomains ("*.example.com" matches "a.example.com" and "a.b.example.com",
// not "example.com"), and may start with a scheme ("https://app.example.com")
// to allow only that scheme. The literal "null" allows the opaque origin of
// sandboxed frames and file: pages. Calls add to the list.
// Default: only same-host origins are allowed.
func WithAllowedOrigins(patterns ...string) Option {
	return optionFunc(func(c *config) {
		for _, s := range patterns {
			p, err := parseOriginPattern(s)
			if err != nil {
				c.errorf("WithAllowedOrigins", "%v", err)
				continue
			}
			c.origins = append(c.origins, p)
		}
	})
}

// WithInsecureSkipOriginCheck turns the origin check off: any web page, on
// any site, can then open a WebSocket through the proxy with the visitor's
// cookies (cross-site WebSocket hijacking). Use it only when the backends
// authenticate without cookies or check the origin themselves.
// Default: off (origins are checked).
func WithInsecureSkipOriginCheck() Option {
	return optionFunc(func(c *config) { c.anyOrigin = true })
}

// WithStripOrigin removes the Origin header from the request the backend
// sees, after the proxy's own origin check passed. Use it when the backend
// checks origins itself against the wrong host (the nginx idiom
// `proxy_set_header Origin ""`).
// Default: Origin is forwarded.
func WithStripOrigin() Option {
	return optionFunc(func(c *config) { c.stripOrigin = true })
}

// WithTargetHost sends the target's host in the Host header instead of the
// client's (nginx `proxy_set_header Host $proxy_host`).
// Default: the Host the client sent (nginx `proxy_set_header Host $host`).
func WithTargetHost() Option {
	return optionFunc(func(c *config) { c.hostFromTarget = true })
}

// WithTrustedProxies lists the addresses (CIDR prefixes like "10.0.0.0/8" or
// single addresses) of proxies in front of this one whose X-Forwarded-For,
// X-Forwarded-Host and X-Forwarded-Proto may be believed. For a request from
// such an address the proxy appends the peer to X-Forwarded-For and keeps the
// other two; for any other request it replaces all three. Calls add to the
// list.
// Default: none; forwarding headers from clients are always replaced.
func WithTrustedProxies(cidrs ...string) Option {
	return optionFunc(func(c *config) {
		for _, s := range cidrs {
			var (
				p   netip.Prefix
				err error
			)
			if strings.Contains(s, "/") {
				p, err = netip.ParsePrefix(s)
			} else {
				var a netip.Addr
				a, err = netip.ParseAddr(s)
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if err != nil {
				c.errorf("WithTrustedProxies", "%q: %v", s, err)
				continue
			}
			c.trustedProxies = append(c.trustedProxies, p.Masked())
		}
	})
}

// WithRewrite registers a function that may change the request sent to the
// backend: add or remove headers (for example the authenticated user), change
// the path or query. It runs after the proxy set its own headers and before
// the request is written; header names and values are validated afterwards,
// and a request with line breaks or other invalid bytes is refused with 500.
// The hop-by-hop headers and Sec-WebSocket-Key/Version the proxy owns cannot
// be changed.
// Default: none.
func WithRewrite(fn func(*ProxyRequest)) Option {
	return optionFunc(func(c *config) {
		if fn == nil {
			c.errorf("WithRewrite", "nil function")
			return
		}
		c.rewrite = fn
	})
}

// WithFallback serves requests that are not WebSocket upgrades, like nginx's
// `map $http_upgrade $connection_upgrade`: one route can serve both a page and
// its socket. A request that asks to upgrade to another protocol (h2c, for
// example) reaches the fallback with Upgrade, HTTP2-Settings and the matching
// Connection tokens removed, so it is served as plain HTTP and never
// upgraded.
// Default: none; such requests get 426 Upgrade Required.
func WithFallback(h http.Handler) Option {
	return optionFunc(func(c *config) {
		if h == nil {
			c.errorf("WithFallback", "nil handler")
			return
		}
		c.fallback = h
	})
}

// WithHTTP proxies requests that are not WebSocket upgrades to the same
// targets, so that one route serves a whole site: pages, API calls,
// long-polling and Server-Sent Events, and its sockets (nginx's `location /
// { proxy_pass http://app; ... }` with `upstream app`). Requests are chosen
// a target as upgrades are (the policy, weights, max_conns, backups, health,
// discovery, draining and the sticky cookie), get the same header rules
// (hop-by-hop headers dropped first, X-Forwarded-* and WithTrustedProxies,
// the client's Host unless WithTargetHost, WithRewrite) and the same errors
// (502, 503, 504, WithErrorHandler, Hooks.OnReject). They go through
// net/http/httputil.ReverseProxy over an http.Transport that keeps
// connections to the backends alive, dialled with WithDialer, WithTLSConfig
// and WithDialTimeout. Responses stream: Server-Sent Events and chunked
// bodies reach the client as they arrive.
//
// A request whose connection to a target failed before it was sent is tried
// on another target (WithRetry); one already sent is retried only if its
// method is idempotent and it has no body; nothing is retried once the
// client got response headers (nginx's proxy_next_upstream error timeout).
// Requests to upgrade to other protocols (h2c) are served as plain HTTP and
// never upgraded; CONNECT gets 405. It cannot be combined with WithFallback.
// Default: off; requests that are not upgrades get 426 or the fallback.
func WithHTTP() Option {
	return optionFunc(func(c *config) { c.http = true })
}

// WithResponseHeaderTimeout bounds the wait for a backend's response
// headers to an HTTP request (WithHTTP), from the moment the request was
// written (nginx's proxy_read_timeout, for the headers). A backend that does
// not answer in time gets the client 504. Long-polling endpoints hold a
// request open for tens of seconds (Socket.IO: 25s by default), so keep it
// above theirs. Response bodies are not bounded: a stream may last.
// Default: 60s. Zero means no limit.
func WithResponseHeaderTimeout(d time.Duration) Option {
	return durationOption("WithResponseHeaderTimeout", d, func(c *config) { c.respTimeout = d })
}

// WithStickyCookie keeps a client on the target that served it first, by a
// cookie the proxy sets (HAProxy's `cookie SERVERID insert`), for upgrades
// and HTTP requests alike: what realtime libraries that start on
// long-polling (Socket.IO, SockJS, SignalR) need. A request whose cookie
// names a target that can take it (in the set, healthy, under max_conns,
// not draining) goes there whatever the policy; otherwise the policy
// chooses, and the answer (the HTTP response, the 101 or the HTTP/2 200)
// sets the cookie, beside the backend's own Set-Cookie headers. The cookie
// never reaches the backends.
//
// c gives the cookie's Name (required), Path (empty means "/"), Domain,
// MaxAge or Expires (none: a session cookie), Secure, HttpOnly and
// SameSite; the proxy sets Value. The value names a target by an HMAC of its
// URL (see WithStickySecret): it does not reveal the address, it is the
// same on every proxy replica given the same targets, a target keeps it
// across SetTargets and discovery, and a value that names no target is
// treated as no cookie. Stats.Affinity counts the requests that could not
// stay, by cause.
// Default: no sticky cookie.
func WithStickyCookie(c http.Cookie) Option {
	return optionFunc(func(cfg *config) {
		if c.Path == "" {
			c.Path = "/"
		}
		if c.Value != "" {
			cfg.errorf("WithStickyCookie", "Value %q is set by the proxy; leave it empty", c.Value)
			return
		}
		probe := c
		probe.Value = "x"
		if c.Name == "" {
			cfg.errorf("WithStickyCookie", "empty cookie Name")
			return
		}
		if err := probe.Valid(); err != nil {
			cfg.errorf("WithStickyCookie", "%v", err)
			return
		}
		cfg.sticky = &sticky{cookie: c}
	})
}

// WithStickySecret keys the sticky cookie's value (WithStickyCookie): an
// HMAC-SHA256 of the target URL with secret. Give every replica of a proxy
// fleet the same secret. Without one, values use a key that is public in
// this source, so replicas agree with no set-up but a client who guesses a
// backend's URL can confirm the guess; set a secret of 16 bytes or more
// where backend addresses must stay private. Changing it moves every client
// once.
// Default: the built-in key.
func WithStickySecret(secret []byte) Option {
	return optionFunc(func(c *config) {
		if len(secret) < 16 {
			c.errorf("WithStickySecret", "secret of %d bytes, want at least 16", len(secret))
			return
		}
		c.stickySecret = append([]byte(nil), secret...)
	})
}

// WithErrorHandler replaces how the proxy answers a request it cannot
// proxy: a rejected handshake, a denied origin, an unreachable backend. It
// runs before anything was written to the client; StatusCode(err) gives the
// status the default handler would send.
// Default: a plain-text response with StatusCode(err) and a one-line reason.
func WithErrorHandler(fn func(w http.ResponseWriter, r *http.Request, err error)) Option {
	return optionFunc(func(c *config) {
		if fn == nil {
			c.errorf("WithErrorHandler", "nil function")
			return
		}
		c.errorHandler = fn
	})
}

// WithLogger sets where the proxy logs: one debug record per tunnel opened
// and closed and per refused upgrade, and warnings for what an operator
// must act on: backend failures and 5xx answers, 2xx/3xx/404 answers to
// upgrades (a wrong path), the WithMaxTunnels cap reached, a ResponseWriter
// that cannot be hijacked, no target available, an invalid rewrite. Each
// kind of warning is rate-limited: the first is logged, then at most one
// every 10s with a "suppressed" count of those left out. Keys are stable:
// target, remote_addr, path, duration, bytes_in, bytes_out, err, reason,
// detail, status, suppressed.
// Default: slog.Default() at the time New is called.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if l == nil {
			c.errorf("WithLogger", "nil logger")
			return
		}
		c.logger = l
	})
}

// WithHooks registers functions called on each upgrade, rejection and
// tunnel close (see Hooks). Calls add: every registered hook is called.
// Default: none.
func WithHooks(h Hooks) Option {
	return optionFunc(func(c *config) { c.hooks = c.hooks.join(h) })
}

// WithIdleTimeout closes a tunnel, politely with close code 1001, when no
// frame passed between the peers in either direction for d. Pings and pongs
// the peers send each other count as traffic; the proxy's own keepalive pings
// (WithPingInterval) do not, so keepalive never hides an idle tunnel.
// Default: 0, no idle timeout (dead peers are found by TCP keepalive and,
// when set, WithPingInterval).
func WithIdleTimeout(d time.Duration) Option {
	return durationOption("WithIdleTimeout", d, func(c *config) { c.idleTimeout = d })
}

// WithMaxLifetime closes every tunnel d after it opened, politely with close
// code 1001, for example to rebalance long-lived connections.
// Default: 0, no limit.
func WithMaxLifetime(d time.Duration) Option {
	return durationOption("WithMaxLifetime", d, func(c *config) { c.maxLifetime = d })
}

// WithPingInterval makes the proxy ping the client and the backend every d.
// The proxy answers nothing on their behalf and forwards none of the pongs
// it caused. A peer from which nothing at all arrived for a whole interval
// after a ping is dead: the tunnel is closed with 1011 to the client when the
// backend is dead, and 1001 to the backend when the client is dead.
// Default: 0, no proxy pings.
func WithPingInterval(d time.Duration) Option {
	return durationOption("WithPingInterval", d, func(c *config) { c.pingInterval = d })
}

// WithCloseTimeout bounds how long the proxy waits for the peers to answer
// its close frames (on shutdown, timeouts, limits) before it closes the
// sockets, and how long it waits for a peer stuck in the middle of a frame
// before it can send one.
// Default: 2s.
func WithCloseTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d <= 0 {
			c.errorf("WithCloseTimeout", "duration %v is not positive", d)
			return
		}
		c.closeTimeout = d
	})
}

// WithHalfCloseTimeout bounds how long a tunnel stays open once one side
// has closed its half of the connection (sent TCP FIN) and the other has not
// (HAProxy's timeout client-fin).
// Default: 30s. Zero keeps half-closed tunnels open without limit.
func WithHalfCloseTimeout(d time.Duration) Option {
	return durationOption("WithHalfCloseTimeout", d, func(c *config) { c.halfCloseTimeout = d })
}

// WithMaxMessageSize closes a tunnel whose peer sends a message (all its
// fragments together) larger than n bytes, with close code 1009 to both
// sides. The frame that goes over the limit is not forwarded.
// Default: 0, no limit.
func WithMaxMessageSize(n int64) Option {
	return optionFunc(func(c *config) {
		if n < 0 {
			c.errorf("WithMaxMessageSize", "negative size %d", n)
			return
		}
		c.maxMessageSize = n
	})
}

// WithBalancer sets how a target is chosen for each new tunnel.
// Default: RoundRobin().
func WithBalancer(b Balancer) Option {
	return optionFunc(func(c *config) {
		if b == nil {
			c.errorf("WithBalancer", "nil Balancer")
			return
		}
		if v, ok := b.(interface{ validate() error }); ok && v.validate() != nil {
			c.errorf("WithBalancer", "%v", v.validate())
			return
		}
		c.balancer = b
	})
}

// WithMaxTunnels caps the tunnels open at once, handshakes in progress
// included. An upgrade over the cap is refused with 503 and Retry-After
// before any backend is dialled (ErrTooManyTunnels), instead of the process
// running out of file descriptors, which would break every listener and
// log file it has. Zero means no cap.
// Default: what the descriptor limit n (RLIMIT_NOFILE when New runs; Go
// raises the soft limit to the hard one at start) can hold: each tunnel
// holds two descriptors and 256, or n/2 if that is less, stay for the rest
// of the program, so (n - min(256, n/2)) / 2, at least 1. No cap where the
// limit is unknown (Windows, Plan 9) or above 2^30.
func WithMaxTunnels(n int) Option {
	return countOption("WithMaxTunnels", n, func(c *config) { c.maxTunnels = n })
}

func countOption(name string, n int, set func(*config)) Option {
	return optionFunc(func(c *config) {
		if n < 0 {
			c.errorf(name, "negative count %d", n)
			return
		}
		set(c)
	})
}

// WithMaxTunnelsPerIP caps the tunnels one client may hold open at once,
// handshakes in progress included; a client is an IPv4 address or an IPv6
// /64, after WithTrustedProxies. An upgrade over the cap is refused with 503
// and Retry-After (ErrTooManyTunnels). For a proxy that faces the internet
// directly, a few hundred leaves room for offices behind one NAT address
// while keeping one host from taking every descriptor.
// Default: 0, no cap. A default cap would be a trap behind a load balancer
// that is not listed in WithTrustedProxies: every client would then share
// its address, and the cap would silently become a global one.
func WithMaxTunnelsPerIP(n int) Option {
	return countOption("WithMaxTunnelsPerIP", n, func(c *config) { c.maxTunnelsPerIP = n })
}

// WithHandshakeRate limits how fast one client (as for WithMaxTunnelsPerIP)
// may open tunnels: a token bucket of burst tokens refilled at perSecond.
// A handshake without a token is refused with 429 and a Retry-After saying
// when the next token comes (ErrRateLimited). It protects backends from
// reconnect loops and handshake floods; 5 a second with a burst of 20 is
// plenty for browsers. Memory stays bounded: a client's entry is dropped
// once it has nothing open and a full bucket, and at most 65,536 clients
// are tracked at once (new ones get 429 beyond that).
// Default: 0, no rate limit, for the same reason as WithMaxTunnelsPerIP.
func WithHandshakeRate(perSecond float64, burst int) Option {
	return optionFunc(func(c *config) {
		switch {
		case perSecond < 0 || math.IsNaN(perSecond) || math.IsInf(perSecond, 0):
			c.errorf("WithHandshakeRate", "rate %v is not a positive number", perSecond)
		case perSecond > 0 && burst < 1:
			c.errorf("WithHandshakeRate", "burst %d is less than 1", burst)
		default:
			c.handshakeRate, c.handshakeBurst = perSecond, burst
		}
	})
}
