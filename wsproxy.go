// Package wsproxy is a WebSocket reverse proxy: an http.Handler that checks
// each upgrade request, chooses a backend, performs the handshake with it
// and then passes frames both ways until both sides are done.
//
// It does what people configure nginx for (`proxy_http_version 1.1;
// proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection
// "upgrade"`), with stricter handshake checks, load balancing made for
// long-lived connections, timeouts that never kill a quiet healthy tunnel,
// and a Shutdown that closes tunnels politely with close frames.
//
// The body of a complete program (examples/quickstart, the README's Quick
// start):
//
//	// The backends come from the command line: ws://10.0.0.1:9001 ws://10.0.0.2:9001
//	p, err := wsproxy.New(os.Args[1:])
//	if err != nil {
//		log.Fatal(err)
//	}
//	mux := http.NewServeMux()
//	// No method in the pattern: browsers open WebSockets with GET over HTTP/1.1
//	// but with CONNECT over HTTP/2 (RFC 8441), and "GET /ws" would answer those 405.
//	mux.Handle("/ws", p)
//	srv := &http.Server{Addr: "127.0.0.1:8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
//	go func() {
//		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
//			log.Fatal(err)
//		}
//	}()
//	log.Printf("listening on http://%s, WebSockets on /ws", srv.Addr)
//
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//	defer stop()
//	<-ctx.Done()
//	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
//	defer cancel()
//	// The proxy first: every tunnel gets close code 1001 and ends. The server
//	// does not see hijacked tunnels, and would wait for HTTP/2 ones until ctx ends.
//	if err := p.Shutdown(ctx); err != nil {
//		log.Print(err)
//	}
//	if err := srv.Shutdown(ctx); err != nil {
//		log.Print(err)
//	}
//
// # The request path
//
// ServeHTTP reads top to bottom: check the client's request (RFC 6455 §4.1:
// GET, HTTP/1.1, Upgrade: websocket, Connection: upgrade, a 16-byte
// Sec-WebSocket-Key, Sec-WebSocket-Version 13, no body), apply the origin
// policy, pick a target, dial it, send the proxy's own upgrade request, check
// the backend's 101, hijack the client connection, answer 101 and start the
// tunnel. Nothing reaches a backend before the client's request passed every
// check. A request that is not an upgrade at all gets 426, goes to the
// WithFallback handler, or with WithHTTP to the targets.
//
// # Whole sites
//
// With WithHTTP the proxy serves a whole site from the same targets, as
// nginx's `location / { proxy_pass http://app; ... }` does: pages, API
// calls, long-polling and Server-Sent Events go through
// net/http/httputil.ReverseProxy over a keep-alive http.Transport, with the
// same target choice, health, draining, header rules and errors as
// upgrades. WithStickyCookie keeps each client on the target that served it
// first, for its HTTP requests and its upgrades alike, which realtime
// libraries that start on long-polling (Socket.IO, SockJS, SignalR) need;
// the cookie's value is the same on every proxy replica, so stickiness
// holds across replicas without shared state.
//
// # Headers
//
// The request to the backend carries the client's end-to-end headers
// (cookies, Authorization, Sec-WebSocket-Protocol and -Extensions, ...). The
// hop-by-hop headers of RFC 9110 §7.6.1 (Connection and every header it
// names, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade,
// HTTP2-Settings) are dropped first, and only then does the proxy add its
// own: Upgrade, Connection, Sec-WebSocket-Key and -Version, X-Forwarded-For,
// X-Forwarded-Host and X-Forwarded-Proto ("http" or "https"). A client can
// therefore never make the proxy drop a header it adds. Forwarding headers
// a client sends (X-Forwarded-*, Forwarded, X-Real-IP) are discarded unless
// the client's address is listed by WithTrustedProxies. Host is the client's
// unless WithTargetHost is set.
//
// # Backend responses
//
// The proxy tunnels only when the backend answers 101 with Upgrade:
// websocket, Connection: upgrade and the Sec-WebSocket-Accept computed from
// the key it sent, choosing only a subprotocol and extensions the client
// offered. Any other 101 is answered with 502 and the backend connection is
// closed. Any other status (401, 403, 426, 500...) is relayed to the client
// with its end-to-end headers and body, streamed as it arrives, and the
// client connection is closed afterwards: no tunnel, no second request (the
// "WebSocket smuggling" class of bugs). A body the backend cuts short is
// cut short for the client too (the handler panics with
// http.ErrAbortHandler, as httputil.ReverseProxy does), never completed. A
// backend that cannot be reached gets 502, one that does not answer in time
// 504.
//
// # Origin policy
//
// Browsers send cookies with WebSocket handshakes from any site, so a page
// elsewhere could open a socket as the visitor (cross-site WebSocket
// hijacking). By default a request whose Origin host differs from its Host
// is refused with 403 before any backend is dialled. WithAllowedOrigins adds
// hosts or *.domain patterns; WithInsecureSkipOriginCheck turns the check
// off. Requests without Origin do not come from a browser page and pass.
// WithStripOrigin hides Origin from backends that check it themselves.
//
// # The tunnel
//
// After the handshake the proxy follows WebSocket frame boundaries in both
// directions (RFC 6455 §5.2) without decoding payloads, so it can count
// messages, read close codes and write control frames of its own (pings,
// close frames) between two frames, never inside one. Bytes the client sent
// behind its handshake and bytes the backend sent behind its 101 are
// delivered first, in order. An end of stream from one side is passed on as
// a half-close while the other direction keeps flowing; a side whose
// connection breaks (a reset) gets the other side a close frame, 1011 to
// the client or 1001 to the backend, where other proxies leave a bare TCP
// close (1006).
//
// Idle tunnels are cheap: on Linux a tunnel with nothing to read holds no
// goroutine and no buffer (its sockets wait in an epoll instance shared by
// the process), and large payloads between plain TCP sockets move with
// splice(2).
//
// # Timeouts
//
// WithDialTimeout (5s) and WithHandshakeTimeout (10s) bound reaching a
// backend. Established tunnels have no timeout by default: WithIdleTimeout,
// WithMaxLifetime and WithPingInterval add them, WithHalfCloseTimeout (30s)
// bounds a half-closed tunnel and WithCloseTimeout (2s) bounds the close
// handshake. The embedding http.Server should set ReadHeaderTimeout to
// bound slow handshakes from clients; its ReadTimeout and WriteTimeout are
// cleared on hijacked connections so they never cut a tunnel.
//
// # Load balancing
//
// A WebSocket is one request that lasts hours, so the count of requests
// says little about a backend's load; the count of open tunnels does.
// WithBalancer picks the policy:
//
//   - RoundRobin (the default): smooth weighted round robin. Even when
//     tunnels live about as long as each other.
//   - LeastConn: the fewest open tunnels per unit of weight. Best after a
//     deploy or a scale-out, when a new target has none and the old ones
//     hold thousands: new tunnels go to the new one until it caught up.
//   - PowerOfTwo: the less loaded of two random targets. Nearly as even as
//     LeastConn, and many proxy replicas starting at once do not all pile
//     onto the same empty target.
//   - ConsistentHash(key): the same key (ClientIPKey, HeaderKey, CookieKey,
//     QueryKey) always reaches the same target, for backends that keep a
//     room or a session in memory. Rendezvous hashing: replicas agree
//     without sharing state, and a change of N targets moves about 1/N of
//     the keys. WithLoadFactor adds a bound on loads, off by default.
//
// Whatever the policy, the proxy enforces the rest. Target parameters set
// weight=N, max_conns=N (a full target is skipped; when all are, the client
// gets 503) and backup (used only when no primary can take the tunnel).
// Passive health (WithPassiveHealth, nginx max_fails=1 fail_timeout=10s)
// takes a target whose dial or handshake failed, or that answered an
// upgrade with a 5xx other than 501 and 505, out of rotation for a
// cool-down, after which one request tries it again (and when every target
// is out by passive health alone, all are tried); WithHealthCheck adds
// active probes with a real WebSocket handshake. A failed dial or backend
// handshake is retried on another target (WithRetry, 3 tries), which is
// safe because the client has received nothing yet; a backend's own
// non-101 answer is relayed, not retried. SetTargets and WithDiscovery (DNS
// A/AAAA or SRV records, or any Resolver) change the targets while traffic
// flows: tunnels to a removed target keep running, or are closed with 1001
// after WithDrainTimeout. Stats reports open tunnels, failures, health and
// draining per target.
//
// Balancing happens once per tunnel. To rebalance long-lived connections
// after a scale-out, WithMaxLifetime closes them politely over time and
// clients reconnect to where the policy sends them.
//
// # Limits
//
// WithMaxTunnels caps open tunnels (503), WithMaxTunnelsPerIP caps them per
// client and WithHandshakeRate limits how fast a client may open them (429),
// all with Retry-After and checked before any backend is dialled. A client
// is an IPv4 address or an IPv6 /64, found through WithTrustedProxies when
// the proxy sits behind others. The global cap is on by default, at what
// the process's descriptor limit can hold (see WithMaxTunnels); the two
// per-client limits are off by default: behind a load balancer the proxy is
// not told about, every client would share one address. Slow clients are the http.Server's to cut: set ReadHeaderTimeout
// (a few seconds) and MaxHeaderBytes; neither affects established tunnels.
//
// # Shutdown
//
// http.Server.Shutdown does not see hijacked connections, so call
// Proxy.Shutdown too: it refuses new upgrades with 503, sends every open
// tunnel a close frame 1001 (going away) to both sides, at a frame boundary,
// and returns once all tunnels are gone or the context ends, when it closes
// the rest. Close closes everything at once. HTTP/2 tunnels (below) live in
// their handlers, which http.Server.Shutdown waits for: call Proxy.Shutdown
// first or at the same time.
//
// # HTTP/2
//
// A browser already talking HTTP/2 to the server opens a WebSocket as a
// stream of that connection (RFC 8441): CONNECT with :protocol websocket,
// no Sec-WebSocket-Key, answered by 200. The proxy checks it the same way
// (400 for a key, 426 for a version other than 13), applies the same
// origin policy, limits, balancing, timeouts and hooks (TunnelInfo.Proto
// is "HTTP/2.0"), and talks HTTP/1.1 to the backend with a key of its own.
// Go's HTTP/2 server (Go 1.24 on) offers this only when the process starts
// with GODEBUG=http2xconnect=1 in its environment (not //go:debug).
// Without it, browsers use HTTP/1.1 upgrades as before.
//
// # Errors
//
// Errors are sentinels matched with errors.Is (ErrOriginDenied,
// ErrNoTargetAvailable, ...); backend failures are *BackendError, with the
// target and the operation. StatusCode maps an error to the HTTP status the
// proxy answers with; WithErrorHandler replaces the default plain-text
// answer.
package wsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a WebSocket reverse proxy. It is an http.Handler; create it with
// New. All methods are safe for concurrent use.
type Proxy struct {
	cfg    config
	dialFn func(ctx context.Context, network, addr string) (net.Conn, error)
	log    *slog.Logger
	set    atomic.Pointer[targetSet]

	ctx    context.Context // ended by Close: aborts dials and handshakes
	cancel context.CancelFunc

	mu       sync.Mutex
	tunnels  tunnelList
	inflight int // handshakes in progress
	state    proxyState
	drained  chan struct{} // closed when nothing is open after Shutdown began

	limits limiter // admission caps and rates (limits.go)

	warns  warnLimiter   // rate limits warnings (logging.go)
	alerts alertCounters // refusals an operator must act on

	total, rejected, failures atomic.Int64
	closedUp, closedDown      trafficCounters

	lb lbState // health checks, discovery, draining targets

	http                    *httpProxy // WithHTTP
	httpTotal, httpFailures atomic.Int64
	affinity                affinityCounters
}

