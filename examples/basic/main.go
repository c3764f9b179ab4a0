// Command basic mounts wsproxy on an http.ServeMux route, behind a logging
// middleware, next to ordinary handlers:
//
//	go run ./examples/basic                               # built-in echo backend
//	go run ./examples/basic -backend ws://127.0.0.1:9001  # yours
//
// The middleware wraps the ResponseWriter and implements Unwrap, which is
// all wsproxy needs to hijack the connection through it.
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backend := flag.String("backend", "", "WebSocket backend URL (default: a built-in echo backend)")
	flag.Parse()
	target, stopBackend, err := echo.OrBuiltIn(*backend, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer stopBackend()

	p, err := wsproxy.New([]string{target},
		wsproxy.WithAllowedOrigins("localhost"), // any port: a page served by a dev server
		wsproxy.WithIdleTimeout(10*time.Minute),
	)
	if err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	// No method in the WebSocket pattern: HTTP/1.1 WebSockets are GET
	// requests, HTTP/2 ones CONNECT (RFC 8441). The path, room included,
	// goes to the backend.
	mux.Handle("/ws/{room}", p)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Handler:           logRequests(mux),
		ReadHeaderTimeout: 10 * time.Second, // bounds slow handshakes (slowloris)
	}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	log.Printf("listening on http://%s, proxying /ws/{room} to %s", ln.Addr(), target)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx)   // first: WebSocket tunnels get 1001; the server does not see them
	srv.Shutdown(ctx) // then plain HTTP requests
}

// statusRecorder is a typical logging middleware's ResponseWriter.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController (and so wsproxy) reach the
// connection underneath.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusSwitchingProtocols}
		next.ServeHTTP(rec, r)
		slog.Info("request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}
