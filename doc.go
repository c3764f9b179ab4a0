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
// Tunnels are cheap: on Linux a tunnel between two plain TCP connections
// lives in one of a few event loops (GOMAXPROCS/2, at least one), nginx's
// model, and holds no goroutine, no buffer and no net.Conn of its own; a
// TLS tunnel over TCP with nothing to read holds no goroutine and no
// buffer either (its socket waits in an epoll instance shared by the
// process). HTTP/2 streams, and a TLS 1.2 connection the proxy dialled,
// wait in a goroutine.
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