type proxyState int

const (
	running proxyState = iota
	shuttingDown
	closed
)

type trafficCounters struct {
	bytes, messages atomic.Int64
}

// targetSet is an immutable snapshot of the targets; SetTargets swaps it.
type targetSet struct {
	all      []*Target
	primary  []*Target
	backup   []*Target
	byCookie map[string]*Target // sticky cookie values (WithStickyCookie)
}

// New returns a proxy for the given targets (see Target for their syntax).
// It validates every target and option and reports all problems at once.
func New(targets []string, opts ...Option) (*Proxy, error) {
	cfg := defaultConfig()
	for i, o := range opts {
		if o == nil {
			cfg.errorf("New", "option %d is nil", i+1)
			continue
		}
		o.apply(&cfg)
	}
	cfg.checkConflicts()
	var set *targetSet
	targets, err := initialTargets(&cfg, targets)
	if err == nil {
		set, err = parseTargets(targets, nil)
	}
	if err != nil {
		cfg.errs = append(cfg.errs, err)
	}
	if len(cfg.errs) > 0 {
		return nil, errors.Join(cfg.errs...)
	}
	if cfg.balancer == nil {
		cfg.balancer = RoundRobin()
	}
	p := &Proxy{cfg: cfg, dialFn: cfg.dial, log: cfg.logger}
	if p.dialFn == nil {
		d := &net.Dialer{KeepAlive: 15 * time.Second}
		p.dialFn = d.DialContext
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.limits.cfg = &p.cfg
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.indexSticky(set)
	p.set.Store(set)
	if cfg.http {
		p.http = newHTTPProxy(p)
	}
	p.startBackground()
	return p, nil
}

// parseTargets parses a target list, reusing the *Target of old for every
// string that is still there so that live counts carry over.
func parseTargets(targets []string, old *targetSet) (*targetSet, error) {
	if len(targets) == 0 {
		return nil, ErrNoTargets
	}
	keep := make(map[string]*Target)
	if old != nil {
		for _, t := range old.all {
			keep[t.raw] = t
		}
	}
	set := &targetSet{}
	seen := make(map[string]bool)
	var errs []error
	for _, s := range targets {
		t, err := parseTarget(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[t.raw] {
			errs = append(errs, fmt.Errorf("%w %q: listed twice", ErrBadTarget, s))
			continue
		}
		seen[t.raw] = true
		if prev, ok := keep[t.raw]; ok {
			t = prev
		}
		set.all = append(set.all, t)
		if t.Backup {
			set.backup = append(set.backup, t)
		} else {
			set.primary = append(set.primary, t)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(set.primary) == 0 {
		return nil, fmt.Errorf("%w: every target is a backup", ErrNoTargets)
	}
	return set, nil
}

// SetTargets replaces the target list while traffic flows. New tunnels go
// to the new set at once. A target that stays keeps its counts and health;
// tunnels open to a removed target keep running, or are closed with 1001
// after WithDrainTimeout, and Stats lists it as Draining meanwhile. On error
// the old set stays in place and the error names the bad target.
func (p *Proxy) SetTargets(targets []string) error {
	p.lb.mu.Lock()
	defer p.lb.mu.Unlock()
	old := p.set.Load()
	// A draining target that comes back keeps its live counts.
	known := &targetSet{all: old.all}
	for t := range p.lb.draining {
		known.all = append(known.all[:len(known.all):len(known.all)], t)
	}
	set, err := parseTargets(targets, known)
	if err != nil {
		return err
	}
	p.indexSticky(set)
	p.set.Store(set)
	p.retireLocked(old, set)
	return nil
}

// ServeHTTP proxies one WebSocket upgrade request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect && r.ProtoMajor == 2 {
		p.serveH2(w, r) // RFC 8441, see h2.go
		return
	}
	switch classify(r) {
	case notUpgrade:
		p.serveFallback(w, r)
		return
	case otherUpgrade:
		p.serveFallback(w, stripUpgrade(r)) // never upgraded
		return
	}
	if err := checkClientRequest(r); err != nil {
		p.reject(w, r, err)
		return
	}
	slot, ok := p.gate(w, r)
	if !ok {
		return
	}
	defer slot.release() // unless the tunnel took it over
	if !canHijack(w) {
		p.reject(w, r, ErrNotHijackable)
		return
	}
	if !p.enter() {
		p.reject(w, r, ErrShuttingDown)
		return
	}
	defer p.leave()

	var aff affinity
	up, err := p.connect(r, &aff)
	if err != nil {
		p.reject(w, r, err)
		return
	}
	defer up.release() // unless the tunnel took it over
	if up.resp.StatusCode != http.StatusSwitchingProtocols {
		p.refused(w, r, &up)
		return
	}
	p.stick(r, &aff, up.t, up.resp.Header)
	p.open(w, r, &up, &slot)
}

// An upstream is the backend side of an upgrade on its way to a tunnel:
// the target's slot that pick took, the connection, the backend's response
// and the pooled reader it was read with. release gives back whatever it
// still holds, and may be called any number of times; handOver passes the
// slot and the connection to the tunnel instead.
type upstream struct {
	t    *Target
	conn net.Conn
	resp *http.Response
	br   *bufioReader
}

// release gives the reader back to its pool, closes the connection and
// frees the target's slot, as far as it still holds them.
func (u *upstream) release() {
	if u.br != nil {
		putReader(u.br)
		u.br = nil
	}
	if u.conn != nil {
		u.conn.Close()
		u.conn = nil
	}
	if u.t != nil {
		u.t.open.Add(-1)
		u.t = nil
	}
}

// handOver returns the target, whose slot the tunnel now holds, the
// connection, without the handshake's deadline, and the bytes the backend
// sent after its 101 (early frames). release then does nothing.
func (u *upstream) handOver() (*Target, net.Conn, []byte) {
	t, conn, early := u.t, u.conn, buffered(u.br)
	putReader(u.br)
	conn.SetDeadline(time.Time{})
	u.t, u.conn, u.br = nil, nil, nil
	return t, conn, early
}

// gate applies what every upgrade passes after the checks of its own
// protocol: the origin policy, then the admission limits. It answers the
// client itself when it refuses.
func (p *Proxy) gate(w http.ResponseWriter, r *http.Request) (admission, bool) {
	if err := p.checkOrigin(r); err != nil {
		p.reject(w, r, err)
		return admission{}, false
	}
	slot, err := p.admit(r)
	if err != nil {
		p.reject(w, r, err)
		return admission{}, false
	}
	return slot, true
}

// refused relays a backend's own answer to the upgrade (401, 403, 426,
// 500...) to the client as it is; the connection to the backend is never
// reused.
func (p *Proxy) refused(w http.ResponseWriter, r *http.Request, up *upstream) {
	t, resp := up.t, up.resp
	cut := p.relay(w, r, resp, up.conn)
	up.release() // after the body, which is read through the reader
	t.countRefusal(resp.StatusCode)
	p.rejected.Add(1)
	err := fmt.Errorf("%w: status %d", ErrUpgradeRefused, resp.StatusCode)
	if cut != nil {
		err = fmt.Errorf("%w: status %d, body cut short: %w", ErrUpgradeRefused, resp.StatusCode, cut)
	}
	p.notifyReject(r, &BackendError{Target: t.raw, Op: "upgrade", Status: resp.StatusCode, Err: err})
	if cut != nil {
		abortResponse()
	}
}

// connect picks a target, dials it and performs the backend handshake,
// trying other targets (WithRetry) when that fails: all of it happens
// before the client got a byte. On success the upstream's response is
// either a valid 101 or a non-101 to relay, and the caller releases the
// upstream or hands it over to a tunnel.
func (p *Proxy) connect(r *http.Request, aff *affinity) (upstream, error) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel)
	defer stop()

	lb := &p.cfg.lb
	start := time.Now()
	var (
		tried   []*Target
		lastErr error
	)
	for try := 1; ; try++ {
		t, err := p.pick(r, tried, aff)
		if err != nil {
			if lastErr != nil {
				// Every target left failed this request: say why the last did.
				return upstream{}, lastErr
			}
			return upstream{}, err
		}
		last := try >= lb.tries || (lb.retryTotal > 0 && time.Since(start) >= lb.retryTotal)
		up := upstream{t: t}
		up.conn, up.resp, up.br, err = p.attempt(ctx, r, t)
		switch {
		case err == nil && up.resp.StatusCode >= 500 && lb.retry5xx && !last:
			// Drop the refusal unread: closing its body would first read it
			// to the end.
			status := up.resp.StatusCode
			up.release()
			err = &BackendError{Target: t.raw, Op: "upgrade", Status: status,
				Err: fmt.Errorf("%w: status %d", ErrUpgradeRefused, status)}
			p.reportFailure(t, err)
		case err == nil && unhealthyStatus(up.resp.StatusCode):
			// Relayed, and counted against the target (logging.go).
			p.reportFailure(t, &BackendError{Target: t.raw, Op: "upgrade", Status: up.resp.StatusCode,
				Err: fmt.Errorf("%w: status %d", ErrUpgradeRefused, up.resp.StatusCode)})
			return up, nil
		case err == nil:
			t.health.succeeded()
			return up, nil
		case errors.Is(err, ErrRewrite) || ctx.Err() != nil:
			// Not the backend's fault: the request is bad or the client left.
			up.release()
			t.health.released()
			return upstream{}, err
		default:
			up.release()
			p.reportFailure(t, err)
		}
		if last {
			return upstream{}, err
		}
		lastErr = err
		tried = append(tried, t)
	}
}

