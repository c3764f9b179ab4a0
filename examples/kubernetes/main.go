// Command kubernetes is the program the manifests in this directory run:
// wsproxy in front of backends found by DNS (a headless Service), with the
// limits, timeouts and drain of docs/PRODUCTION.md, /healthz for the
// readiness probe and Prometheus metrics (package wsprom) on their own port.
// With -echo it is the example backend instead: an echo server.
//
//	go run . -echo -listen 127.0.0.1:9001 &
//	go run . -listen 127.0.0.1:8080 -metrics-listen 127.0.0.1:9090 -backend ws://127.0.0.1:9001/ws
//
// Every flag is in config; parseFlags is what the tests check the
// manifests' args against.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
	"github.com/wsproxy/wsproxy/examples/metrics/wsprom"
)

type config struct {
	echo            bool
	listen          string
	metricsListen   string
	backend         string // a target whose host is a DNS name: each of its addresses becomes a target
	discoveryEvery  time.Duration
	drainTimeout    time.Duration
	trustedProxies  string // comma-separated CIDRs
	allowedOrigins  string // comma-separated patterns
	pingInterval    time.Duration
	idleTimeout     time.Duration
	maxMessageSize  int64
	maxTunnelsPerIP int
	handshakeRate   float64
	handshakeBurst  int
	serverName      string // for wss backends: the name their certificate is for
	caFile          string // for wss backends: the CA that signed it
	shutdownTimeout time.Duration
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("kubernetes", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&c.echo, "echo", false, "run the example echo backend instead of the proxy")
	fs.StringVar(&c.listen, "listen", ":8080", "address of the proxy (or of the echo backend) and /healthz")
	fs.StringVar(&c.metricsListen, "metrics-listen", ":9090", "address of /metrics; empty: none")
	fs.StringVar(&c.backend, "backend", "", "backend target with a DNS name, e.g. ws://backend.default.svc.cluster.local:8080/ws")
	fs.DurationVar(&c.discoveryEvery, "discovery-interval", 5*time.Second, "how often the backend's name is looked up")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 30*time.Second, "how long tunnels of a removed backend may stay (0: until they end)")
	fs.StringVar(&c.trustedProxies, "trusted-proxies", "", "comma-separated CIDRs of the load balancers in front")
	fs.StringVar(&c.allowedOrigins, "allowed-origins", "", "comma-separated browser origins besides the proxy's own host")
	fs.DurationVar(&c.pingInterval, "ping-interval", 30*time.Second, "keepalive pings to both sides (0: none)")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", 10*time.Minute, "close tunnels idle this long (0: never)")
	fs.Int64Var(&c.maxMessageSize, "max-message-size", 1<<20, "largest message in bytes (0: no limit)")
	fs.IntVar(&c.maxTunnelsPerIP, "max-tunnels-per-ip", 0, "tunnels one client address may hold (0: no cap)")
	fs.Float64Var(&c.handshakeRate, "handshake-rate", 0, "handshakes per second per client address (0: no limit)")
	fs.IntVar(&c.handshakeBurst, "handshake-burst", 20, "handshake burst per client address, with -handshake-rate")
	fs.StringVar(&c.serverName, "server-name", "", "TLS name of wss backends (their host is an address once resolved)")
	fs.StringVar(&c.caFile, "ca-file", "", "PEM file of the CA of wss backends (default: the system roots)")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 20*time.Second, "how long tunnels get to close on SIGTERM")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if !c.echo && c.backend == "" {
		return c, errors.New("-backend is required")
	}
	return c, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		log.Fatal(err)
	}
	var metricsLn net.Listener
	if !cfg.echo && cfg.metricsListen != "" {
		if metricsLn, err = net.Listen("tcp", cfg.metricsListen); err != nil {
			log.Fatal(err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, nil, ln, metricsLn); err != nil {
		log.Fatal(err)
	}
}

// run serves on ln (and /metrics on metricsLn, if not nil) until ctx ends,
// then shuts down: tunnels first (1001 to both sides), then the servers.
// res is the DNS resolver, nil for the system's.
func run(ctx context.Context, cfg config, res *net.Resolver, ln, metricsLn net.Listener) error {
	var handler http.Handler
	var p *wsproxy.Proxy
	var metrics http.Handler
	if cfg.echo {
		handler = echo.Handler(nil)
	} else {
		var c *wsprom.Collector
		var err error
		if p, c, err = newProxy(cfg, res); err != nil {
			return err
		}
		handler = p
		reg := prometheus.NewRegistry()
		reg.MustRegister(c)
		metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}
	var stopping atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("/", handler) // no method pattern: HTTP/2 WebSockets are CONNECT requests
	listeners := map[*http.Server]net.Listener{newServer(mux): ln}
	if metrics != nil && metricsLn != nil {
		listeners[newServer(metrics)] = metricsLn
	}
	errc := make(chan error, len(listeners))
	for srv, ln := range listeners {
		log.Printf("listening on http://%s", ln.Addr())
		go func() { errc <- srv.Serve(ln) }()
	}
	select {
	case err := <-errc:
		if p != nil {
			p.Close()
		}
		return err
	case <-ctx.Done():
	}
	stopping.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if p != nil {
		p.Shutdown(sctx) // first: tunnels get 1001; the server does not see them
	}
	for srv := range listeners {
		srv.Shutdown(sctx)
	}
	return nil
}

// newServer bounds what a client may send before the proxy sees its
// request: slow headers (slowloris) and large ones. The proxy clears these
// deadlines once a tunnel is open, so they never cut one. IdleTimeout is
// above the load balancers' (60 s on AWS ALB) so that the proxy never closes
// a keep-alive connection the balancer is about to reuse (GCP's keeps
// them 610 s).
func newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		MaxHeaderBytes:    16 << 10,
		IdleTimeout:       620 * time.Second,
	}
}

