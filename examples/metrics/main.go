// Command metrics runs wsproxy in front of an echo backend and exports its
// Stats and hooks to Prometheus on /metrics with package wsprom:
//
//	go run . -listen 127.0.0.1:8080
//	curl -s 127.0.0.1:8080/metrics | grep wsproxy_
//
// It is a nested module so that the library never depends on Prometheus.
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
	"github.com/wsproxy/wsproxy/examples/metrics/wsprom"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address of the proxy and /metrics")
	backend := flag.String("backend", "", "WebSocket backend (default: an echo backend started here)")
	flag.Parse()
	target, stopBackend, err := echo.OrBuiltIn(*backend, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer stopBackend()
	handler, p, err := newServer([]string{target})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	log.Printf("listening on http://%s: the proxy on /ws, metrics on /metrics", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx) // first: tunnels get 1001
	srv.Shutdown(ctx)
}

// newServer wires a proxy, its collector and the /metrics endpoint.
func newServer(targets []string) (http.Handler, *wsproxy.Proxy, error) {
	collector := wsprom.New(wsprom.Options{})
	p, err := wsproxy.New(targets, wsproxy.WithHooks(collector.Hooks()))
	if err != nil {
		return nil, nil, err
	}
	collector.SetProxy(p)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector)
	mux := http.NewServeMux()
	mux.Handle("/ws", p) // no method: HTTP/2 WebSockets are CONNECT requests
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux, p, nil
}