// attempt dials t and performs the backend handshake. On success the
// response is a valid 101 or a non-101 to relay.
func (p *Proxy) attempt(ctx context.Context, r *http.Request, t *Target) (net.Conn, *http.Response, *bufioReader, error) {
	req, err := p.newBackendRequest(r, t)
	if err != nil {
		return nil, nil, nil, err
	}
	conn, err := p.dial(ctx, t)
	if err != nil {
		return nil, nil, nil, err
	}
	resp, br, err := p.backendHandshake(ctx, conn, t, req)
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.StatusCode < 200 {
		if err := checkUpgradeResponse(resp, req); err != nil {
			putReader(br)
			conn.Close()
			return nil, nil, nil, &BackendError{Target: t.raw, Op: "upgrade", Err: err}
		}
	}
	return conn, resp, br, nil
}

// pick chooses a target among those that can take a tunnel now: healthy
// (or due for a trial after a cool-down), under its cap, not removed and
// not yet tried by this request; backups only when no primary is left. The
// target a sticky cookie names comes first while it can take the request.
// When every target is out by passive health alone, they are all tried
// anyway (nginx's "all peers failed": recovery costs one request, not a
// cool-down). It takes one of the target's connection slots.
func (p *Proxy) pick(r *http.Request, tried []*Target, aff *affinity) (*Target, error) {
	set := p.set.Load()
	now := time.Now().UnixNano()
	br := p.balancerRequest(r)
	if !aff.resolved {
		p.resolveAffinity(br, set, aff)
	}
	if t := aff.home; t != nil && !aff.hashed && aff.cause == "" && !aff.passOver(t, tried, now) {
		if p.take(t, true) {
			return t, nil
		}
		if !aff.passOver(t, tried, now) {
			aff.cause = "down" // another request holds its trial
		}
	}
	if t := aff.home; t != nil && aff.hashed && aff.cause == "" {
		aff.passOver(t, tried, now) // the policy goes on without it
	}
	for _, group := range [][]*Target{set.primary, set.backup} {
		cands := make([]*Target, 0, len(group))
		for _, t := range group {
			if !t.full() && t.health.available(now) && !slices.Contains(tried, t) {
				cands = append(cands, t)
			}
		}
		if t, err := p.pickFrom(br, cands, true); t != nil || err != nil {
			return t, err
		}
	}
	// Nothing is available. If health alone keeps targets out, and only
	// passive health, try them: the backends may be back already.
	var cands []*Target
	for _, t := range set.all {
		if !t.full() && !t.health.activeDown.Load() && !slices.Contains(tried, t) {
			cands = append(cands, t)
		}
	}
	if t, _ := p.pickFrom(br, cands, false); t != nil {
		return t, nil
	}
	return nil, ErrNoTargetAvailable
}