// newProxy builds the proxy the flags describe, with its collector.
func newProxy(cfg config, res *net.Resolver) (*wsproxy.Proxy, *wsprom.Collector, error) {
	c := wsprom.New(wsprom.Options{})
	opts := []wsproxy.Option{
		wsproxy.WithHooks(c.Hooks()),
		wsproxy.WithLogger(slog.New(slog.NewJSONHandler(os.Stderr, nil))),
		wsproxy.WithDiscovery(wsproxy.DNSResolver(res, cfg.backend), cfg.discoveryEvery),
		wsproxy.WithDrainTimeout(cfg.drainTimeout),
		wsproxy.WithPingInterval(cfg.pingInterval),
		wsproxy.WithIdleTimeout(cfg.idleTimeout),
		wsproxy.WithMaxMessageSize(cfg.maxMessageSize),
		wsproxy.WithMaxTunnelsPerIP(cfg.maxTunnelsPerIP),
	}
	if cidrs := split(cfg.trustedProxies); len(cidrs) > 0 {
		opts = append(opts, wsproxy.WithTrustedProxies(cidrs...))
	}
	if origins := split(cfg.allowedOrigins); len(origins) > 0 {
		opts = append(opts, wsproxy.WithAllowedOrigins(origins...))
	}
	if cfg.handshakeRate > 0 {
		opts = append(opts, wsproxy.WithHandshakeRate(cfg.handshakeRate, cfg.handshakeBurst))
	}
	if cfg.serverName != "" || cfg.caFile != "" {
		tc := &tls.Config{ServerName: cfg.serverName}
		if cfg.caFile != "" {
			pem, err := os.ReadFile(cfg.caFile)
			if err != nil {
				return nil, nil, err
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, nil, fmt.Errorf("%s: no PEM certificate", cfg.caFile)
			}
		}
		opts = append(opts, wsproxy.WithTLSConfig(tc))
	}
	// No static targets: New resolves the backend's name once and fails
	// if it cannot.
	p, err := wsproxy.New(nil, opts...)
	if err != nil {
		return nil, nil, err
	}
	c.SetProxy(p)
	return p, c, nil
}

func split(list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