// pickFrom lets the policy choose among cands and takes the chosen
// target's slot, choosing again without a target that filled up, went on
// trial or was removed meanwhile. A nil target and error means none of
// cands could take the request.
func (p *Proxy) pickFrom(r *http.Request, cands []*Target, claim bool) (*Target, error) {
	for len(cands) > 0 {
		t := p.cfg.balancer.Pick(r, cands)
		if t == nil {
			return nil, ErrNoTargetAvailable
		}
		if p.take(t, claim) {
			return t, nil
		}
		cands = removeTarget(cands, t)
	}
	return nil, nil
}

// take claims t's health trial (when claim is set and t is on trial) and
// one of its connection slots, unless SetTargets removed it meanwhile.
func (p *Proxy) take(t *Target, claim bool) bool {
	if claim && !t.health.claim() {
		return false
	}
	if t.tryAcquire() {
		if !t.removed.Load() {
			return true
		}
		t.open.Add(-1)
	}
	if claim {
		t.health.released()
	}
	return false
}

func removeTarget(ts []*Target, t *Target) []*Target {
	for i, x := range ts {
		if x == t {
			return append(ts[:i], ts[i+1:]...)
		}
	}
	return ts[:0]
}

// open hijacks the client connection, answers 101 and starts the tunnel.
func (p *Proxy) open(w http.ResponseWriter, r *http.Request, up *upstream, slot *admission) {
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.release()
		p.reject(w, r, fmt.Errorf("%w: %w", ErrNotHijackable, err))
		return
	}
	// The server's ReadTimeout and WriteTimeout must not cut the tunnel.
	client.SetDeadline(time.Time{})
	clientBuf := buffered(brw.Reader)
	if err := write101(client, w.Header(), up.resp, p.cfg.handshakeTimeout); err != nil {
		client.Close()
		up.release()
		p.rejected.Add(1)
		p.notifyReject(r, fmt.Errorf("wsproxy: writing 101 to client: %w", err))
		return
	}
	p.launch(r, client, clientBuf, up, slot, nil)
}

// launch creates the tunnel of a completed handshake, which takes over the
// upstream and the admission, registers it and starts it, for HTTP/1.1 and
// HTTP/2 alike; prepare, if not nil, finishes setting the tunnel up before
// it starts.
func (p *Proxy) launch(r *http.Request, client net.Conn, clientBuf []byte, up *upstream, slot *admission, prepare func(*tunnel)) *tunnel {
	resp := up.resp
	t, back, backBuf := up.handOver()
	info := TunnelInfo{
		Target:      t.raw,
		RemoteAddr:  r.RemoteAddr,
		Path:        r.URL.Path,
		Proto:       r.Proto,
		Subprotocol: resp.Header.Get("Sec-Websocket-Protocol"),
		Start:       time.Now(),
	}
	tn := newTunnel(p, t, client, back, info)
	if prepare != nil {
		prepare(tn)
	}
	tn.holdSlot(slot.handOver())
	t.stats.total.Add(1) // before the proxy's: its Total covers the targets'
	p.total.Add(1)
	shuttingDown := p.register(tn)
	if h := p.cfg.hooks.OnUpgrade; h != nil {
		h(tn.info())
	}
	if p.debug() {
		p.log.Debug("wsproxy: tunnel open", "target", t.raw, "remote_addr", r.RemoteAddr, "path", r.URL.Path, "proto", r.Proto)
	}
	tn.start(clientBuf, backBuf)
	if shuttingDown {
		go tn.politeClose(1001, 1001, ReasonShutdown)
	}
	return tn
}

// buffered returns a copy of the bytes a reader holds beyond what was
// parsed: early frames from the client or the backend.
func buffered(br *bufioReader) []byte {
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := br.Peek(n)
	return append([]byte(nil), b...)
}

// serveFallback serves a request that is not a WebSocket upgrade: through
// the targets (WithHTTP), by the fallback handler, or with 426.
func (p *Proxy) serveFallback(w http.ResponseWriter, r *http.Request) {
	if p.http != nil {
		p.http.serve(w, r)
		return
	}
	if p.cfg.fallback != nil {
		p.cfg.fallback.ServeHTTP(w, r)
		return
	}
	p.reject(w, r, ErrNotWebSocket)
}

// reject answers a request that will not become a tunnel.
func (p *Proxy) reject(w http.ResponseWriter, r *http.Request, err error) {
	p.rejected.Add(1)
	p.notifyReject(r, err)
	h := w.Header()
	// The client may already have sent frames behind its upgrade request;
	// they must never be read as a next HTTP request. An HTTP/2 stream has
	// no next request, and there the header would make Go's server send
	// GOAWAY, ending the connection's other streams' future.
	if r.ProtoMajor == 1 {
		h.Set("Connection", "close")
	}
	p.writeError(w, r, err)
}

// writeError answers a request the proxy cannot serve, with the headers
// its error calls for, through WithErrorHandler if set.
func (p *Proxy) writeError(w http.ResponseWriter, r *http.Request, err error) {
	h := w.Header()
	switch {
	case errors.Is(err, ErrBadVersion):
		h["Sec-WebSocket-Version"] = []string{"13"}
	case errors.Is(err, ErrNotWebSocket) && r.ProtoMajor == 1:
		// Upgrade and Connection are forbidden in HTTP/2 responses.
		h.Set("Upgrade", "websocket")
		h.Set("Connection", "Upgrade")
	case errors.Is(err, ErrShuttingDown), errors.Is(err, ErrNoTargetAvailable), errors.Is(err, ErrTooManyTunnels), errors.Is(err, ErrRateLimited):
		h.Set("Retry-After", retryAfter(err))
	}
	if p.cfg.errorHandler != nil {
		p.cfg.errorHandler(w, r, err)
		return
	}
	status := StatusCode(err)
	http.Error(w, publicReason(err, status), status)
}

// debug reports whether the logger takes debug records: the per-tunnel
// ones are only built then, as their arguments cost allocations on every
// upgrade.
func (p *Proxy) debug() bool {
	return p.log.Enabled(context.Background(), slog.LevelDebug)
}

func (p *Proxy) notifyReject(r *http.Request, err error) {
	if !p.alert(r, err) && p.debug() { // logging.go
		p.log.Debug("wsproxy: upgrade rejected", "remote_addr", r.RemoteAddr, "path", r.URL.Path, "err", err)
	}
	if h := p.cfg.hooks.OnReject; h != nil {
		h(r, err)
	}
}

// publicReason is the body of an error response: precise for the client's
// own mistakes, and never naming a backend address for the proxy's.
func publicReason(err error, status int) string {
	if status < 500 {
		return strings.TrimPrefix(err.Error(), "wsproxy: ")
	}
	for _, e := range []error{ErrShuttingDown, ErrNoTargetAvailable, ErrTooManyTunnels, ErrNotHijackable, ErrRewrite, ErrInvalidUpgrade} {
		if errors.Is(err, e) {
			return strings.TrimPrefix(e.Error(), "wsproxy: ")
		}
	}
	switch status {
	case http.StatusGatewayTimeout:
		return "backend did not answer in time"
	}
	return "backend unavailable"
}

// enter counts a handshake in progress, unless the proxy is shutting down.
func (p *Proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != running {
		return false
	}
	p.inflight++
	return true
}

func (p *Proxy) leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inflight--
	p.checkDrainedLocked()
}

// register adds a tunnel to the registry and reports whether the proxy is
// shutting down, in which case the caller closes it politely at once.
func (p *Proxy) register(tn *tunnel) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tunnels.add(tn)
	return p.state != running
}

// tunnelClosed settles a finished tunnel's counts and tells the hooks.
func (p *Proxy) tunnelClosed(tn *tunnel, info CloseInfo) {
	tn.releaseSlot()
	t := tn.target
	t.open.Add(-1)
	t.stats.bytesIn.Add(info.ClientToBackend.Bytes)
	t.stats.bytesOut.Add(info.BackendToClient.Bytes)
	t.stats.msgsIn.Add(info.ClientToBackend.Messages)
	t.stats.msgsOut.Add(info.BackendToClient.Messages)
	p.mu.Lock()
	p.tunnels.remove(tn)
	p.closedUp.bytes.Add(info.ClientToBackend.Bytes)
	p.closedUp.messages.Add(info.ClientToBackend.Messages)
	p.closedDown.bytes.Add(info.BackendToClient.Bytes)
	p.closedDown.messages.Add(info.BackendToClient.Messages)
	p.checkDrainedLocked()
	p.mu.Unlock()

	if p.debug() {
		attrs := []any{"target", info.Target, "remote_addr", info.RemoteAddr, "path", info.Path, "duration", info.Duration,
			"bytes_in", info.ClientToBackend.Bytes, "bytes_out", info.BackendToClient.Bytes}
		if info.Reason != "" {
			attrs = append(attrs, "reason", info.Reason)
		}
		if info.Detail != "" {
			attrs = append(attrs, "detail", info.Detail)
		}
		if info.Err != nil {
			attrs = append(attrs, "err", info.Err)
		}
		p.log.Debug("wsproxy: tunnel closed", attrs...)
	}
	if h := p.cfg.hooks.OnClose; h != nil {
		h(info)
	}
}

func (p *Proxy) checkDrainedLocked() {
	if p.state != running && p.inflight == 0 && p.tunnels.n == 0 && p.drained != nil {
		select {
		case <-p.drained:
		default:
			close(p.drained)
		}
	}
}

// Shutdown stops accepting upgrades (they get 503), sends every open tunnel
// a close frame 1001 (going away) to both sides at a frame boundary, and
// waits until every tunnel is closed. If ctx ends first, it closes the
// remaining tunnels at once and returns ctx.Err(). It may be called more
// than once, and together with http.Server.Shutdown, which does not see
// hijacked connections. HTTP requests (WithHTTP) are not tunnels: they go on
// being served, and http.Server.Shutdown waits for them; Close, or the end
// of ctx, aborts those still in flight.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.stopBackground()
	p.mu.Lock()
	if p.state == running {
		p.state = shuttingDown
	}
	if p.drained == nil {
		p.drained = make(chan struct{})
	}
	drained := p.drained
	open := p.snapshotLocked()
	p.checkDrainedLocked()
	p.mu.Unlock()

	for _, tn := range open {
		go tn.politeClose(1001, 1001, ReasonShutdown)
	}
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		p.Close()
		return ctx.Err()
	}
}

// Close closes every tunnel and aborts every handshake at once, without
// close frames, and waits until their goroutines are gone.
func (p *Proxy) Close() error {
	p.stopBackground()
	p.mu.Lock()
	p.state = closed
	if p.drained == nil {
		p.drained = make(chan struct{})
	}
	drained := p.drained
	open := p.snapshotLocked()
	p.checkDrainedLocked()
	p.mu.Unlock()
	p.cancel()
	if p.http != nil {
		p.http.tr.CloseIdleConnections()
	}
	for _, tn := range open {
		tn.abort(ReasonShutdown)
	}
	<-drained
	return nil
}

func (p *Proxy) snapshotLocked() []*tunnel {
	open := make([]*tunnel, 0, p.tunnels.n)
	for tn := range p.tunnels.all() {
		open = append(open, tn)
	}
	return open
}

// Stats returns a snapshot of the proxy's tunnels and traffic.
func (p *Proxy) Stats() Stats {
	s := Stats{
		Total:        p.total.Load(),
		Rejected:     p.rejected.Load(),
		Failures:     p.failures.Load(),
		HTTPRequests: p.httpTotal.Load(),
		HTTPFailures: p.httpFailures.Load(),
		Affinity:     p.affinity.snapshot(),

		MaxTunnelsReached: p.alerts.tunnelCap.Load(),
		NotHijackable:     p.alerts.notHijackable.Load(),
	}
	live := make(map[*Target]*TargetStats)
	all := p.set.Load().all
	draining := p.drainingTargets()
	all = append(all[:len(all):len(all)], draining...)
	s.Targets = make([]TargetStats, len(all))
	for i, t := range all {
		active := t.stats.httpActive.Load()
		s.Targets[i] = TargetStats{
			Target:          t.raw,
			Open:            max(0, t.Open()-int(active)),
			HTTPActive:      int(active),
			HTTPRequests:    t.stats.httpRequests.Load(),
			HTTPFailures:    t.stats.httpFailures.Load(),
			Total:           t.stats.total.Load(),
			Failures:        t.stats.failures.Load(),
			Refused:         t.stats.refused.Load(),
			NotEndpoint:     t.stats.notEndpoint.Load(),
			ClientToBackend: Traffic{Bytes: t.stats.bytesIn.Load(), Messages: t.stats.msgsIn.Load()},
			BackendToClient: Traffic{Bytes: t.stats.bytesOut.Load(), Messages: t.stats.msgsOut.Load()},
			Backup:          t.Backup,
			Healthy:         t.health.healthy(),
			Draining:        i >= len(all)-len(draining),
		}
		live[t] = &s.Targets[i]
	}
	p.mu.Lock()
	s.Open = p.tunnels.n + p.inflight
	s.ClientToBackend = Traffic{Bytes: p.closedUp.bytes.Load(), Messages: p.closedUp.messages.Load()}
	s.BackendToClient = Traffic{Bytes: p.closedDown.bytes.Load(), Messages: p.closedDown.messages.Load()}
	for tn := range p.tunnels.all() {
		up, down := tn.up.traffic(), tn.down.traffic()
		s.ClientToBackend.Bytes += up.Bytes
		s.ClientToBackend.Messages += up.Messages
		s.BackendToClient.Bytes += down.Bytes
		s.BackendToClient.Messages += down.Messages
		if ts := live[tn.target]; ts != nil {
			ts.ClientToBackend.Bytes += up.Bytes
			ts.ClientToBackend.Messages += up.Messages
			ts.BackendToClient.Bytes += down.Bytes
			ts.BackendToClient.Messages += down.Messages
		}
	}
	p.mu.Unlock()
	return s
}
